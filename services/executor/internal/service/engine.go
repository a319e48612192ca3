package service

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/wasmlet/wasmlet/services/executor/internal/artifactsign"
	"github.com/wasmlet/wasmlet/services/executor/internal/cpulimit"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// cpuLimits is how instances' CPU limits are enforced: by limiter, or not
// at all when it is nil; words says which, for GetInfo.
type cpuLimits struct {
	limiter engine.ThreadLimiter
	words   string
}

// newCPULimits enforces CPU limits in cgroup (see internal/cpulimit), or,
// with none, says they are not enforced.
func newCPULimits(cgroup string, log *slog.Logger) (cpuLimits, error) {
	if cgroup == "" {
		log.Warn("CPU limits are not enforced: no --cpu-cgroup")
		return cpuLimits{words: "not enforced: the executor has no --cpu-cgroup"}, nil
	}
	l, err := cpulimit.New(cgroup)
	if err != nil {
		return cpuLimits{}, err
	}
	return cpuLimits{limiter: l, words: fmt.Sprintf("CFS bandwidth control in cgroup %s (--cpu-cgroup), per instance thread", cgroup)}, nil
}

// newEngine makes the engine cfg names; it keeps its artifacts in a
// subdirectory of StateDir/compiled named for its version and, with
// SharePrecompiled, shares them through the registry cache's store pc
// (an engine.ArtifactStore as it is: the two speak one vocabulary).
func newEngine(cfg Config, cpu engine.ThreadLimiter, pc regcache.PrecompiledStore, log *slog.Logger) (engine.Engine, error) {
	var shared engine.ArtifactStore
	if cfg.SharePrecompiled {
		var err error
		if shared, err = newArtifactStore(cfg, pc, log); err != nil {
			return nil, err
		}
	}
	b := engineBase{dir: filepath.Join(cfg.StateDir, "compiled"), cpu: cpu, shared: shared, log: log}
	if cfg.Engine == "wazero" {
		return newWazero(cfg, b)
	}
	return newWasmtime(cfg, b)
}

// newArtifactStore is the registry cache's store of precompiled modules,
// with what is put there signed and what is got from it verified with the
// key of ArtifactKeyFile (default StateDir/artifact.key, created when
// missing).
func newArtifactStore(cfg Config, pc regcache.PrecompiledStore, log *slog.Logger) (*artifactsign.Store, error) {
	path := cfg.ArtifactKeyFile
	if path == "" {
		path = filepath.Join(cfg.StateDir, "artifact.key")
	}
	key, created, err := artifactsign.LoadKey(path)
	if err != nil {
		return nil, fmt.Errorf("%w (or run with --share-precompiled=false)", err)
	}
	s, err := artifactsign.New(pc, key)
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created an artifact key: executors that should share precompiled modules with this one need the same --artifact-key-file", "file", path, "key_id", s.KeyID())
	}
	return s, nil
}

// waitShared gives the engine's background puts of precompiled artifacts
// to the registry cache until ctx ends to finish, so that what this
// executor compiled just before it stopped is not lost to the others.
func waitShared(ctx context.Context, eng engine.Engine, log *slog.Logger) {
	w, ok := eng.(interface{ WaitShared() })
	if !ok {
		return
	}
	done := make(chan struct{})
	go func() { w.WaitShared(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		log.Warn("stopping with precompiled artifacts not yet put to the registry cache; other executors will compile them")
	}
}
