package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// The artifact vocabulary is the registry cache's (package regcache): one
// key, one description, one store interface and one set of errors, so that
// a precompiled artifact is named the same way by the engine that makes
// it, the executor that shares it and the cache that keeps it, and the
// registry cache's client (regcache/proxy) is an ArtifactStore with
// nothing translated beyond the gRPC boundary. These are their names here.
type (
	// ArtifactKey names a precompiled artifact: the digest of the Wasm
	// module it was compiled from and the engine key (see EngineKey) of the
	// engine that compiled it.
	ArtifactKey = regcache.PrecompiledKey
	// ArtifactInfo is what is stored with an artifact: the sha256 digest
	// ("sha256:<hex>") and size of its bytes.
	ArtifactInfo = regcache.Precompiled
	// ArtifactStore shares precompiled artifacts between executors, so
	// that an executor that finds none on its own disk loads what another
	// executor of the same engine key compiled instead of compiling. The
	// engine checks the bytes' size and sha256 against the ArtifactInfo
	// before it loads them; who made them it cannot tell: the store an
	// executor gives its engine must vouch for that (artifactsign.Store,
	// which refuses what was not signed with the flavour's key, with
	// ErrArtifactUnverified), since any client of the registry cache can
	// put an artifact there.
	ArtifactStore = regcache.PrecompiledStore
)

// Errors of an ArtifactStore.
var (
	// ErrArtifactNotFound: the store holds no artifact for the key.
	ErrArtifactNotFound = regcache.ErrNotFound
	// ErrArtifactCorrupt: an artifact's bytes do not match its digest or size.
	ErrArtifactCorrupt = regcache.ErrDigestMismatch
	// ErrArtifactUnverified: the store holds an artifact for the key that
	// no holder of this executor's artifact key made (unsigned, signed with
	// another key, or for another module or engine key): it must not be
	// loaded.
	ErrArtifactUnverified = errors.New("precompiled artifact not signed with this executor's artifact key")
)

// ArtifactStats counts how an engine came by its precompiled artifacts,
// since it started.
type ArtifactStats struct {
	// Compiles: compiles by this engine (a module that fails to compile
	// counts too: it cost the same).
	Compiles uint64
	// SharedHits: artifacts taken from the ArtifactStore, verified and
	// loadable; SharedMisses: the store had none for the key.
	SharedHits, SharedMisses uint64
	// SharedCorrupt: artifacts from the store whose bytes did not match the
	// digest or size stored with them, found before the engine saw them;
	// SharedRefused: ones that no holder of the artifact key made
	// (ErrArtifactUnverified), refused before a byte reached the engine;
	// SharedRejected: intact ones the engine refused to load. Each was
	// discarded, the module compiled and the store's entry replaced.
	SharedCorrupt, SharedRefused, SharedRejected uint64
	// SharedErrors: gets that failed otherwise (the store unreachable, the
	// local disk full).
	SharedErrors uint64
	// SharedPuts and SharedPutErrors: artifacts put to the store after a
	// compile, and puts that failed (logged; they never fail a Prepare).
	SharedPuts, SharedPutErrors uint64
}

// ArtifactReporter is implemented by engines that count how they came by
// their artifacts (both do); the executor's metrics read it.
type ArtifactReporter interface {
	ArtifactStats() ArtifactStats
}

// Artifacts is the part of artifact handling both engines share: the
// compile counters, and the optional ArtifactStore with the verification
// of what comes from it and the background puts to it. Safe for
// concurrent use; a nil store only counts compiles.
type Artifacts struct {
	store ArtifactStore
	log   *slog.Logger

	compiles, hits, misses, corrupt, refused, rejected, errs, puts, putErrs atomic.Uint64
	pending                                                                 sync.WaitGroup
}

// PutTimeout bounds one background put of an artifact to the store.
const PutTimeout = 2 * time.Minute

// NewArtifacts returns the artifact handling over store (nil: none
// shared), logging to log (nil: discarded).
func NewArtifacts(store ArtifactStore, log *slog.Logger) *Artifacts {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Artifacts{store: store, log: log}
}

// Shared reports whether there is a store to share artifacts through.
func (a *Artifacts) Shared() bool { return a.store != nil }

