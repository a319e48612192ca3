//go:build nowasmtime && nowazero

package service

// An executor needs an engine: this fails the build, saying so.
var _ = anExecutorNeedsOneEngine_dropTagNowasmtimeOrNowazero
