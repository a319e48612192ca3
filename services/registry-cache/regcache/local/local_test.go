package local_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
	"github.com/wasmlet/wasmlet/services/registry-cache/push"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
)

func newCache(t *testing.T, cfg local.Config) *local.Cache {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	c, err := local.New(cfg)
	if err != nil {
		t.Fatalf("local.New: %v", err)
	}
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func pushModule(t *testing.T, reg *testregistry.Registry, ref string, module []byte) string {
	t.Helper()
	d, err := push.Push(testCtx(t), push.Options{Bytes: module, Reference: ref, PlainHTTP: reg.PlainHTTP, CAFile: reg.CAFile,
		Credentials: push.Credentials{Username: reg.Username, Password: reg.Password}})
	if err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return d
}

func TestConformance(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{})
	fx := cachetest.Prepare(t, reg)
	cachetest.Run(t, func(t *testing.T) regcache.Cache {
		return newCache(t, local.Config{InsecureHosts: []string{reg.Host}})
	}, fx)
}

func TestConformanceTLSBasicAuth(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{Auth: true})
	fx := cachetest.Prepare(t, reg)
	cachetest.Run(t, func(t *testing.T) regcache.Cache {
		return newCache(t, local.Config{CAFile: reg.CAFile})
	}, fx)

	for name, creds := range map[string]map[string]regcache.Credentials{
		"wrong password": {reg.Host: {Username: reg.Username, Password: "wrong"}},
		"no credentials": nil,
	} {
		t.Run(name, func(t *testing.T) {
			c := newCache(t, local.Config{CAFile: reg.CAFile})
			_, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: fx.CNCF.Reference, Credentials: creds})
			if !errors.Is(err, regcache.ErrUnauthorized) {
				t.Fatalf("Resolve = %v, want ErrUnauthorized", err)
			}
			if strings.Contains(err.Error(), reg.Password) {
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
	t.Run("untrusted CA", func(t *testing.T) {
		c := newCache(t, local.Config{})
		_, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: fx.CNCF.Reference, Credentials: fx.Credentials})
		if !errors.Is(err, regcache.ErrUnavailable) || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("Resolve without the CA = %v, want ErrUnavailable about the certificate", err)
		}
	})
}

func TestTamperedBlob(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{})
	module := cachetest.WasmModule("tampered")
	ref := reg.Host + "/tampered:v1"
	pushModule(t, reg, ref, module)
	path := reg.BlobPath(cachetest.Digest(module))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read the registry's copy: %v", err)
	}
	// Same length, different bytes: only a digest check can tell.
	data[len(data)-1] ^= 0xff
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	c := newCache(t, local.Config{Dir: dir, InsecureHosts: []string{reg.Host}})
	_, err = c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref})
	if !errors.Is(err, regcache.ErrDigestMismatch) {
		t.Fatalf("Resolve = %v, want ErrDigestMismatch", err)
	}
	if _, _, err := c.Fetch(testCtx(t), cachetest.Digest(module)); !errors.Is(err, regcache.ErrNotFound) {
		t.Fatalf("Fetch after mismatch = %v, want ErrNotFound", err)
	}
	if _, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref, Policy: regcache.PullNever}); !errors.Is(err, regcache.ErrNotFound) {
		t.Fatalf("Resolve(Never) after mismatch = %v, want ErrNotFound", err)
	}
	var files []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) != 0 {
		t.Fatalf("files left in the cache after a mismatch: %v", files)
	}
}

