package local_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
)

// storedFiles lists the regular files under dir, waiting up to a second
// for a cancelled download to clean up after itself.
func storedFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		files = files[:0]
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				files = append(files, strings.TrimPrefix(p, dir))
			}
			return nil
		})
		if len(files) == 0 || time.Now().After(deadline) {
			return files
		}
	}
}

// TestFaultyRegistry: each fault a registry can show ends in its clear
// error, with nothing stored.
func TestFaultyRegistry(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{})
	module := bytes.Repeat(cachetest.WasmModule("faults"), 1000)
	pushModule(t, reg, reg.Host+"/faults:v1", module)
	p := testregistry.NewProxy(t, reg)
	ref := p.Host + "/faults:v1"

	for _, tc := range []struct {
		name    string
		fault   testregistry.Fault
		cfg     local.Config
		timeout time.Duration
		want    error
		say     string
	}{
		{
			name: "401",
			fault: func(w http.ResponseWriter, r *http.Request) bool {
				w.WriteHeader(http.StatusUnauthorized)
				return true
			},
			want: regcache.ErrUnauthorized, say: "check the pull credentials",
		},
		{
			name: "404 manifest",
			fault: func(w http.ResponseWriter, r *http.Request) bool {
				if testregistry.IsManifestGet(r) {
					w.WriteHeader(http.StatusNotFound)
					return true
				}
				return false
			},
			want: regcache.ErrNotFound, say: "does not exist",
		},
		{
			name: "404 blob",
			fault: func(w http.ResponseWriter, r *http.Request) bool {
				if testregistry.IsBlobGet(r) {
					w.WriteHeader(http.StatusNotFound)
					return true
				}
				return false
			},
			want: regcache.ErrNotFound, say: "does not have it",
		},
		{
			name: "503",
			fault: func(w http.ResponseWriter, r *http.Request) bool {
				w.WriteHeader(http.StatusServiceUnavailable)
				return true
			},
			want: regcache.ErrUnavailable, say: "retry later",
		},
		{
			name: "slow manifest",
			fault: func(w http.ResponseWriter, r *http.Request) bool {
				if testregistry.IsManifestGet(r) {
					<-r.Context().Done()
					return true
				}
				return false
			},
			timeout: 300 * time.Millisecond,
			want:    context.DeadlineExceeded, say: "gave up waiting for the registry",
		},
		{
			name: "slow blob",
			fault: func(w http.ResponseWriter, r *http.Request) bool {
				if testregistry.IsBlobGet(r) {
					<-r.Context().Done()
					return true
				}
				return false
			},
			timeout: 300 * time.Millisecond,
			want:    context.DeadlineExceeded, say: "nothing was cached",
		},
		{
			// A manifest larger than the limit, without a Content-Length
			// to give it away: only counting the bytes can tell.
			name: "oversized manifest",
			fault: func(w http.ResponseWriter, r *http.Request) bool {
				if testregistry.IsManifestGet(r) {
					w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
					w.WriteHeader(http.StatusOK)
					w.Write([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"x":"`))
					w.(http.Flusher).Flush()
					w.Write(bytes.Repeat([]byte("x"), 8<<10))
					w.Write([]byte(`"}}`))
					return true
				}
				return false
			},
			cfg:  local.Config{MaxManifestBytes: 4 << 10},
			want: regcache.ErrTooLarge,
		},
		{
			// The blob is longer than the manifest says: the download
			// stops at the limit.
			name: "oversized blob",
			fault: func(w http.ResponseWriter, r *http.Request) bool {
				if testregistry.IsBlobGet(r) {
					w.WriteHeader(http.StatusOK)
					w.(http.Flusher).Flush()
					w.Write(bytes.Repeat(module, 4))
					return true
				}
				return false
			},
			cfg:  local.Config{MaxLayerBytes: int64(len(module))},
			want: regcache.ErrTooLarge,
		},
		{
			name: "tampered blob",
			fault: func(w http.ResponseWriter, r *http.Request) bool {
				if testregistry.IsBlobGet(r) {
					bad := bytes.Clone(module)
					bad[100] ^= 1
					w.Header().Set("Content-Length", strconv.Itoa(len(bad)))
					w.WriteHeader(http.StatusOK)
					w.Write(bad)
					return true
				}
				return false
			},
			want: regcache.ErrDigestMismatch, say: "nothing was cached",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p.SetFault(tc.fault)
			t.Cleanup(func() { p.SetFault(nil) })
			cfg := tc.cfg
			cfg.Dir = t.TempDir()
			cfg.InsecureHosts = []string{p.Host}
			c := newCache(t, cfg)
			ctx := testCtx(t)
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			start := time.Now()
			_, err := c.Resolve(ctx, regcache.ResolveRequest{Reference: ref, Policy: regcache.PullAlways})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), ref) || !strings.Contains(err.Error(), tc.say) {
				t.Fatalf("Resolve = %v, want %v naming %s and saying %q", err, tc.want, ref, tc.say)
			}
			t.Logf("Resolve: %v", err)
			if tc.timeout > 0 && time.Since(start) > tc.timeout+time.Second {
				t.Fatalf("Resolve took %v with a deadline of %v", time.Since(start), tc.timeout)
			}
			if files := storedFiles(t, cfg.Dir); len(files) != 0 {
				t.Fatalf("files stored after %v: %v", err, files)
			}
			if _, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref, Policy: regcache.PullNever}); !errors.Is(err, regcache.ErrNotFound) {
				t.Fatalf("Resolve(Never) after the fault = %v, want ErrNotFound", err)
			}
		})
	}
}

