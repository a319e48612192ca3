package service

import (
	"fmt"
	"log/slog"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// An executor is built with both engines by default; a node needs one, and
// each costs the binary megabytes (wasmtime's static library most), so the
// build tags nowasmtime and nowazero leave one out (make build ships a
// wasmtime-only bin/executor and a pure-Go, wazero-only bin/executor-wazero).
// The files engine_*.go are those tags' halves: each defines
// with<Engine> and new<Engine>.

// engineBase is what every engine is made with.
type engineBase struct {
	dir    string // its compiled artifacts
	cpu    engine.ThreadLimiter
	shared engine.ArtifactStore
	log    *slog.Logger
}

// Engines are the engines this executor was built with, the default
// first.
func Engines() []string {
	var out []string
	if withWasmtime {
		out = append(out, "wasmtime")
	}
	if withWazero {
		out = append(out, "wazero")
	}
	return out
}

// DefaultEngine is the engine an executor runs when none is named:
// wasmtime when it was built with it.
func DefaultEngine() string { return Engines()[0] }

// CheckEngine says whether this executor can run engine name, and if not,
// why and what to run instead.
func CheckEngine(name string) error {
	var built bool
	switch name {
	case "wasmtime":
		built = withWasmtime
	case "wazero":
		built = withWazero
	default:
		return fmt.Errorf("engine %q: want wasmtime or wazero", name)
	}
	if !built {
		return fmt.Errorf("engine %s: this executor was built without it (-tags no%s; it has %s): run an executor built with %s (make build: bin/executor has wasmtime, bin/executor-wazero has wazero) or name the engine it has", name, name, DefaultEngine(), name)
	}
	return nil
}