func TestTooLarge(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{})
	module := cachetest.WasmModule(strings.Repeat("x", 100))
	ref := reg.Host + "/big:v1"
	pushModule(t, reg, ref, module)

	for name, cfg := range map[string]local.Config{
		"layer":    {MaxLayerBytes: 64},
		"manifest": {MaxManifestBytes: 100},
	} {
		t.Run(name, func(t *testing.T) {
			cfg.InsecureHosts = []string{reg.Host}
			c := newCache(t, cfg)
			_, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref})
			if !errors.Is(err, regcache.ErrTooLarge) {
				t.Fatalf("Resolve = %v, want ErrTooLarge", err)
			}
		})
	}
	c := newCache(t, local.Config{MaxLayerBytes: int64(len(module)), InsecureHosts: []string{reg.Host}})
	if _, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref}); err != nil {
		t.Fatalf("Resolve at exactly the limit: %v", err)
	}
}

// countingProxy sits in front of the registry and counts blob GETs.
func countingProxy(t *testing.T, reg *testregistry.Registry) (host string, blobGets *atomic.Int64) {
	t.Helper()
	target, err := url.Parse(reg.URL)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	blobGets = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			blobGets.Add(1)
			// Hold the download a moment so that every caller joins it.
			time.Sleep(100 * time.Millisecond)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), blobGets
}

func TestConcurrentResolveSharesOneDownload(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{})
	module := cachetest.WasmModule("shared")
	pushModule(t, reg, reg.Host+"/shared:v1", module)
	pushModule(t, reg, reg.Host+"/shared:v2", module)
	host, blobGets := countingProxy(t, reg)

	c := newCache(t, local.Config{InsecureHosts: []string{host}})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		// Two tags of one module: the download is shared by digest, not
		// only by reference.
		ref := host + "/shared:v1"
		if i%2 == 1 {
			ref = host + "/shared:v2"
		}
		wg.Go(func() {
			res, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref, Policy: regcache.PullAlways})
			if err == nil && res.ModuleDigest != cachetest.Digest(module) {
				err = errors.New("wrong module digest " + res.ModuleDigest)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := blobGets.Load(); n != 1 {
		t.Fatalf("%d blob GETs upstream for 16 concurrent Resolves, want 1", n)
	}
}

func TestCachedWithoutOrigin(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{})
	module := cachetest.WasmModule("offline")
	ref := reg.Host + "/offline:v1"
	pushModule(t, reg, ref, module)
	dir := t.TempDir()
	cfg := local.Config{Dir: dir, InsecureHosts: []string{reg.Host}}
	c := newCache(t, cfg)
	first, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref})
	if err != nil {
		t.Fatal(err)
	}
	reg.Stop()

	// A restarted cache reads the reference index from disk.
	for name, c := range map[string]*local.Cache{"same": c, "reopened": newCache(t, cfg)} {
		for _, p := range []regcache.PullPolicy{regcache.PullIfNotPresent, regcache.PullNever} {
			res, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref, Policy: p})
			if err != nil {
				t.Fatalf("%s cache, policy %d, registry stopped: %v", name, p, err)
			}
			if res != first {
				t.Fatalf("%s cache, policy %d: %+v, want %+v", name, p, res, first)
			}
		}
		res, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref, Policy: regcache.PullAlways})
		if err != nil {
			t.Fatalf("%s cache, Always, registry stopped, cached: %v", name, err)
		}
		if res.Warning == "" || res.ModuleDigest != first.ModuleDigest {
			t.Fatalf("%s cache, Always, registry stopped: %+v, want the cached digest with a warning", name, res)
		}
	}
	_, err = c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: reg.Host + "/offline:v2", Policy: regcache.PullAlways})
	if !errors.Is(err, regcache.ErrUnavailable) {
		t.Fatalf("Resolve of an uncached tag with the registry stopped = %v, want ErrUnavailable", err)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := local.New(local.Config{}); err == nil {
		t.Error("New without Dir succeeded")
	}
	if _, err := local.New(local.Config{Dir: t.TempDir(), CAFile: filepath.Join(t.TempDir(), "missing.pem")}); err == nil {
		t.Error("New with a missing CA file succeeded")
	}
	if _, err := local.New(local.Config{Dir: t.TempDir(), MaxLayerBytes: -1}); err == nil {
		t.Error("New with a negative limit succeeded")
	}
}