// Stats returns the counters.
func (a *Artifacts) Stats() ArtifactStats {
	return ArtifactStats{
		Compiles: a.compiles.Load(), SharedHits: a.hits.Load(), SharedMisses: a.misses.Load(),
		SharedCorrupt: a.corrupt.Load(), SharedRefused: a.refused.Load(), SharedRejected: a.rejected.Load(), SharedErrors: a.errs.Load(),
		SharedPuts: a.puts.Load(), SharedPutErrors: a.putErrs.Load(),
	}
}

// Compiled counts a compile.
func (a *Artifacts) Compiled() { a.compiles.Add(1) }

// Hit counts an artifact from the store that the engine loaded.
func (a *Artifacts) Hit() { a.hits.Add(1) }

// Rejected counts an artifact from the store that was intact but that the
// engine refused to load (a header for another engine build): the engine
// discards it and compiles, and its put replaces the entry.
func (a *Artifacts) Rejected(ctx context.Context, key ArtifactKey, err error) {
	a.rejected.Add(1)
	a.log.WarnContext(ctx, "shared precompiled artifact refused by the engine; compiling", "module", key.ModuleDigest, "engine_key", key.EngineKey, "error", err)
}

// LocalError counts an intact artifact from the store that could not be
// installed on the local disk: the caller compiles.
func (a *Artifacts) LocalError(ctx context.Context, key ArtifactKey, err error) {
	a.errs.Add(1)
	a.log.WarnContext(ctx, "install shared precompiled artifact failed; compiling", "module", key.ModuleDigest, "engine_key", key.EngineKey, "error", err)
}

// Fetch gets the artifact for key from the store into a new file in dir
// and returns its path and sha256 (hex), or ok false when there is no
// store, it holds none, or what it holds is not intact or not vouched for
// (ErrArtifactUnverified) (counted and logged: the caller compiles, and
// its Put replaces the entry; the compile leaves an artifact on the local
// disk, so an executor replaces an entry at most once per module and
// process, and two that disagree cannot keep replacing each other's). The
// bytes are checked against the size and digest stored with them before
// Fetch returns; a file that fails is removed. The caller renames or
// removes the file.
func (a *Artifacts) Fetch(ctx context.Context, key ArtifactKey, dir string) (path, sumHex string, ok bool) {
	if a.store == nil {
		return "", "", false
	}
	rc, info, err := a.store.GetPrecompiled(ctx, key)
	switch {
	case errors.Is(err, ErrArtifactNotFound):
		a.misses.Add(1)
		return "", "", false
	case errors.Is(err, ErrArtifactUnverified):
		a.refuse(ctx, key, err)
		return "", "", false
	case errors.Is(err, ErrArtifactCorrupt):
		a.corrupt.Add(1)
		a.log.WarnContext(ctx, "shared precompiled artifact is corrupt; discarded, compiling", "module", key.ModuleDigest, "engine_key", key.EngineKey, "error", err)
		return "", "", false
	case err != nil:
		a.errs.Add(1)
		a.log.WarnContext(ctx, "get shared precompiled artifact failed; compiling", "module", key.ModuleDigest, "engine_key", key.EngineKey, "error", err)
		return "", "", false
	}
	defer rc.Close()
	path, sumHex, err = receive(rc, info, dir)
	switch {
	case errors.Is(err, ErrArtifactCorrupt):
		a.corrupt.Add(1)
		a.log.WarnContext(ctx, "shared precompiled artifact is corrupt; discarded, compiling", "module", key.ModuleDigest, "engine_key", key.EngineKey, "error", err)
		return "", "", false
	case errors.Is(err, ErrArtifactUnverified):
		a.refuse(ctx, key, err)
		return "", "", false
	case err != nil:
		a.errs.Add(1)
		a.log.WarnContext(ctx, "get shared precompiled artifact failed; compiling", "module", key.ModuleDigest, "engine_key", key.EngineKey, "error", err)
		return "", "", false
	}
	return path, sumHex, true
}

// refuse counts and logs an artifact that must not be loaded.
func (a *Artifacts) refuse(ctx context.Context, key ArtifactKey, err error) {
	a.refused.Add(1)
	a.log.WarnContext(ctx, "shared precompiled artifact refused: not signed with this executor's artifact key; compiling", "module", key.ModuleDigest, "engine_key", key.EngineKey, "error", err)
}

