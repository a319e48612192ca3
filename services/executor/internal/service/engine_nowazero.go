//go:build nowazero

package service

import "github.com/wasmlet/wasmlet/services/executor/internal/engine"

const withWazero = false

func newWazero(Config, engineBase) (engine.Engine, error) { return nil, CheckEngine("wazero") }
