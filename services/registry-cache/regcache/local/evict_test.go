package local_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
)

// artifact is a 1000-byte precompiled artifact named by i: puts are the
// quickest way to fill the store without a registry.
func artifact(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, 1000) }

func key(i int) regcache.PrecompiledKey {
	return regcache.PrecompiledKey{ModuleDigest: cachetest.Digest([]byte("module")), EngineKey: fmt.Sprintf("engine-%d", i)}
}

func put(t *testing.T, c *local.Cache, i int) {
	t.Helper()
	a := artifact(i)
	if err := c.PutPrecompiled(testCtx(t), key(i), regcache.Precompiled{Digest: cachetest.Digest(a), Size: int64(len(a))}, bytes.NewReader(a)); err != nil {
		t.Fatalf("put %d: %v", i, err)
	}
}

// present reports which of the artifacts 0..n-1 the cache still holds.
func present(t *testing.T, c *local.Cache, n int) []int {
	t.Helper()
	var held []int
	for i := range n {
		rc, _, err := c.Fetch(testCtx(t), cachetest.Digest(artifact(i)))
		if err == nil {
			rc.Close()
			held = append(held, i)
		} else if !errors.Is(err, regcache.ErrNotFound) {
			t.Fatalf("fetch %d: %v", i, err)
		}
	}
	return held
}

func TestEvictionLRUSparesPinned(t *testing.T) {
	dir := t.TempDir()
	cfg := local.Config{Dir: dir, MaxStoreBytes: 3000, EvictionGrace: time.Nanosecond}
	c := newCache(t, cfg)
	for i := range 3 {
		put(t, c, i)
	}
	if err := c.Pin(testCtx(t), regcache.PinRequest{Holder: "inst-0", Digest: cachetest.Digest(artifact(0))}); err != nil {
		t.Fatal(err)
	}
	// A use makes 1 more recent than 2.
	if rc, _, err := c.GetPrecompiled(testCtx(t), key(1)); err != nil {
		t.Fatal(err)
	} else {
		rc.Close()
	}
	put(t, c, 3) // over budget: 2 is the least recently used unpinned blob
	if got := fmt.Sprint(present(t, c, 4)); got != "[0 1 3]" {
		t.Fatalf("after the fourth put the cache holds %s, want [0 1 3] (0 pinned, 2 least recently used)", got)
	}
	if index, _ := os.ReadFile(filepath.Join(dir, "precompiled.json")); bytes.Contains(index, []byte(`"engine-2"`)) || !bytes.Contains(index, []byte(`"engine-3"`)) {
		t.Fatalf("precompiled.json after evicting engine-2's artifact:\n%s", index)
	}
	if _, _, err := c.GetPrecompiled(testCtx(t), key(2)); !errors.Is(err, regcache.ErrNotFound) {
		t.Fatalf("GetPrecompiled(evicted) = %v, want ErrNotFound", err)
	}

	// Unpinned, 0 is now the least recently used.
	if err := c.Unpin(testCtx(t), regcache.UnpinRequest{Holder: "inst-0"}); err != nil {
		t.Fatal(err)
	}
	put(t, c, 4)
	if got := fmt.Sprint(present(t, c, 5)); got != "[1 3 4]" {
		t.Fatalf("after unpinning 0 and a fifth put the cache holds %s, want [1 3 4]", got)
	}

	// Pins survive a restart; reopening with a smaller budget evicts all
	// but the pinned blob.
	if err := c.Pin(testCtx(t), regcache.PinRequest{Holder: "inst-3", Digest: cachetest.Digest(artifact(3))}); err != nil {
		t.Fatal(err)
	}
	cfg.MaxStoreBytes = 1000
	c2 := newCache(t, cfg)
	if got := fmt.Sprint(present(t, c2, 5)); got != "[3]" {
		t.Fatalf("reopened with a budget of one blob, the cache holds %s, want [3] (pinned)", got)
	}
	// Everything pinned: the store goes over budget rather than evict.
	put(t, c2, 5)
	if err := c2.Pin(testCtx(t), regcache.PinRequest{Holder: "inst-5", Digest: cachetest.Digest(artifact(5))}); err != nil {
		t.Fatal(err)
	}
	// The blob just written is spared too (its writer is about to use
	// it), and goes at the next put.
	put(t, c2, 6)
	if got := fmt.Sprint(present(t, c2, 7)); got != "[3 5 6]" {
		t.Fatalf("with 3 and 5 pinned the cache holds %s, want [3 5 6]", got)
	}
	put(t, c2, 7)
	if got := fmt.Sprint(present(t, c2, 8)); got != "[3 5 7]" {
		t.Fatalf("with 3 and 5 pinned the cache holds %s, want [3 5 7]", got)
	}
}

