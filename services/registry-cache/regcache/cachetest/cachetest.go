// Package cachetest is the conformance suite of regcache.Cache: every
// implementation (the local cache, and the gRPC proxy talking to a server)
// must pass Run against artifacts prepared in a real registry by Prepare.
// Implementations that are also a regcache.Pinner or
// regcache.PrecompiledStore are held to those contracts too.
//
// It owns only test artifacts it pushes into the registry it is given; it
// never reaches into a cache's internals.
//
//	reg := testregistry.New(t, testregistry.Options{})
//	fx := cachetest.Prepare(t, reg)
//	cachetest.Run(t, func(t *testing.T) regcache.Cache { return newCache(t, reg) }, fx)
package cachetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
	"github.com/wasmlet/wasmlet/services/registry-cache/push"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// Module is a Wasm module pushed under Reference.
type Module struct {
	Reference string
	Bytes     []byte
	MediaType string
}

// Fixture names the artifacts the suite resolves.
type Fixture struct {
	CNCF      Module // CNCF layout, by tag
	WasmToOCI Module // wasm-to-oci layout
	Index     Module // an image index whose wasip1/wasm entry is this module
	Container string // a container image
	Missing   string // a tag that does not exist
	// Credentials to send with every request (nil for an open registry).
	Credentials map[string]regcache.Credentials
}

// WasmModule returns a small valid Wasm module whose bytes differ by name
// (an empty module with a custom section holding name).
func WasmModule(name string) []byte {
	b := []byte("\x00asm\x01\x00\x00\x00")
	payload := append([]byte{byte(len(name))}, name...)
	b = append(b, 0, byte(len(payload)))
	return append(b, payload...)
}

// Digest is the sha256 digest string of b.
func Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Prepare pushes the fixture's artifacts into reg under repositories whose
// names start with "cachetest/".
func Prepare(t testing.TB, reg *testregistry.Registry) Fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fx := Fixture{
		CNCF:      Module{Reference: reg.Host + "/cachetest/cncf:v1", Bytes: WasmModule("cncf"), MediaType: push.MediaTypeLayer},
		WasmToOCI: Module{Reference: reg.Host + "/cachetest/wasm-to-oci:v1", Bytes: WasmModule("wasm-to-oci"), MediaType: "application/vnd.wasm.content.layer.v1+wasm"},
		Index:     Module{Reference: reg.Host + "/cachetest/index:v1", Bytes: WasmModule("index"), MediaType: push.MediaTypeLayer},
		Container: reg.Host + "/cachetest/container:v1",
		Missing:   reg.Host + "/cachetest/cncf:no-such-tag",
	}
	if reg.Username != "" {
		fx.Credentials = map[string]regcache.Credentials{reg.Host: {Username: reg.Username, Password: reg.Password}}
	}
	popts := push.Options{PlainHTTP: reg.PlainHTTP, CAFile: reg.CAFile,
		Credentials: push.Credentials{Username: reg.Username, Password: reg.Password}}

	popts.Bytes, popts.Reference = fx.CNCF.Bytes, fx.CNCF.Reference
	if _, err := push.Push(ctx, popts); err != nil {
		t.Fatalf("prepare CNCF module: %v", err)
	}
	if _, err := reg.PushWasmToOCI(ctx, "cachetest/wasm-to-oci", "v1", fx.WasmToOCI.Bytes); err != nil {
		t.Fatalf("prepare wasm-to-oci module: %v", err)
	}
	// The index holds a container image for linux/amd64 and the module.
	linux, err := reg.PushContainerImage(ctx, "cachetest/index", "")
	if err != nil {
		t.Fatalf("prepare index: %v", err)
	}
	popts.Bytes, popts.Reference = fx.Index.Bytes, reg.Host+"/cachetest/index"
	wasmRef, err := push.Push(ctx, popts)
	if err != nil {
		t.Fatalf("prepare index: %v", err)
	}
	wasmDigest := wasmRef[strings.LastIndex(wasmRef, "@")+1:]
	// The CNCF manifest's size is needed for the index entry: fetch it back.
	size := manifestSize(ctx, t, reg, "cachetest/index", wasmDigest)
	if _, err := reg.PushIndex(ctx, "cachetest/index", "v1", []testregistry.IndexEntry{
		{Manifest: linux, OS: "linux", Architecture: "amd64"},
		{Manifest: testregistry.Manifest{Digest: wasmDigest, Size: size, MediaType: "application/vnd.oci.image.manifest.v1+json"}, OS: "wasip1", Architecture: "wasm"},
	}); err != nil {
		t.Fatalf("prepare index: %v", err)
	}
	if _, err := reg.PushContainerImage(ctx, "cachetest/container", "v1"); err != nil {
		t.Fatalf("prepare container image: %v", err)
	}
	return fx
}

