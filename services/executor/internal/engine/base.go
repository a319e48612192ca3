package engine

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// Base is what every engine is besides its runtime: its name, version and
// engine key, and its artifact handling. Engines embed it.
type Base struct {
	name, version, key string
	artifacts          *Artifacts
}

// BaseConfig names an engine for NewBase.
type BaseConfig struct {
	// Name is the engine's short name ("wasmtime").
	Name string
	// ModulePath is the Go module of the runtime, whose version in the
	// build is the engine's; FallbackVersion when the build does not say.
	ModulePath, FallbackVersion string
	// ConfigKey names the settings that shape compiled code (EngineKey).
	ConfigKey string
	// Shared and Logger are the engine's Config.Shared and Config.Logger.
	Shared ArtifactStore
	Logger *slog.Logger
}

// NewBase returns the Base of an engine. Artifacts are not shared when
// the host's CPU features cannot be read (logged), since the engine key
// could not tell apart the CPUs that artifacts are made for.
func NewBase(c BaseConfig) Base {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	v := ModuleVersion(c.ModulePath, c.FallbackVersion)
	features, err := HostCPUFeatures()
	if err != nil && c.Shared != nil {
		log.Warn("not sharing precompiled artifacts: the host's CPU features are unknown", "engine", c.Name, "error", err)
		c.Shared = nil
	}
	return Base{name: c.Name, version: v, key: EngineKey(c.Name, v, c.ConfigKey, features), artifacts: NewArtifacts(c.Shared, log)}
}

// Name implements Engine.
func (b *Base) Name() string { return b.name }

// Version implements Engine.
func (b *Base) Version() string { return b.version }

// Key is the engine key its artifacts are kept and shared under.
func (b *Base) Key() string { return b.key }

// Artifacts is the engine's artifact handling.
func (b *Base) Artifacts() *Artifacts { return b.artifacts }

// ArtifactKey is the key of the module digest's artifact.
func (b *Base) ArtifactKey(digest string) ArtifactKey {
	return ArtifactKey{ModuleDigest: digest, EngineKey: b.key}
}

// ArtifactStats implements ArtifactReporter.
func (b *Base) ArtifactStats() ArtifactStats { return b.artifacts.Stats() }

// WaitShared blocks until the background puts of artifacts to the shared
// store started so far have ended.
func (b *Base) WaitShared() { b.artifacts.Wait() }

// WASIModule is the one module engines provide imports of.
const WASIModule = "wasi_snapshot_preview1"

// DigestHex is the hex of a module digest "sha256:<64 hex digits>".
func DigestHex(digest string) (string, error) {
	hex, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(hex) != 64 {
		return "", fmt.Errorf("prepare module %q: want a digest sha256:<64 hex digits>", digest)
	}
	return hex, nil
}

// Import is one import of a module.
type Import struct{ Module, Name string }

// CheckWASI refuses, with ErrModuleUnsupported, a module that imports
// anything but WASI preview 1 or has no _start function.
func CheckWASI(digest string, imports []Import, hasStart bool) error {
	var missing []string
	for _, imp := range imports {
		if imp.Module != WASIModule {
			missing = append(missing, imp.Module+"::"+imp.Name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: module %s imports %s, which this executor does not provide (only %s); build it for wasip1 without other host imports",
			ErrModuleUnsupported, digest, strings.Join(missing, ", "), WASIModule)
	}
	if !hasStart {
		return fmt.Errorf("%w: module %s exports no _start function; build it as a WASI command (not a reactor or library)", ErrModuleUnsupported, digest)
	}
	return nil
}

// CompileError is a runtime's refusal to compile a module, as Prepare
// returns it.
func CompileError(digest string, err error) error {
	return fmt.Errorf("%w: module %s does not compile: %s; check that it is a WebAssembly binary built for wasip1", ErrModuleInvalid, digest, FirstLine(err.Error()))
}

// InstantiateError is a runtime's refusal to instantiate a module, as
// Start returns it.
func InstantiateError(digest string, err error) error {
	return fmt.Errorf("%w: instantiate module %s: %s; check the memory limit and the module's imports", ErrInstantiate, digest, FirstLine(err.Error()))
}

// CheckPreopen refuses, with ErrInstantiate, a preopen whose host path is
// not a directory.
func CheckPreopen(p Preopen) error {
	fi, err := os.Stat(p.HostPath)
	if err == nil && !fi.IsDir() {
		err = fmt.Errorf("%s is a file", p.HostPath)
	}
	if err != nil {
		return fmt.Errorf("%w: preopen %s at %s: host path is not a directory (%v); create it or fix the path", ErrInstantiate, p.HostPath, p.GuestPath, err)
	}
	return nil
}

// Environ is spec.Env in order, a later entry for a name replacing the
// value of the first.
func Environ(vars []EnvVar) []EnvVar {
	out := make([]EnvVar, 0, len(vars))
	if len(vars) <= smallEnviron {
		// No map: a handler's request has some thirty variables.
	next:
		for _, v := range vars {
			for j := range out {
				if out[j].Name == v.Name {
					out[j].Value = v.Value
					continue next
				}
			}
			out = append(out, v)
		}
		return out
	}
	idx := make(map[string]int, len(vars))
	for _, v := range vars {
		if j, ok := idx[v.Name]; ok {
			out[j].Value = v.Value
			continue
		}
		idx[v.Name] = len(out)
		out = append(out, v)
	}
	return out
}

// smallEnviron is the most variables Environ dedupes without a map.
const smallEnviron = 64