func TestEvictionPinTTLAndGrace(t *testing.T) {
	c := newCache(t, local.Config{MaxStoreBytes: 1000, EvictionGrace: time.Nanosecond})
	put(t, c, 0)
	if err := c.Pin(testCtx(t), regcache.PinRequest{Holder: "h", Digest: cachetest.Digest(artifact(0)), TTL: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	put(t, c, 1)
	if got := fmt.Sprint(present(t, c, 2)); got != "[0 1]" {
		t.Fatalf("with 0 pinned the cache holds %s, want [0 1]", got)
	}
	time.Sleep(100 * time.Millisecond)
	put(t, c, 2) // the pin of 0 has expired
	if got := fmt.Sprint(present(t, c, 3)); got != "[2]" {
		t.Fatalf("after the pin expired the cache holds %s, want [2]", got)
	}

	// With the default grace, recently used blobs are not evicted even
	// without pins: a Resolve is never raced by eviction before its Fetch.
	g := newCache(t, local.Config{MaxStoreBytes: 1000})
	for i := range 3 {
		put(t, g, i)
	}
	if got := fmt.Sprint(present(t, g, 3)); got != "[0 1 2]" {
		t.Fatalf("within the grace period the cache holds %s, want [0 1 2]", got)
	}
}

// TestResolvePinHolderKeepsModule: a module resolved with a pin holder
// stays through eviction pressure; unpinned, it goes, and a Resolve brings
// it back.
func TestResolvePinHolderKeepsModule(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{})
	module := bytes.Repeat([]byte{0}, 1500)
	copy(module, "\x00asm\x01\x00\x00\x00")
	ref := reg.Host + "/pinned:v1"
	pushModule(t, reg, ref, module)
	dir := t.TempDir()
	c := newCache(t, local.Config{Dir: dir, InsecureHosts: []string{reg.Host}, MaxStoreBytes: 2500, EvictionGrace: time.Nanosecond})
	res, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref, PinHolder: "node-a/default/pod/app"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		put(t, c, i)
	}
	checkFetch(t, c, res.ModuleDigest, module)
	if err := c.Unpin(testCtx(t), regcache.UnpinRequest{Holder: "node-a/default/pod/app", Digest: res.ModuleDigest}); err != nil {
		t.Fatal(err)
	}
	put(t, c, 3) // evicts 2, used before the module's last Fetch
	put(t, c, 4) // evicts the module
	if _, _, err := c.Fetch(testCtx(t), res.ModuleDigest); !errors.Is(err, regcache.ErrNotFound) {
		t.Fatalf("Fetch of the unpinned, least recently used module = %v, want ErrNotFound", err)
	}
	if _, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref, Policy: regcache.PullNever}); !errors.Is(err, regcache.ErrNotFound) {
		t.Fatalf("Resolve(Never) of an evicted module = %v, want ErrNotFound", err)
	}
	if index, _ := os.ReadFile(filepath.Join(dir, "refs.json")); bytes.Contains(index, []byte("pinned:v1")) {
		t.Fatalf("refs.json still names the evicted module's reference:\n%s", index)
	}
	res2, err := c.Resolve(testCtx(t), regcache.ResolveRequest{Reference: ref})
	if err != nil || res2.ModuleDigest != res.ModuleDigest {
		t.Fatalf("Resolve after eviction = %+v, %v", res2, err)
	}
	checkFetch(t, c, res.ModuleDigest, module)
}

// TestCrashLeftoversRemoved: a download that a crash interrupted is left
// in blobs/tmp, invisible; the next start removes it.
func TestCrashLeftoversRemoved(t *testing.T) {
	dir := t.TempDir()
	newCache(t, local.Config{Dir: dir})
	left := filepath.Join(dir, "blobs", "tmp", "blob-123")
	if err := os.WriteFile(left, []byte("half a module"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(left, old, old); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "blobs", "tmp", "blob-456") // another process's download in progress
	if err := os.WriteFile(fresh, []byte("in progress"), 0o600); err != nil {
		t.Fatal(err)
	}
	newCache(t, local.Config{Dir: dir})
	if _, err := os.Stat(left); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a crash's leftover is still there after a restart: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a recent download in progress was removed: %v", err)
	}
}