func manifestSize(ctx context.Context, t testing.TB, reg *testregistry.Registry, repo, dgst string) int64 {
	t.Helper()
	resp, err := reg.Get(ctx, "/v2/"+repo+"/manifests/"+dgst)
	if err != nil {
		t.Fatalf("get manifest %s: %v", dgst, err)
	}
	return int64(len(resp))
}

// Run runs the suite. newCache returns a fresh, empty cache for each subtest.
func Run(t *testing.T, newCache func(t *testing.T) regcache.Cache, fx Fixture) {
	ctx := func(t *testing.T) context.Context {
		c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		return c
	}
	req := func(ref string, p regcache.PullPolicy) regcache.ResolveRequest {
		return regcache.ResolveRequest{Reference: ref, Policy: p, Credentials: fx.Credentials}
	}

	for name, m := range map[string]Module{"CNCF": fx.CNCF, "WasmToOCI": fx.WasmToOCI, "Index": fx.Index} {
		t.Run("Resolve"+name, func(t *testing.T) {
			c := newCache(t)
			res, err := c.Resolve(ctx(t), req(m.Reference, regcache.PullIfNotPresent))
			if err != nil {
				t.Fatalf("Resolve(%s): %v", m.Reference, err)
			}
			checkResolved(t, res, m)
			checkFetch(ctx(t), t, c, res.ModuleDigest, m.Bytes)
		})
	}

	t.Run("ResolveByDigest", func(t *testing.T) {
		c := newCache(t)
		first, err := c.Resolve(ctx(t), req(fx.CNCF.Reference, regcache.PullAlways))
		if err != nil {
			t.Fatal(err)
		}
		repo := fx.CNCF.Reference[:strings.LastIndex(fx.CNCF.Reference, ":")]
		byDigest := repo + "@" + first.ManifestDigest
		res, err := c.Resolve(ctx(t), req(byDigest, regcache.PullAlways))
		if err != nil {
			t.Fatalf("Resolve(%s): %v", byDigest, err)
		}
		if res.Reference != byDigest || res.ManifestDigest != first.ManifestDigest || res.ModuleDigest != first.ModuleDigest {
			t.Fatalf("by digest: got %+v, want the digests of %+v", res, first)
		}
	})

	t.Run("ContainerImageRefused", func(t *testing.T) {
		_, err := newCache(t).Resolve(ctx(t), req(fx.Container, regcache.PullIfNotPresent))
		if !errors.Is(err, regcache.ErrNotWasm) || !strings.Contains(err.Error(), "container image") {
			t.Fatalf("Resolve(container image) = %v, want ErrNotWasm saying it is a container image", err)
		}
	})

	t.Run("MissingTag", func(t *testing.T) {
		_, err := newCache(t).Resolve(ctx(t), req(fx.Missing, regcache.PullIfNotPresent))
		if !errors.Is(err, regcache.ErrNotFound) || !strings.Contains(err.Error(), fx.Missing) {
			t.Fatalf("Resolve(missing tag) = %v, want ErrNotFound naming the reference", err)
		}
	})

	t.Run("InvalidReference", func(t *testing.T) {
		_, err := newCache(t).Resolve(ctx(t), req("Not A Reference", regcache.PullIfNotPresent))
		if !errors.Is(err, regcache.ErrInvalidReference) {
			t.Fatalf("Resolve(bad reference) = %v, want ErrInvalidReference", err)
		}
	})

	t.Run("FetchUnknown", func(t *testing.T) {
		c := newCache(t)
		_, _, err := c.Fetch(ctx(t), Digest([]byte("never stored")))
		if !errors.Is(err, regcache.ErrNotFound) {
			t.Fatalf("Fetch(unknown digest) = %v, want ErrNotFound", err)
		}
		_, _, err = c.Fetch(ctx(t), "sha256:xyz")
		if !errors.Is(err, regcache.ErrInvalidReference) {
			t.Fatalf("Fetch(bad digest) = %v, want ErrInvalidReference", err)
		}
	})

	t.Run("PullNever", func(t *testing.T) {
		c := newCache(t)
		_, err := c.Resolve(ctx(t), req(fx.CNCF.Reference, regcache.PullNever))
		if !errors.Is(err, regcache.ErrNotFound) {
			t.Fatalf("Resolve(uncached, Never) = %v, want ErrNotFound", err)
		}
		if _, err := c.Resolve(ctx(t), req(fx.CNCF.Reference, regcache.PullIfNotPresent)); err != nil {
			t.Fatal(err)
		}
		res, err := c.Resolve(ctx(t), req(fx.CNCF.Reference, regcache.PullNever))
		if err != nil {
			t.Fatalf("Resolve(cached, Never) = %v", err)
		}
		checkResolved(t, res, fx.CNCF)
	})

	t.Run("Concurrent", func(t *testing.T) {
		c := newCache(t)
		var wg sync.WaitGroup
		results := make([]regcache.Resolved, 12)
		errs := make([]error, len(results))
		for i := range results {
			wg.Go(func() {
				results[i], errs[i] = c.Resolve(ctx(t), req(fx.CNCF.Reference, regcache.PullAlways))
			})
		}
		wg.Wait()
		for i := range results {
			if errs[i] != nil {
				t.Fatalf("Resolve #%d: %v", i, errs[i])
			}
			checkResolved(t, results[i], fx.CNCF)
		}
		checkFetch(ctx(t), t, c, results[0].ModuleDigest, fx.CNCF.Bytes)
	})

	t.Run("Pin", func(t *testing.T) {
		c := newCache(t)
		p, ok := c.(regcache.Pinner)
		if !ok {
			t.Skip("not a regcache.Pinner")
		}
		unknown := Digest([]byte("never stored"))
		if err := p.Pin(ctx(t), regcache.PinRequest{Holder: "h1", Digest: unknown}); !errors.Is(err, regcache.ErrNotFound) {
			t.Fatalf("Pin(uncached) = %v, want ErrNotFound", err)
		}
		res, err := c.Resolve(ctx(t), regcache.ResolveRequest{Reference: fx.CNCF.Reference, Credentials: fx.Credentials, PinHolder: "h0"})
		if err != nil {
			t.Fatalf("Resolve with PinHolder: %v", err)
		}
		for _, r := range []regcache.PinRequest{
			{Holder: "h1", Digest: res.ModuleDigest},
			{Holder: "h1", Digest: res.ModuleDigest, TTL: time.Minute}, // renews
			{Holder: "h2", Digest: res.ModuleDigest, TTL: time.Second},
		} {
			if err := p.Pin(ctx(t), r); err != nil {
				t.Fatalf("Pin(%+v): %v", r, err)
			}
		}
		for _, r := range []regcache.UnpinRequest{
			{Holder: "h1", Digest: res.ModuleDigest},
			{Holder: "h1", Digest: res.ModuleDigest}, // again: not an error
			{Holder: "h2"},
			{Holder: "h0"},
			{Holder: "nobody"},
		} {
			if err := p.Unpin(ctx(t), r); err != nil {
				t.Fatalf("Unpin(%+v): %v", r, err)
			}
		}
		for _, r := range []regcache.PinRequest{
			{Holder: "", Digest: res.ModuleDigest},
			{Holder: "h", Digest: "sha256:xyz"},
		} {
			if err := p.Pin(ctx(t), r); !errors.Is(err, regcache.ErrInvalidReference) {
				t.Fatalf("Pin(%+v) = %v, want ErrInvalidReference", r, err)
			}
		}
		checkFetch(ctx(t), t, c, res.ModuleDigest, fx.CNCF.Bytes)
	})

	t.Run("Precompiled", func(t *testing.T) {
		c := newCache(t)
		pc, ok := c.(regcache.PrecompiledStore)
		if !ok {
			t.Skip("not a regcache.PrecompiledStore")
		}
		key := regcache.PrecompiledKey{ModuleDigest: Digest(fx.CNCF.Bytes), EngineKey: "wasmtime-39.0.1/x86_64/cranelift"}
		if _, _, err := pc.GetPrecompiled(ctx(t), key); !errors.Is(err, regcache.ErrNotFound) {
			t.Fatalf("GetPrecompiled(none) = %v, want ErrNotFound", err)
		}
		// Larger than one gRPC chunk, to exercise the streams.
		artifact := bytes.Repeat([]byte("precompiled "), 70_000)
		tampered := bytes.Clone(artifact)
		tampered[len(tampered)/2] ^= 1
		err := pc.PutPrecompiled(ctx(t), key, regcache.Precompiled{Digest: Digest(artifact), Size: int64(len(tampered))}, bytes.NewReader(tampered))
		if !errors.Is(err, regcache.ErrDigestMismatch) {
			t.Fatalf("PutPrecompiled(tampered) = %v, want ErrDigestMismatch", err)
		}
		if _, _, err := pc.GetPrecompiled(ctx(t), key); !errors.Is(err, regcache.ErrNotFound) {
			t.Fatalf("GetPrecompiled after a mismatch = %v, want ErrNotFound", err)
		}
		err = pc.PutPrecompiled(ctx(t), key, regcache.Precompiled{Digest: Digest(artifact), Size: int64(len(artifact)) + 1}, bytes.NewReader(artifact))
		if !errors.Is(err, regcache.ErrDigestMismatch) {
			t.Fatalf("PutPrecompiled(wrong size) = %v, want ErrDigestMismatch", err)
		}
		if err := pc.PutPrecompiled(ctx(t), key, regcache.Precompiled{Digest: Digest(artifact), Size: int64(len(artifact))}, bytes.NewReader(artifact)); err != nil {
			t.Fatalf("PutPrecompiled: %v", err)
		}
		checkPrecompiled(ctx(t), t, pc, key, artifact)
		// Another engine key is another artifact; putting a key again
		// replaces its artifact.
		other := key
		other.EngineKey = "wazero-1.12.0"
		if _, _, err := pc.GetPrecompiled(ctx(t), other); !errors.Is(err, regcache.ErrNotFound) {
			t.Fatalf("GetPrecompiled(other engine) = %v, want ErrNotFound", err)
		}
		small := []byte("v2")
		if err := pc.PutPrecompiled(ctx(t), key, regcache.Precompiled{Digest: Digest(small), Size: int64(len(small))}, bytes.NewReader(small)); err != nil {
			t.Fatalf("PutPrecompiled again: %v", err)
		}
		checkPrecompiled(ctx(t), t, pc, key, small)
		if p, ok := c.(regcache.Pinner); ok {
			if err := p.Pin(ctx(t), regcache.PinRequest{Holder: "executor", Digest: Digest(small)}); err != nil {
				t.Fatalf("Pin(precompiled artifact): %v", err)
			}
		}
		for _, bad := range []regcache.PrecompiledKey{
			{ModuleDigest: "nope", EngineKey: "e"},
			{ModuleDigest: key.ModuleDigest},
			{ModuleDigest: key.ModuleDigest, EngineKey: "a\nb"},
		} {
			if _, _, err := pc.GetPrecompiled(ctx(t), bad); !errors.Is(err, regcache.ErrInvalidReference) {
				t.Errorf("GetPrecompiled(%q) = %v, want ErrInvalidReference", bad, err)
			}
			if err := pc.PutPrecompiled(ctx(t), bad, regcache.Precompiled{Digest: Digest(small), Size: 2}, bytes.NewReader(small)); !errors.Is(err, regcache.ErrInvalidReference) {
				t.Errorf("PutPrecompiled(%q) = %v, want ErrInvalidReference", bad, err)
			}
		}
		if err := pc.PutPrecompiled(ctx(t), key, regcache.Precompiled{Digest: "md5:abc", Size: 2}, bytes.NewReader(small)); !errors.Is(err, regcache.ErrInvalidReference) {
			t.Errorf("PutPrecompiled(non-sha256 digest) = %v, want ErrInvalidReference", err)
		}
	})
}