// receive copies r into a temporary file in dir, checking it against info.
func receive(r io.Reader, info ArtifactInfo, dir string) (string, string, error) {
	want, ok := strings.CutPrefix(info.Digest, "sha256:")
	if !ok || len(want) != 64 || info.Size < 0 {
		return "", "", fmt.Errorf("%w: stored with digest %q and size %d", ErrArtifactCorrupt, info.Digest, info.Size)
	}
	f, err := os.CreateTemp(dir, "shared-*.tmp")
	if err != nil {
		return "", "", fmt.Errorf("receive artifact: %w", err)
	}
	fail := func(err error) (string, string, error) {
		f.Close()
		os.Remove(f.Name())
		return "", "", err
	}
	h := sha256.New()
	// One byte past the size shows an artifact longer than it says.
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, info.Size+1))
	if err != nil {
		if errors.Is(err, ErrArtifactCorrupt) {
			return fail(err)
		}
		return fail(fmt.Errorf("receive artifact: %w", err))
	}
	if n != info.Size {
		return fail(fmt.Errorf("%w: %d bytes, stored as %d", ErrArtifactCorrupt, n, info.Size))
	}
	got := hex.EncodeToString(h.Sum(nil))
	if got != want {
		return fail(fmt.Errorf("%w: sha256 %s, stored as %s", ErrArtifactCorrupt, got, want))
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", "", fmt.Errorf("receive artifact: %w", err)
	}
	return f.Name(), got, nil
}

// Put stores b, whose sha256 is sumHex, as the artifact for key in the
// background (best effort: a failure is logged and counted). No-op
// without a store. b must not be modified afterwards.
func (a *Artifacts) Put(key ArtifactKey, b []byte, sumHex string) {
	if a.store == nil {
		return
	}
	a.pending.Add(1)
	go func() {
		defer a.pending.Done()
		ctx, cancel := context.WithTimeout(context.Background(), PutTimeout)
		defer cancel()
		info := ArtifactInfo{Digest: "sha256:" + sumHex, Size: int64(len(b))}
		start := time.Now()
		if err := a.store.PutPrecompiled(ctx, key, info, bytes.NewReader(b)); err != nil {
			a.putErrs.Add(1)
			a.log.Warn("put shared precompiled artifact failed; other executors will compile it", "module", key.ModuleDigest, "engine_key", key.EngineKey, "error", err)
			return
		}
		a.puts.Add(1)
		a.log.Info("put shared precompiled artifact", "module", key.ModuleDigest, "engine_key", key.EngineKey, "size", len(b), "duration", time.Since(start))
	}()
}

// Wait blocks until the background puts started so far have ended.
func (a *Artifacts) Wait() { a.pending.Wait() }

// Install renames a fetched artifact to path and records sumHex in
// path+".sha256", the sidecar the engines check local artifacts with; the
// sidecar is written first, so a crash between the two leaves an artifact
// that fails its check, never an unchecked one.
func Install(tmp, path, sumHex string) error {
	if err := WriteAtomic(path+".sha256", []byte(sumHex+"\n")); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// WriteAtomic writes b to path through a temporary file and a rename.
func WriteAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// HashFile returns the sha256 (hex) of the file at path and its FileInfo,
// taken from the descriptor it read.
func HashFile(path string) (string, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", nil, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", nil, err
	}
	return hex.EncodeToString(h.Sum(nil)), fi, nil
}

// VerifyFile compares the sha256 of the file at path with the one in
// sumPath (its sidecar, as Install writes it): engines run no compiled
// code they have not checked, since a runtime checks an artifact's header
// at most, and corrupt code could do anything.
func VerifyFile(path, sumPath string) error {
	want, err := os.ReadFile(sumPath)
	if err != nil {
		return err
	}
	got, _, err := HashFile(path)
	if err != nil {
		return err
	}
	if got != string(bytes.TrimSpace(want)) {
		return fmt.Errorf("%w: %s: sha256 %s, %s says %s", ErrArtifactCorrupt, path, got, filepath.Base(sumPath), bytes.TrimSpace(want))
	}
	return nil
}

// FileStamp is how an engine tells that a file it verified has changed
// since: its size and modification time. A changed file is hashed again
// before it is used.
type FileStamp struct {
	Size    int64
	ModTime time.Time
}

// StampOf is fi's stamp.
func StampOf(fi os.FileInfo) FileStamp { return FileStamp{fi.Size(), fi.ModTime()} }

// Equal reports whether two stamps are of the same file contents, as far
// as a stamp can tell.
func (s FileStamp) Equal(o FileStamp) bool { return s.Size == o.Size && s.ModTime.Equal(o.ModTime) }