// TestCancelMidDownload: a caller that gives up in the middle of a blob
// (as a crash would) leaves no partial artifact: nothing under the store,
// the blob not servable, and a later Resolve downloads it afresh.
func TestCancelMidDownload(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{})
	module := bytes.Repeat(cachetest.WasmModule("midway"), 20_000)
	pushModule(t, reg, reg.Host+"/midway:v1", module)
	p := testregistry.NewProxy(t, reg)
	ref := p.Host + "/midway:v1"

	halfSent := make(chan struct{})
	aborted := make(chan struct{})
	p.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !testregistry.IsBlobGet(r) {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(module)))
		w.WriteHeader(http.StatusOK)
		w.Write(module[:len(module)/2])
		w.(http.Flusher).Flush()
		close(halfSent)
		<-r.Context().Done()
		close(aborted)
		return true
	})
	dir := t.TempDir()
	c := newCache(t, local.Config{Dir: dir, InsecureHosts: []string{p.Host}})
	ctx, cancel := context.WithCancel(testCtx(t))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Resolve(ctx, regcache.ResolveRequest{Reference: ref})
		errc <- err
	}()
	<-halfSent
	// The half-written download is in blobs/tmp, where nothing is served.
	if _, _, err := c.Fetch(testCtx(t), cachetest.Digest(module)); !errors.Is(err, regcache.ErrNotFound) {
		t.Fatalf("Fetch in the middle of the download = %v, want ErrNotFound", err)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Resolve = %v, want context.Canceled", err)
	}
	select {
	case <-aborted:
	case <-time.After(5 * time.Second):
		t.Fatal("the download went on after its only caller gave up")
	}
	if files := storedFiles(t, dir); len(files) != 0 {
		t.Fatalf("files left after the cancelled download: %v", files)
	}
	p.SetFault(nil)
	res, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref})
	if err != nil {
		t.Fatal(err)
	}
	checkFetch(t, c, res.ModuleDigest, module)
}

// TestNotWasmStoresNothing: a container image and an index without a
// wasip1/wasm entry are refused, saying what they are, with nothing stored.
func TestNotWasmStoresNothing(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{})
	ctx := testCtx(t)
	if _, err := reg.PushContainerImage(ctx, "notwasm/container", "v1"); err != nil {
		t.Fatal(err)
	}
	amd64, err := reg.PushContainerImage(ctx, "notwasm/index", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.PushIndex(ctx, "notwasm/index", "v1", []testregistry.IndexEntry{
		{Manifest: amd64, OS: "linux", Architecture: "amd64"},
		{Manifest: amd64, OS: "linux", Architecture: "arm64"},
	}); err != nil {
		t.Fatal(err)
	}
	for ref, say := range map[string]string{
		reg.Host + "/notwasm/container:v1": "it is a container image",
		reg.Host + "/notwasm/index:v1":     "no wasip1/wasm entry (platforms found: linux/amd64, linux/arm64)",
	} {
		dir := t.TempDir()
		c := newCache(t, local.Config{Dir: dir, InsecureHosts: []string{reg.Host}})
		_, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref})
		if !errors.Is(err, regcache.ErrNotWasm) || !strings.Contains(err.Error(), say) {
			t.Fatalf("Resolve(%s) = %v, want ErrNotWasm saying %q", ref, err, say)
		}
		if files := storedFiles(t, dir); len(files) != 0 {
			t.Fatalf("files stored after refusing %s: %v", ref, files)
		}
	}
}
