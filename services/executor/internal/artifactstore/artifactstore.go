// Package artifactstore adapts the registry cache's precompiled store
// (regcache.PrecompiledStore, over gRPC through regcache/proxy) to the
// engine's engine.ArtifactStore, so that the engines share precompiled
// artifacts without knowing of gRPC or the registry cache. It owns only
// the translation of keys and errors; it must not check or interpret the
// bytes (the engine does, before it loads them).
//
//	store := artifactstore.New(proxy.New(regConn))
//	eng, err := wasmtime.New(wasmtime.Config{CacheDir: dir, Shared: store})
package artifactstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// Store implements engine.ArtifactStore over a regcache.PrecompiledStore.
type Store struct {
	pc regcache.PrecompiledStore
	// unsupported is set once the registry cache answered that it does
	// not store precompiled modules: later gets are misses without a call.
	unsupported atomic.Bool
}

var _ engine.ArtifactStore = (*Store)(nil)

// New returns a Store over pc.
func New(pc regcache.PrecompiledStore) *Store { return &Store{pc: pc} }

// errUnsupported: the registry cache serves no precompiled modules.
var errUnsupported = errors.New("the registry cache does not store precompiled modules (an older or a restricted one)")

// GetArtifact implements engine.ArtifactStore. regcache.ErrNotFound becomes
// engine.ErrArtifactNotFound, and a read whose bytes do not match the
// digest (regcache.ErrDigestMismatch) ends with engine.ErrArtifactCorrupt.
func (s *Store) GetArtifact(ctx context.Context, key engine.ArtifactKey) (io.ReadCloser, engine.ArtifactInfo, error) {
	if s.unsupported.Load() {
		return nil, engine.ArtifactInfo{}, fmt.Errorf("get precompiled %s: %w: %w", key.EngineKey, engine.ErrArtifactNotFound, errUnsupported)
	}
	rc, info, err := s.pc.GetPrecompiled(ctx, regcache.PrecompiledKey{ModuleDigest: key.ModuleDigest, EngineKey: key.EngineKey})
	switch {
	case errors.Is(err, regcache.ErrNotFound):
		return nil, engine.ArtifactInfo{}, fmt.Errorf("%w: %w", engine.ErrArtifactNotFound, err)
	case status.Code(err) == codes.Unimplemented:
		s.unsupported.Store(true)
		return nil, engine.ArtifactInfo{}, fmt.Errorf("get precompiled %s: %w: %w", key.EngineKey, engine.ErrArtifactNotFound, errUnsupported)
	case errors.Is(err, regcache.ErrDigestMismatch):
		return nil, engine.ArtifactInfo{}, fmt.Errorf("%w: %w", engine.ErrArtifactCorrupt, err)
	case err != nil:
		return nil, engine.ArtifactInfo{}, err
	}
	return reader{rc}, engine.ArtifactInfo{Digest: info.Digest, Size: info.Size}, nil
}

// PutArtifact implements engine.ArtifactStore.
func (s *Store) PutArtifact(ctx context.Context, key engine.ArtifactKey, info engine.ArtifactInfo, r io.Reader) error {
	if s.unsupported.Load() {
		return fmt.Errorf("put precompiled %s: %w", key.EngineKey, errUnsupported)
	}
	err := s.pc.PutPrecompiled(ctx, regcache.PrecompiledKey{ModuleDigest: key.ModuleDigest, EngineKey: key.EngineKey}, info.Digest, info.Size, r)
	if status.Code(err) == codes.Unimplemented {
		s.unsupported.Store(true)
		return fmt.Errorf("put precompiled %s: %w", key.EngineKey, errUnsupported)
	}
	return err
}

// reader turns regcache.ErrDigestMismatch at the end of a read into
// engine.ErrArtifactCorrupt.
type reader struct{ io.ReadCloser }

func (r reader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != nil && errors.Is(err, regcache.ErrDigestMismatch) {
		err = fmt.Errorf("%w: %w", engine.ErrArtifactCorrupt, err)
	}
	return n, err
}
