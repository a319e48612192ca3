// Package natstest gives tests a real in-process NATS server with
// JetStream and wasmlet's streams, and a connection or JetStream context
// to it: the set-up every test of a NATS publisher or reader needs. It
// owns nothing beyond the test: the server and connection end with it.
//
//	srv, js := natstest.JetStream(t, "")
//	srv, nc := natstest.Conn(t)
package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wasmlet/wasmlet/internal/natsutil"
	"github.com/wasmlet/wasmlet/internal/natsutil/natsserver"
)

// Conn starts a server storing in a temporary directory of tb and
// connects to it. Both are closed when tb ends.
func Conn(tb testing.TB) (*natsserver.Server, *nats.Conn) {
	tb.Helper()
	return start(tb, tb.TempDir())
}

// JetStream starts a server storing in store (a temporary directory of tb
// when empty), connects to it, and ensures wasmlet's streams with their
// default limits. Both are closed when tb ends.
func JetStream(tb testing.TB, store string) (*natsserver.Server, jetstream.JetStream) {
	tb.Helper()
	if store == "" {
		store = tb.TempDir()
	}
	srv, nc := start(tb, store)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := natsutil.EnsureStreams(ctx, js, natsutil.DefaultStreamLimits); err != nil {
		tb.Fatal(err)
	}
	return srv, js
}

func start(tb testing.TB, store string) (*natsserver.Server, *nats.Conn) {
	tb.Helper()
	srv, err := natsserver.Start(natsserver.Config{StoreDir: store})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(srv.Shutdown)
	nc, err := natsutil.Connect(srv.URL, "", tb.Name())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	return srv, nc
}
