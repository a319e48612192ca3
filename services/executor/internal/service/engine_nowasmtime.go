//go:build nowasmtime

package service

import "github.com/wasmlet/wasmlet/services/executor/internal/engine"

const withWasmtime = false

func newWasmtime(Config, engineBase) (engine.Engine, error) { return nil, CheckEngine("wasmtime") }
