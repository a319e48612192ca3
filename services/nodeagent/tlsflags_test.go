package main

import (
	"strings"
	"testing"
)

// TestParseGRPCTLSFlags: --grpc-tls-* are all three or none, and a
// separately run service given beyond loopback is refused without them,
// with a message naming the flags.
func TestParseGRPCTLSFlags(t *testing.T) {
	tls := []string{"--grpc-tls-cert", "n.crt", "--grpc-tls-key", "n.key", "--grpc-tls-ca", "ca.crt"}
	for _, c := range []struct {
		name string
		args []string
		want string // "" accepted; else in the error
	}{
		{"embedded defaults", nil, ""},
		{"loopback in plaintext", []string{"--registry-cache", "tcp://127.0.0.1:7000", "--executor", "wasmtime=tcp://127.0.0.1:7001"}, ""},
		{"unix sockets with TLS for announced executors", append([]string{"--registry-cache", "unix:///r.sock"}, tls...), ""},
		{"beyond loopback with TLS", append([]string{"--registry-cache", "tcp://10.0.0.5:7000", "--executor", "wasmtime=tcp://10.0.0.6:7001"}, tls...), ""},
		{"registry cache beyond loopback", []string{"--registry-cache", "tcp://10.0.0.5:7000"}, "--registry-cache tcp://10.0.0.5:7000 is beyond loopback, and gRPC leaves the host only over mutual TLS: give --grpc-tls-cert, --grpc-tls-key and --grpc-tls-ca"},
		{"executor beyond loopback", []string{"--executor", "wasmtime=tcp://10.0.0.6:7001"}, "--executor wasmtime=tcp://10.0.0.6:7001 is beyond loopback"},
		{"a CA alone", []string{"--grpc-tls-ca", "ca.crt"}, "all three"},
	} {
		_, _, err := parseFlags(append([]string{"--kubeconfig", "k.yaml"}, c.args...))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v, want accepted", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
}
