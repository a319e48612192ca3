package enginetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/artifactsign"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// NewSharingEngine returns a new engine keeping its artifacts under dir and
// sharing them through store.
type NewSharingEngine func(t testing.TB, dir string, store engine.ArtifactStore) engine.Engine

// MemoryStore is an engine.ArtifactStore in memory. It hands out what it
// holds as is, without checking it: the engine must.
type MemoryStore struct {
	mu      sync.Mutex
	entries map[engine.ArtifactKey]MemoryEntry
	// GetErr and PutErr, when set, fail every get or put.
	GetErr, PutErr error
}

// MemoryEntry is one stored artifact.
type MemoryEntry struct {
	Info  engine.ArtifactInfo
	Bytes []byte
}

var _ engine.ArtifactStore = (*MemoryStore)(nil)

// NewMemoryStore returns an empty store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{entries: map[engine.ArtifactKey]MemoryEntry{}}
}

// GetPrecompiled implements engine.ArtifactStore.
func (s *MemoryStore) GetPrecompiled(_ context.Context, key engine.ArtifactKey) (io.ReadCloser, engine.ArtifactInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.GetErr != nil {
		return nil, engine.ArtifactInfo{}, s.GetErr
	}
	e, ok := s.entries[key]
	if !ok {
		return nil, engine.ArtifactInfo{}, fmt.Errorf("%s %s: %w", key.ModuleDigest, key.EngineKey, engine.ErrArtifactNotFound)
	}
	return io.NopCloser(bytes.NewReader(e.Bytes)), e.Info, nil
}

// PutPrecompiled implements engine.ArtifactStore; it keeps what it is given
// only when it matches info, as the registry cache does.
func (s *MemoryStore) PutPrecompiled(_ context.Context, key engine.ArtifactKey, info engine.ArtifactInfo, r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.PutErr != nil {
		return s.PutErr
	}
	if int64(len(b)) != info.Size || sha(b) != info.Digest {
		return fmt.Errorf("put %s: %w", key.EngineKey, engine.ErrArtifactCorrupt)
	}
	s.entries[key] = MemoryEntry{Info: info, Bytes: b}
	return nil
}

// Keys lists the keys held.
func (s *MemoryStore) Keys() []engine.ArtifactKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ks []engine.ArtifactKey
	for k := range s.entries {
		ks = append(ks, k)
	}
	return ks
}

// Entry returns a copy of the entry for key.
func (s *MemoryStore) Entry(key engine.ArtifactKey) (MemoryEntry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	return MemoryEntry{Info: e.Info, Bytes: bytes.Clone(e.Bytes)}, ok
}

// Set stores e for key as is.
func (s *MemoryStore) Set(key engine.ArtifactKey, e MemoryEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries[key] = e
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// stats reads an engine's artifact counters.
func stats(t *testing.T, e engine.Engine) engine.ArtifactStats {
	t.Helper()
	r, ok := e.(engine.ArtifactReporter)
	if !ok {
		t.Fatalf("%T does not report artifact stats", e)
	}
	return r.ArtifactStats()
}

// waitEntry waits (at most 30 s) until the store holds one artifact for
// the module that is intact (so not bad), and returns it.
func waitEntry(t *testing.T, s *MemoryStore, module string) (engine.ArtifactKey, MemoryEntry) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		for _, k := range s.Keys() {
			if k.ModuleDigest != module {
				continue
			}
			e, _ := s.Entry(k)
			if sha(e.Bytes) == e.Info.Digest && int64(len(e.Bytes)) == e.Info.Size {
				return k, e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the engine put no intact artifact for %s to the store; it holds %v", module, s.Keys())
		}
	}
}