func checkPrecompiled(ctx context.Context, t *testing.T, pc regcache.PrecompiledStore, key regcache.PrecompiledKey, want []byte) {
	t.Helper()
	rc, info, err := pc.GetPrecompiled(ctx, key)
	if err != nil {
		t.Fatalf("GetPrecompiled: %v", err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("GetPrecompiled: read: %v", err)
	}
	if !bytes.Equal(got, want) || info.Size != int64(len(want)) || info.Digest != Digest(want) {
		t.Fatalf("GetPrecompiled = %d bytes, %+v; want %d bytes with digest %s", len(got), info, len(want), Digest(want))
	}
}

func checkResolved(t *testing.T, res regcache.Resolved, m Module) {
	t.Helper()
	if res.Reference != m.Reference {
		t.Errorf("Reference = %q, want %q", res.Reference, m.Reference)
	}
	if res.ModuleDigest != Digest(m.Bytes) || res.ModuleSize != int64(len(m.Bytes)) {
		t.Errorf("module = %s (%d bytes), want %s (%d bytes)", res.ModuleDigest, res.ModuleSize, Digest(m.Bytes), len(m.Bytes))
	}
	if res.MediaType != m.MediaType {
		t.Errorf("MediaType = %q, want %q", res.MediaType, m.MediaType)
	}
	if !strings.HasPrefix(res.ManifestDigest, "sha256:") || res.ManifestDigest == res.ModuleDigest {
		t.Errorf("ManifestDigest = %q, want the manifest's sha256 digest", res.ManifestDigest)
	}
	if res.Warning != "" {
		t.Errorf("Warning = %q, want none", res.Warning)
	}
}

func checkFetch(ctx context.Context, t *testing.T, c regcache.Cache, dgst string, want []byte) {
	t.Helper()
	rc, size, err := c.Fetch(ctx, dgst)
	if err != nil {
		t.Fatalf("Fetch(%s): %v", dgst, err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Fetch(%s): read: %v", dgst, err)
	}
	if size != int64(len(want)) || string(got) != string(want) {
		t.Fatalf("Fetch(%s) = %d bytes (size %d), want the module's %d bytes", dgst, len(got), size, len(want))
	}
}
