package engine

import (
	"log/slog"

	"github.com/wasmlet/wasmlet/services/executor/internal/diskcache"
)

// DefaultMaxCacheBytes bounds an engine's compiled code on disk when its
// Config gives no bound.
const DefaultMaxCacheBytes int64 = 2 << 30

// NewDiskCache returns the bound of maxBytes (DefaultMaxCacheBytes when it
// is not positive) over an engine's compiled code, the units list returns,
// logging evictions to log (nil: discarded).
//
// An engine holds a unit in use from its check of a module's compiled code
// on disk until its runtime has loaded it (or, for wazero, trims only
// while nothing reads the cache). Anything else may go at a Trim, also the
// code of a Module handed out: that module is compiled again (or fetched
// from the shared store) at its next Start, as after a corrupt artifact.
// The Engine interface never releases a Module, so pinning the code of
// every Module handed out would pin every module the process ever
// prepared, and bound nothing.
func NewDiskCache(maxBytes int64, list func() ([]diskcache.Unit, error), log *slog.Logger) (*diskcache.Cache, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxCacheBytes
	}
	return diskcache.New(diskcache.Config{What: "compiled code", MaxBytes: maxBytes, List: list, Logger: log})
}
