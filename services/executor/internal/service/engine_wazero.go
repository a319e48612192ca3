//go:build !nowazero

package service

import (
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/wazero"
)

const withWazero = true

func newWazero(cfg Config, b engineBase) (engine.Engine, error) {
	return wazero.New(wazero.Config{CacheDir: b.dir, CPU: b.cpu, Shared: b.shared, Logger: b.log, MaxCacheBytes: cfg.CompiledCacheBytes, InterpretFirst: cfg.InterpretFirst})
}
