//go:build !nowasmtime

package service

import (
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/wasmtime"
)

const withWasmtime = true

func newWasmtime(cfg Config, b engineBase) (engine.Engine, error) {
	return wasmtime.New(wasmtime.Config{CacheDir: b.dir, CPU: b.cpu, Shared: b.shared, Logger: b.log, MaxCacheBytes: cfg.CompiledCacheBytes, QuickFirst: cfg.QuickFirstCompile})
}
