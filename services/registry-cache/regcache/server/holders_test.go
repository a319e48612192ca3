package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/proxy"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

// TestHoldersScopedByCertificate: over mutual TLS, two clients with
// certificates of their own that give the same holder name hold pins of
// their own: one's unpins (of the digest, of all its pins) leave the
// other's pin, which keeps its blob from eviction until that client
// releases it.
func TestHoldersScopedByCertificate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	ca, err := testpki.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(name string, hosts ...string) grpcutil.TLS {
		kp, err := ca.Issue(name, hosts...)
		if err != nil {
			t.Fatal(err)
		}
		return grpcutil.TLS{CertFile: kp.Cert, KeyFile: kp.Key, CAFile: ca.CertFile}
	}
	cache, err := local.New(local.Config{Dir: t.TempDir(), MaxStoreBytes: 2000, EvictionGrace: time.Nanosecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv, l, err := grpcutil.NewServer("tcp://127.0.0.1:0", issue("registry-cache", "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	server.New(cache).Register(srv)
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- grpcutil.Serve(sctx, srv, l, time.Second) }()
	t.Cleanup(func() { stop(); <-done })
	client := func(name string) *proxy.Client {
		conn, err := grpcutil.DialTLS(grpcutil.Address(l), issue(name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return proxy.New(conn)
	}
	a, b := client("executor-node-a"), client("executor-node-b")

	art := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, 1000) }
	put := func(i int) {
		t.Helper()
		key := regcache.PrecompiledKey{ModuleDigest: cachetest.Digest([]byte("module")), EngineKey: fmt.Sprintf("engine-%d", i)}
		if err := a.PutPrecompiled(ctx, key, regcache.Precompiled{Digest: cachetest.Digest(art(i)), Size: 1000}, bytes.NewReader(art(i))); err != nil {
			t.Fatal(err)
		}
	}
	held := func(i int) bool {
		rc, _, err := cache.Fetch(ctx, cachetest.Digest(art(i)))
		if err == nil {
			rc.Close()
			return true
		}
		if !errors.Is(err, regcache.ErrNotFound) {
			t.Fatal(err)
		}
		return false
	}
	put(0)
	put(1)
	const h = "executor/wasmtime"
	d0 := cachetest.Digest(art(0))
	if err := b.Pin(ctx, regcache.PinRequest{Holder: h, Digest: d0}); err != nil {
		t.Fatal(err)
	}
	if err := a.Pin(ctx, regcache.PinRequest{Holder: h, Digest: d0}); err != nil {
		t.Fatal(err)
	}
	for _, req := range []regcache.UnpinRequest{{Holder: h, Digest: d0}, {Holder: h}} {
		if err := a.Unpin(ctx, req); err != nil {
			t.Fatalf("a: Unpin(%+v): %v", req, err)
		}
	}
	if err := a.Unpin(ctx, regcache.UnpinRequest{}); !errors.Is(err, regcache.ErrInvalidReference) {
		t.Fatalf("Unpin with no holder: %v, want ErrInvalidReference", err)
	}
	// Make 1 more recent than 0: over budget, only b's pin spares 0.
	if rc, _, err := cache.Fetch(ctx, cachetest.Digest(art(1))); err != nil {
		t.Fatal(err)
	} else {
		rc.Close()
	}
	put(2)
	if !held(0) || held(1) {
		t.Fatalf("after a's unpins and a put over budget: 0 held %v, 1 held %v; want 0 kept by b's pin and 1 evicted", held(0), held(1))
	}
	if err := b.Unpin(ctx, regcache.UnpinRequest{Holder: h}); err != nil {
		t.Fatal(err)
	}
	put(3)
	put(4)
	if held(0) {
		t.Fatal("0 still held after b released its pin and two puts")
	}
}
