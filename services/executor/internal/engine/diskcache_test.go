package engine

import (
	"testing"

	"github.com/wasmlet/wasmlet/services/executor/internal/diskcache"
)

func TestNewDiskCacheDefault(t *testing.T) {
	list := func() ([]diskcache.Unit, error) { return nil, nil }
	for _, max := range []int64{0, -1} {
		c, err := NewDiskCache(max, list, nil)
		if err != nil || c.Max() != DefaultMaxCacheBytes {
			t.Errorf("bound %d: max %v (%v), want the default %d", max, c.Max(), err, DefaultMaxCacheBytes)
		}
	}
	if c, err := NewDiskCache(1<<20, list, nil); err != nil || c.Max() != 1<<20 {
		t.Errorf("bound 1 MiB: %v", err)
	}
}