// RunShared checks sharing through an engine.ArtifactStore: the first
// engine compiles and puts; a second one with an empty directory loads the
// shared artifact without compiling; an entry whose bytes do not match
// what is stored with them (flipped bytes, a wrong size) or that the
// engine cannot load (intact garbage) is discarded, the module compiled and
// run, and the entry replaced; through an artifactsign.Store, an entry
// the key did not sign (a real artifact of another module) is refused, and
// a signed one loaded; a store that fails costs a compile, never the
// Prepare.
func RunShared(t *testing.T, newEngine NewSharingEngine) {
	wasm := wasmbuild.Wat(t, procExit(3))
	digest := digestOf(t, wasm)
	store := NewMemoryStore()
	prepareRun := func(t *testing.T, e engine.Engine) {
		t.Helper()
		m, err := e.Prepare(context.Background(), digest, wasm)
		if err != nil {
			t.Fatal(err)
		}
		if res := run(t, e, m, engine.Spec{}); !res.Exited || res.ExitCode != 3 {
			t.Fatalf("result %+v, want exit code 3", res)
		}
	}

	e1 := newEngine(t, t.TempDir(), store)
	prepareRun(t, e1)
	if st := stats(t, e1); st.Compiles != 1 || st.SharedMisses != 1 || st.SharedHits != 0 {
		t.Fatalf("first engine: %+v, want one miss and one compile", st)
	}
	key, good := waitEntry(t, store, digest)

	t.Run("SecondEngineDoesNotCompile", func(t *testing.T) {
		e2 := newEngine(t, t.TempDir(), store)
		prepareRun(t, e2)
		if st := stats(t, e2); st.Compiles != 0 || st.SharedHits != 1 || st.SharedCorrupt != 0 {
			t.Fatalf("second engine: %+v, want one shared hit and no compile", st)
		}
	})

	flipped := bytes.Clone(good.Bytes)
	for i := len(flipped) / 2; i < len(flipped)/2+64 && i < len(flipped); i++ {
		flipped[i] ^= 0xff
	}
	garbage := bytes.Repeat([]byte("not an artifact "), 64)
	for _, tc := range []struct {
		name     string
		entry    MemoryEntry
		rejected bool // intact, refused by the engine; else corrupt
	}{
		{"FlippedBytes", MemoryEntry{Info: good.Info, Bytes: flipped}, false},
		{"Truncated", MemoryEntry{Info: good.Info, Bytes: good.Bytes[:len(good.Bytes)-1]}, false},
		{"Longer", MemoryEntry{Info: good.Info, Bytes: append(bytes.Clone(good.Bytes), 0)}, false},
		{"WrongSizeStored", MemoryEntry{Info: engine.ArtifactInfo{Digest: good.Info.Digest, Size: good.Info.Size + 1}, Bytes: good.Bytes}, false},
		{"IntactGarbage", MemoryEntry{Info: engine.ArtifactInfo{Digest: sha(garbage), Size: int64(len(garbage))}, Bytes: garbage}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store.Set(key, tc.entry)
			e := newEngine(t, t.TempDir(), store)
			prepareRun(t, e)
			want := engine.ArtifactStats{Compiles: 1, SharedCorrupt: 1}
			if tc.rejected {
				want = engine.ArtifactStats{Compiles: 1, SharedRejected: 1}
			}
			if st := stats(t, e); st.Compiles != want.Compiles || st.SharedCorrupt != want.SharedCorrupt || st.SharedRejected != want.SharedRejected || st.SharedHits != 0 {
				t.Fatalf("engine given a bad entry: %+v, want %+v (and puts)", st, want)
			}
			// Every bad entry is not intact, or (IntactGarbage) not an
			// artifact this engine made: replaced means intact and not it.
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				now, _ := store.Entry(key)
				if sha(now.Bytes) == now.Info.Digest && int64(len(now.Bytes)) == now.Info.Size && !bytes.Equal(now.Bytes, garbage) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the bad entry was not replaced: %+v", now.Info)
				}
			}
		})
	}

	t.Run("StoreFails", func(t *testing.T) {
		failing := NewMemoryStore()
		failing.GetErr = errors.New("registry cache unreachable")
		failing.PutErr = errors.New("registry cache unreachable")
		e := newEngine(t, t.TempDir(), failing)
		prepareRun(t, e)
		for deadline := time.Now().Add(30 * time.Second); stats(t, e).SharedPutErrors == 0; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the failed put was not counted")
			}
		}
		if st := stats(t, e); st.SharedErrors != 1 || st.Compiles != 1 || st.SharedPuts != 0 || len(failing.Keys()) != 0 {
			t.Fatalf("engine with a failing store: %+v", st)
		}
	})

	t.Run("Signed", func(t *testing.T) {
		// As an executor shares: through an artifactsign.Store. A real
		// artifact of another module (exit code 7), put unsigned under
		// this module's key as any client of the registry cache can, is
		// refused before the engine sees it; the engine compiles, runs this
		// module, and puts a signed artifact in its place, which the next
		// engine with the key loads without compiling.
		mem := NewMemoryStore()
		signed, err := artifactsign.New(mem, bytes.Repeat([]byte{0x5a}, artifactsign.MinKeyBytes))
		if err != nil {
			t.Fatal(err)
		}
		otherWasm := wasmbuild.Wat(t, procExit(7))
		plain := NewMemoryStore()
		if _, err := newEngine(t, t.TempDir(), plain).Prepare(context.Background(), digestOf(t, otherWasm), otherWasm); err != nil {
			t.Fatal(err)
		}
		_, forged := waitEntry(t, plain, digestOf(t, otherWasm))
		mem.Set(key, forged)

		e := newEngine(t, t.TempDir(), signed)
		prepareRun(t, e)
		if st := stats(t, e); st.SharedRefused != 1 || st.Compiles != 1 || st.SharedHits != 0 {
			t.Fatalf("engine given a forged artifact: %+v, want it refused and the module compiled", st)
		}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			rc, _, err := signed.GetPrecompiled(context.Background(), key)
			if err == nil {
				rc.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the forged entry was not replaced by a signed one: %v", err)
			}
		}
		e2 := newEngine(t, t.TempDir(), signed)
		prepareRun(t, e2)
		if st := stats(t, e2); st.SharedHits != 1 || st.Compiles != 0 || st.SharedRefused != 0 {
			t.Fatalf("engine given a signed artifact: %+v, want it loaded without a compile", st)
		}
	})

	t.Run("OtherEngineKey", func(t *testing.T) {
		// What is stored under another key is never looked at.
		other := NewMemoryStore()
		other.Set(engine.ArtifactKey{ModuleDigest: digest, EngineKey: key.EngineKey + "-other"}, good)
		e := newEngine(t, t.TempDir(), other)
		prepareRun(t, e)
		if st := stats(t, e); st.SharedMisses != 1 || st.Compiles != 1 {
			t.Fatalf("engine with only another key's artifact: %+v", st)
		}
	})
}
