// Package gcpercent sets the garbage collector's target of wasmlet's node
// agent and executor. Their live heaps are small (a few MiB idle), so with
// Go's default (GOGC=100) a burst of pod starts, which allocates much and
// keeps little, ran a collection every few MiB: a fifth of the executor's
// CPU in a burst. At 200, bursts of 500 pods cost the executor 1.28 s of
// CPU instead of 1.73–1.86 s and the node agent 1.03–1.13 s instead of
// 1.27–1.45 s (bench podstart, medians of 3), and the idle node's
// anonymous memory grew by about 1 MiB (bench footprint, RssAnon). A
// GOGC in the environment still wins.
package gcpercent

import (
	"os"
	"runtime/debug"
)

// Percent is the target: the heap may grow to (1 + Percent/100) times the
// live heap before the next collection.
const Percent = 200

// Set applies Percent unless GOGC is set.
func Set() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(Percent)
	}
}
