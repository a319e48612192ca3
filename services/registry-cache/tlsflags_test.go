package main

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
)

// TestServeTLSFlags: serve refuses, before opening anything, a tcp://
// address without mutual TLS, on loopback too (naming the flags, or a unix
// socket instead), and an incomplete set of TLS files.
func TestServeTLSFlags(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--listen", "tcp://10.0.0.5:7000"}, "give --tls-cert, --tls-key and --tls-ca"},
		{[]string{"--listen", "tcp://0.0.0.0:7000"}, "without mutual TLS"},
		{[]string{"--listen", "tcp://127.0.0.1:7000"}, "even on loopback"},
		{[]string{"--listen", "localhost:7000"}, "listen on a unix socket"},
		{[]string{"--listen", "tcp://10.0.0.5:7000", "--tls-cert", "c.crt"}, "all three"},
		{[]string{"--listen", "unix:///r.sock", "--tls-cert", "c.crt", "--tls-key", "c.key", "--tls-ca", "ca.crt"}, "drop them"},
	} {
		args := append([]string{"serve", "--dir", t.TempDir()}, c.args...)
		err := run(context.Background(), args, nil, io.Discard, logger)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error containing %q", c.args, err, c.want)
		}
	}
}
