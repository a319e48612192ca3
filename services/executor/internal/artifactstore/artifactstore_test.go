package artifactstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/services/executor/internal/artifactstore"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/proxy"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

// serve runs the registry cache's real gRPC server for c on a unix socket
// and returns a Store over a proxy connected to it.
func serve(t *testing.T, c regcache.Cache) *artifactstore.Store {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "as")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	l, err := grpcutil.Listen("unix://" + filepath.Join(sockDir, "r.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	server.New(c).Register(srv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- grpcutil.Serve(ctx, srv, l, time.Second) }()
	conn, err := grpcutil.Dial(grpcutil.Address(l))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		<-done
	})
	return artifactstore.New(proxy.New(conn))
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestOverGRPC(t *testing.T) {
	dir := t.TempDir()
	lc, err := local.New(local.Config{Dir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, lc)
	ctx := context.Background()
	key := engine.ArtifactKey{ModuleDigest: digestOf([]byte("module")), EngineKey: "wasmtime-test"}
	if _, _, err := s.GetArtifact(ctx, key); !errors.Is(err, engine.ErrArtifactNotFound) {
		t.Fatalf("get of nothing: %v, want ErrArtifactNotFound", err)
	}
	art := bytes.Repeat([]byte("native code "), 50_000) // several chunks
	info := engine.ArtifactInfo{Digest: digestOf(art), Size: int64(len(art))}
	if err := s.PutArtifact(ctx, key, info, bytes.NewReader(art)); err != nil {
		t.Fatal(err)
	}
	rc, got, err := s.GetArtifact(ctx, key)
	if err != nil || got != info {
		t.Fatalf("get: %+v, %v; want %+v", got, err, info)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(b, art) {
		t.Fatalf("read %d bytes, %v", len(b), err)
	}

	// Corrupted on the cache's disk: the read ends with ErrArtifactCorrupt.
	blob := filepath.Join(dir, "blobs", "sha256", info.Digest[len("sha256:"):])
	bad := bytes.Clone(art)
	bad[len(bad)/2] ^= 0xff
	if err := os.WriteFile(blob, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	rc, _, err = s.GetArtifact(ctx, key)
	if err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	if !errors.Is(err, engine.ErrArtifactCorrupt) {
		t.Fatalf("reading a corrupted artifact: %v, want ErrArtifactCorrupt", err)
	}
}

// modulesOnly is a registry cache that stores no precompiled modules.
type modulesOnly struct{}

func (modulesOnly) Resolve(context.Context, regcache.ResolveRequest) (regcache.Resolved, error) {
	return regcache.Resolved{}, regcache.ErrNotFound
}

func (modulesOnly) Fetch(context.Context, string) (io.ReadCloser, int64, error) {
	return nil, 0, regcache.ErrNotFound
}

func TestCacheWithoutPrecompiled(t *testing.T) {
	s := serve(t, modulesOnly{})
	ctx := context.Background()
	key := engine.ArtifactKey{ModuleDigest: digestOf([]byte("module")), EngineKey: "wasmtime-test"}
	for i := range 2 {
		if _, _, err := s.GetArtifact(ctx, key); !errors.Is(err, engine.ErrArtifactNotFound) {
			t.Fatalf("get %d from a cache without precompiled modules: %v, want ErrArtifactNotFound", i, err)
		}
	}
	if err := s.PutArtifact(ctx, key, engine.ArtifactInfo{Digest: digestOf([]byte("x")), Size: 1}, bytes.NewReader([]byte("x"))); err == nil {
		t.Fatal("put to a cache without precompiled modules succeeded")
	}
}
