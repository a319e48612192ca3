package main

import (
	"strings"
	"testing"
)

// TestParseTLSFlags: mutual TLS flags are all three or none, a tcp://
// --listen is refused without them even on loopback and a tcp://
// --registry beyond loopback (naming the flags to give), and an executor
// on every interface must say where it is dialled.
func TestParseTLSFlags(t *testing.T) {
	tls := []string{"--tls-cert", "e.crt", "--tls-key", "e.key", "--tls-ca", "ca.crt"}
	regTLS := []string{"--registry-tls-cert", "e.crt", "--registry-tls-key", "e.key", "--registry-tls-ca", "ca.crt"}
	for _, c := range []struct {
		name string
		args []string
		want string // "" accepted; else in the error
	}{
		{"server on loopback in plaintext", []string{"--listen", "tcp://127.0.0.1:7001", "--registry", "unix:///r.sock"}, "even on loopback"},
		{"server on localhost in plaintext", []string{"--listen", "localhost:7001", "--registry", "unix:///r.sock"}, "listen on a unix socket (unix:///path, created 0600) or give --tls-cert, --tls-key and --tls-ca"},
		{"loopback with TLS, registry on loopback in plaintext", append([]string{"--listen", "tcp://127.0.0.1:7001", "--registry", "tcp://127.0.0.1:7000"}, tls...), ""},
		{"beyond loopback with TLS", append(append([]string{"--listen", "tcp://10.0.0.5:7001", "--registry", "tcp://10.0.0.6:7000"}, tls...), regTLS...), ""},
		{"server beyond loopback without TLS", []string{"--listen", "tcp://10.0.0.5:7001", "--registry", "unix:///r.sock"}, "give --tls-cert, --tls-key and --tls-ca"},
		{"registry beyond loopback without TLS", append([]string{"--listen", "tcp://10.0.0.5:7001", "--registry", "tcp://10.0.0.6:7000"}, tls...), "give --registry-tls-cert, --registry-tls-key and --registry-tls-ca"},
		{"a key pair without CA", []string{"--listen", "tcp://10.0.0.5:7001", "--registry", "unix:///r.sock", "--tls-cert", "e.crt", "--tls-key", "e.key"}, "all three"},
		{"TLS for a unix socket", append([]string{"--listen", "unix:///e.sock", "--registry", "unix:///r.sock"}, tls...), "drop them"},
		{"every interface, announced, no advertise address", append([]string{"--listen", "tcp://0.0.0.0:7001", "--registry", "unix:///r.sock", "--nats", "nats://127.0.0.1:4222"}, tls...), "--advertise-address"},
		{"every interface with an advertise address", append([]string{"--listen", "tcp://0.0.0.0:7001", "--registry", "unix:///r.sock", "--nats", "nats://127.0.0.1:4222", "--advertise-address", "tcp://10.0.0.5:7001"}, tls...), ""},
	} {
		_, err := parseFlags(c.args)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v, want accepted", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
}
