package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/testregistry"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/proxy"
)

// TestPushAndServe pushes a module with the push command (basic auth over
// TLS), serves a cache with the serve command and resolves the module
// through it, then stops the server by cancelling its context.
func TestPushAndServe(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{Auth: true})
	logger := slog.New(slog.DiscardHandler)
	module := cachetest.WasmModule("cli")
	file := filepath.Join(t.TempDir(), "m.wasm")
	if err := os.WriteFile(file, module, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var out bytes.Buffer
	err := run(ctx, []string{"push", "--ca-file", reg.CAFile, "--username", reg.Username, "--password-stdin", file, reg.Host + "/cli:v1"},
		strings.NewReader(reg.Password+"\n"), &out, logger)
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	digestRef := strings.TrimSpace(out.String())
	if !strings.HasPrefix(digestRef, reg.Host+"/cli@sha256:") {
		t.Fatalf("push printed %q, want %s/cli@sha256:...", digestRef, reg.Host)
	}

	sockDir, err := os.MkdirTemp("", "rc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	addr := "unix://" + filepath.Join(sockDir, "r.sock")
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(sctx, []string{"serve", "--listen", addr, "--dir", t.TempDir(), "--ca-file", reg.CAFile}, nil, nil, logger)
	}()
	conn, err := grpcutil.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := grpcutil.WaitHealthy(ctx, conn); err != nil {
		t.Fatal(err)
	}
	res, err := proxy.New(conn).Resolve(ctx, regcache.ResolveRequest{
		Reference:   digestRef,
		Credentials: map[string]regcache.Credentials{reg.Host: {Username: reg.Username, Password: reg.Password}},
	})
	if err != nil {
		t.Fatalf("resolve %s: %v", digestRef, err)
	}
	if res.ModuleDigest != cachetest.Digest(module) {
		t.Fatalf("module digest %s, want %s", res.ModuleDigest, cachetest.Digest(module))
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop after its context ended")
	}

	if err := run(ctx, []string{"serve", "--dir", t.TempDir()}, nil, nil, logger); err == nil {
		t.Fatal("serve without --listen succeeded")
	}
	if err := run(ctx, []string{"bogus"}, nil, nil, logger); err == nil {
		t.Fatal("unknown command succeeded")
	}
}
