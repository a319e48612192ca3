package local_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
)

// TestUnpinOnlyOwnPins: a holder's unpins, of one digest or of all its
// pins, release its own pins only. Holders that look like patterns of
// another's name (empty, "*", a prefix, another case, trailing bytes) do
// not release it, before or after the cache reopens and replays its pin
// journal; the pin keeps its blob from eviction until its own holder
// releases it.
func TestUnpinOnlyOwnPins(t *testing.T) {
	dir := t.TempDir()
	cfg := local.Config{Dir: dir, MaxStoreBytes: 2000, EvictionGrace: time.Nanosecond}
	c := newCache(t, cfg)
	put(t, c, 0)
	put(t, c, 1)
	const b = "executor/node-b/wasmtime"
	d0 := cachetest.Digest(artifact(0))
	if err := c.Pin(testCtx(t), regcache.PinRequest{Holder: b, Digest: d0}); err != nil {
		t.Fatal(err)
	}
	if err := c.Pin(testCtx(t), regcache.PinRequest{Holder: "executor/node-a/wasmtime", Digest: d0}); err != nil {
		t.Fatal(err)
	}
	others := []string{"executor/node-a/wasmtime", "*", "%", ".*", "executor/", "executor/node-b", "executor/node-b/",
		"executor/node-b/wasmtime/", "EXECUTOR/NODE-B/WASMTIME", b + " ", b + "\x00", " " + b}
	for _, h := range others {
		for _, d := range []string{"", d0} {
			if err := c.Unpin(testCtx(t), regcache.UnpinRequest{Holder: h, Digest: d}); err != nil {
				t.Fatalf("Unpin(%q, %q): %v", h, d, err)
			}
		}
	}
	for _, d := range []string{"", d0} {
		if err := c.Unpin(testCtx(t), regcache.UnpinRequest{Holder: "", Digest: d}); !errors.Is(err, regcache.ErrInvalidReference) {
			t.Fatalf("Unpin with no holder, digest %q: %v, want ErrInvalidReference", d, err)
		}
	}
	// A use makes 1 more recent than 0; over budget, 1 is evicted all the
	// same, since 0 is still pinned by b.
	if rc, _, err := c.GetPrecompiled(testCtx(t), key(1)); err != nil {
		t.Fatal(err)
	} else {
		rc.Close()
	}
	put(t, c, 2)
	if got := present(t, c, 3); !slices.Contains(got, 0) || slices.Contains(got, 1) {
		t.Fatalf("after other holders' unpins and a put over budget the cache holds %v, want 0 (pinned by %s) and not 1", got, b)
	}
	// The journal replays the same: b's pin survives a reopen.
	c = newCache(t, cfg)
	put(t, c, 3)
	if got := present(t, c, 4); !slices.Contains(got, 0) {
		t.Fatalf("after a reopen the cache holds %v, want 0 still pinned by %s", got, b)
	}
	if err := c.Unpin(testCtx(t), regcache.UnpinRequest{Holder: b}); err != nil {
		t.Fatal(err)
	}
	put(t, c, 4)
	put(t, c, 5)
	if got := present(t, c, 6); slices.Contains(got, 0) {
		t.Fatalf("after %s released its pin and two puts the cache holds %s, want 0 evicted", b, fmt.Sprint(got))
	}
}