func checkFetch(t *testing.T, c *local.Cache, dgst string, want []byte) {
	t.Helper()
	rc, _, err := c.Fetch(testCtx(t), dgst)
	if err != nil {
		t.Fatalf("Fetch(%s): %v", dgst, err)
	}
	defer rc.Close()
	got := new(bytes.Buffer)
	if _, err := got.ReadFrom(rc); err != nil || !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("Fetch(%s) = %d bytes, %v; want %d bytes", dgst, got.Len(), err, len(want))
	}
}

// Concurrent pins share writes of pins.log (a group commit), and every
// one that returned is on disk: a reopened cache keeps every pinned blob.
func TestConcurrentPinsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := local.Config{Dir: dir, EvictionGrace: time.Nanosecond}
	c := newCache(t, cfg)
	const n = 8
	for i := range n {
		put(t, c, i)
	}
	errs := make(chan error, n*20)
	var wg sync.WaitGroup
	for i := range n {
		for h := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- c.Pin(testCtx(t), regcache.PinRequest{Holder: fmt.Sprintf("pod-%d-%d", i, h), Digest: cachetest.Digest(artifact(i))})
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Every holder of blob 0 but one lets go; the others keep theirs.
	for h := range 19 {
		if err := c.Unpin(testCtx(t), regcache.UnpinRequest{Holder: fmt.Sprintf("pod-0-%d", h)}); err != nil {
			t.Fatal(err)
		}
	}
	cfg.MaxStoreBytes = 1000 // reopened with room for one blob: only pins keep the others
	c2 := newCache(t, cfg)
	if got := fmt.Sprint(present(t, c2, n)); got != "[0 1 2 3 4 5 6 7]" {
		t.Fatalf("reopened, the cache holds %s, want every pinned blob", got)
	}
	if err := c2.Unpin(testCtx(t), regcache.UnpinRequest{Holder: "pod-0-19"}); err != nil {
		t.Fatal(err)
	}
	put(t, c2, n) // over budget: 0, now unpinned, goes
	if got := fmt.Sprint(present(t, c2, n+1)); got != "[1 2 3 4 5 6 7 8]" {
		t.Fatalf("after the last holder of 0 let go, the cache holds %s, want [1 2 3 4 5 6 7 8]", got)
	}
}

// Pins are journaled in pins.log and compacted into pins.json; a record
// cut short by a crash is dropped and the journal goes on after it.
func TestPinJournal(t *testing.T) {
	dir := t.TempDir()
	cfg := local.Config{Dir: dir, EvictionGrace: time.Nanosecond}
	c := newCache(t, cfg)
	for i := range 3 {
		put(t, c, i)
	}
	pin := func(c regcache.Cache, holder string, i int) {
		t.Helper()
		if err := c.(regcache.Pinner).Pin(testCtx(t), regcache.PinRequest{Holder: holder, Digest: cachetest.Digest(artifact(i))}); err != nil {
			t.Fatal(err)
		}
	}
	unpin := func(c regcache.Cache, holder string) {
		t.Helper()
		if err := c.(regcache.Pinner).Unpin(testCtx(t), regcache.UnpinRequest{Holder: holder}); err != nil {
			t.Fatal(err)
		}
	}
	// 1,200 changes, past the compaction threshold: pods 0..599 come and go.
	for h := range 600 {
		pin(c, fmt.Sprint("pod-", h), h%2)
	}
	for h := range 600 {
		unpin(c, fmt.Sprint("pod-", h))
	}
	pin(c, "keeper", 1)
	if fi, err := os.Stat(filepath.Join(dir, "pins.log")); err != nil || fi.Size() > 20_000 {
		t.Fatalf("pins.log after 1,201 changes: %v, %v; want it compacted", fi.Size(), err)
	}
	// A crash in the middle of a record.
	f, err := os.OpenFile(filepath.Join(dir, "pins.log"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"digest":"sha256:00`)
	f.Close()

	c2 := newCache(t, cfg)
	pin(c2, "late", 2)       // written after the torn record
	cfg.MaxStoreBytes = 1000 // room for one blob: only pins keep the others
	c3 := newCache(t, cfg)
	if got := fmt.Sprint(present(t, c3, 3)); got != "[1 2]" {
		t.Fatalf("reopened, the cache holds %s, want [1 2] (pinned by keeper and late)", got)
	}
}
