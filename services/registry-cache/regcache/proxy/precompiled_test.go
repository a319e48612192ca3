package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
)

// failingReader yields data, then fails: an executor that dies in the
// middle of an upload.
type failingReader struct{ data []byte }

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, errors.New("executor went away")
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestPutPrecompiledInterrupted(t *testing.T) {
	c, lc := serve(t, local.Config{})
	artifact := bytes.Repeat([]byte("cwasm"), 200_000) // several chunks
	key := regcache.PrecompiledKey{ModuleDigest: cachetest.Digest([]byte("m")), EngineKey: "wasmtime"}
	err := c.PutPrecompiled(context.Background(), key, regcache.Precompiled{Digest: cachetest.Digest(artifact), Size: int64(len(artifact))}, &failingReader{artifact[:len(artifact)/2]})
	if err == nil {
		t.Fatal("PutPrecompiled of a half upload succeeded")
	}
	for name, pc := range map[string]regcache.PrecompiledStore{"proxy": c, "server's cache": lc} {
		if _, _, err := pc.GetPrecompiled(context.Background(), key); !errors.Is(err, regcache.ErrNotFound) {
			t.Fatalf("%s: GetPrecompiled after a half upload = %v, want ErrNotFound", name, err)
		}
	}
	// The upload, whole, over the same connection.
	if err := c.PutPrecompiled(context.Background(), key, regcache.Precompiled{Digest: cachetest.Digest(artifact), Size: int64(len(artifact))}, bytes.NewReader(artifact)); err != nil {
		t.Fatal(err)
	}
	rc, info, err := c.GetPrecompiled(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, artifact) || info.Digest != cachetest.Digest(artifact) {
		t.Fatalf("GetPrecompiled = %d bytes, %+v, %v", len(got), info, err)
	}
}

// TestGetPrecompiledVerifies: bytes that do not match the artifact's
// digest (here, corrupted on the cache's disk) end the read with
// ErrDigestMismatch, not io.EOF.
func TestGetPrecompiledVerifies(t *testing.T) {
	dir := t.TempDir()
	c, _ := serve(t, local.Config{Dir: dir})
	artifact := []byte("native code")
	dgst := cachetest.Digest(artifact)
	key := regcache.PrecompiledKey{ModuleDigest: cachetest.Digest([]byte("m")), EngineKey: "wasmtime"}
	if err := c.PutPrecompiled(context.Background(), key, regcache.Precompiled{Digest: dgst, Size: int64(len(artifact))}, bytes.NewReader(artifact)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(dgst, "sha256:")), []byte("evil code!!"), 0o600); err != nil {
		t.Fatal(err)
	}
	rc, _, err := c.GetPrecompiled(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadAll(rc); !errors.Is(err, regcache.ErrDigestMismatch) {
		t.Fatalf("reading a corrupted artifact: %v, want ErrDigestMismatch", err)
	}
}

// modulesOnly is a registry cache that stores no precompiled modules: its
// server answers their RPCs Unimplemented.
type modulesOnly struct{}

func (modulesOnly) Resolve(context.Context, regcache.ResolveRequest) (regcache.Resolved, error) {
	return regcache.Resolved{}, regcache.ErrNotFound
}

func (modulesOnly) Fetch(context.Context, string) (io.ReadCloser, int64, error) {
	return nil, 0, regcache.ErrNotFound
}

// TestPrecompiledUnsupported: a server that stores no precompiled modules
// (an older or a restricted cache) gives misses (ErrNotFound) to gets and
// errors to puts, and is asked once: later calls are answered without one.
func TestPrecompiledUnsupported(t *testing.T) {
	var calls atomic.Int32
	count := grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if strings.HasSuffix(info.FullMethod, "Precompiled") {
			calls.Add(1)
		}
		return handler(srv, ss)
	})
	c := serveCache(t, modulesOnly{}, count)
	ctx := context.Background()
	key := regcache.PrecompiledKey{ModuleDigest: cachetest.Digest([]byte("m")), EngineKey: "wasmtime"}
	for i := range 2 {
		if _, _, err := c.GetPrecompiled(ctx, key); !errors.Is(err, regcache.ErrNotFound) || !strings.Contains(err.Error(), "does not store precompiled modules") {
			t.Fatalf("get %d from a cache without precompiled modules: %v, want ErrNotFound saying why", i, err)
		}
	}
	x := []byte("x")
	if err := c.PutPrecompiled(ctx, key, regcache.Precompiled{Digest: cachetest.Digest(x), Size: 1}, bytes.NewReader(x)); err == nil {
		t.Fatal("put to a cache without precompiled modules succeeded")
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d precompiled calls reached the server, want 1 (the first get)", n)
	}

	// A put first is remembered too.
	calls.Store(0)
	c = serveCache(t, modulesOnly{}, count)
	if err := c.PutPrecompiled(ctx, key, regcache.Precompiled{Digest: cachetest.Digest(x), Size: 1}, bytes.NewReader(x)); err == nil {
		t.Fatal("put to a cache without precompiled modules succeeded")
	}
	if _, _, err := c.GetPrecompiled(ctx, key); !errors.Is(err, regcache.ErrNotFound) {
		t.Fatalf("get after an unsupported put: %v, want ErrNotFound", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d precompiled calls reached the server, want 1 (the put)", n)
	}
}
