package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
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
	metricsAddr := freeAddr(t)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(sctx, []string{"serve", "--listen", addr, "--dir", t.TempDir(), "--ca-file", reg.CAFile,
			"--metrics-listen", metricsAddr, "--max-store-bytes", "100000000"}, nil, nil, logger)
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
	// A second resolve is a hit; a missing tag an error of kind not_found.
	if _, err := proxy.New(conn).Resolve(ctx, regcache.ResolveRequest{Reference: digestRef}); err != nil {
		t.Fatal(err)
	}
	if _, err := proxy.New(conn).Resolve(ctx, regcache.ResolveRequest{Reference: reg.Host + "/cli:missing",
		Credentials: map[string]regcache.Credentials{reg.Host: {Username: reg.Username, Password: reg.Password}}}); err == nil {
		t.Fatal("resolve of a missing tag succeeded")
	}
	metrics := get(t, "http://"+metricsAddr+"/metrics")
	for _, want := range []string{
		`wasmlet_registry_cache_hits_total{kind="module"} 1`,
		`wasmlet_registry_cache_misses_total{kind="module"} 1`,
		`wasmlet_registry_cache_origin_requests_total{kind="blob"} 1`,
		`wasmlet_registry_cache_origin_bytes_total `,
		`wasmlet_registry_cache_pull_duration_seconds_count{result="ok"} 1`,
		`wasmlet_registry_cache_errors_total{kind="not_found",op="resolve"} 1`,
		`wasmlet_registry_cache_store_bytes `,
		`go_goroutines `,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q:\n%s", want, metrics)
		}
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
	err = run(ctx, []string{"serve", "--listen", addr, "--dir", t.TempDir(), "--metrics-listen", "0.0.0.0:9464"}, nil, nil, logger)
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("serve with metrics on all interfaces = %v, want a refusal naming loopback", err)
	}
	if err := run(ctx, []string{"bogus"}, nil, nil, logger); err == nil {
		t.Fatal("unknown command succeeded")
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return string(b)
}
