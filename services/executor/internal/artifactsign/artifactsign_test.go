package artifactsign_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wasmlet/wasmlet/services/executor/internal/artifactsign"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

func info(b []byte) engine.ArtifactInfo {
	s := sha256.Sum256(b)
	return engine.ArtifactInfo{Digest: "sha256:" + hex.EncodeToString(s[:]), Size: int64(len(b))}
}

func newStore(t *testing.T, next engine.ArtifactStore, key string) *artifactsign.Store {
	t.Helper()
	s, err := artifactsign.New(next, []byte(strings.Repeat(key, 32)[:32]))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func get(t *testing.T, s engine.ArtifactStore, key engine.ArtifactKey) ([]byte, engine.ArtifactInfo, error) {
	t.Helper()
	rc, inf, err := s.GetPrecompiled(context.Background(), key)
	if err != nil {
		return nil, inf, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b, inf, nil
}

// TestSignedRoundTrip: what a Store puts, a Store with the same key gets
// back as it was put, with its own size and digest; the entry in the next
// store is the artifact behind a header.
func TestSignedRoundTrip(t *testing.T) {
	mem := enginetest.NewMemoryStore()
	a, b := newStore(t, mem, "k"), newStore(t, mem, "k")
	key := engine.ArtifactKey{ModuleDigest: "sha256:" + strings.Repeat("a", 64), EngineKey: "wasmtime-39.0.1-x"}
	art := bytes.Repeat([]byte("native code "), 1000)
	if err := a.PutPrecompiled(context.Background(), key, info(art), bytes.NewReader(art)); err != nil {
		t.Fatal(err)
	}
	got, inf, err := get(t, b, key)
	if err != nil {
		t.Fatalf("get of a signed artifact: %v", err)
	}
	if !bytes.Equal(got, art) || inf != info(art) {
		t.Fatalf("got %d bytes with %+v, want the %d put with %+v", len(got), inf, len(art), info(art))
	}
	e, _ := mem.Entry(key)
	if len(e.Bytes) != len(art)+artifactsign.HeaderSize || !bytes.Equal(e.Bytes[artifactsign.HeaderSize:], art) {
		t.Fatalf("the next store holds %d bytes, want a %d-byte header and the artifact", len(e.Bytes), artifactsign.HeaderSize)
	}
	// Not a seeker: read into memory, same entry.
	if err := a.PutPrecompiled(context.Background(), key, info(art), io.MultiReader(bytes.NewReader(art))); err != nil {
		t.Fatal(err)
	}
	if e2, _ := mem.Entry(key); !bytes.Equal(e2.Bytes, e.Bytes) {
		t.Fatal("a put from a plain reader differs from one from a bytes.Reader")
	}
	// Bytes that do not match what the caller says they are are not signed.
	if err := a.PutPrecompiled(context.Background(), key, info(art), bytes.NewReader(art[1:])); !errors.Is(err, engine.ErrArtifactCorrupt) {
		t.Fatalf("put of bytes that do not match their info: %v, want ErrArtifactCorrupt", err)
	}
}

// TestRefused: every entry the key did not sign for this module and engine
// is refused with ErrArtifactUnverified before a byte of it is handed on;
// an entry signed and then changed is corrupt. Through engine.Artifacts,
// each is counted and none is installed.
func TestRefused(t *testing.T) {
	mem := enginetest.NewMemoryStore()
	ours, theirs := newStore(t, mem, "k"), newStore(t, mem, "other")
	key := engine.ArtifactKey{ModuleDigest: "sha256:" + strings.Repeat("a", 64), EngineKey: "wasmtime-39.0.1-x"}
	otherModule := engine.ArtifactKey{ModuleDigest: "sha256:" + strings.Repeat("b", 64), EngineKey: key.EngineKey}
	otherEngine := engine.ArtifactKey{ModuleDigest: key.ModuleDigest, EngineKey: "wasmtime-39.0.2-x"}
	art := bytes.Repeat([]byte("native code "), 1000)
	put := func(s engine.ArtifactStore, k engine.ArtifactKey) []byte {
		t.Helper()
		if err := s.PutPrecompiled(context.Background(), k, info(art), bytes.NewReader(art)); err != nil {
			t.Fatal(err)
		}
		e, _ := mem.Entry(k)
		return e.Bytes
	}
	signed := put(ours, key)
	signedOther := put(theirs, key)
	signedForModule := put(ours, otherModule)
	signedForEngine := put(ours, otherEngine)
	flip := func(b []byte, i int) []byte { b = bytes.Clone(b); b[i] ^= 1; return b }
	for _, tc := range []struct {
		name    string
		entry   []byte
		corrupt bool // else unverified
		why     string
	}{
		{"Unsigned", art, false, "not signed"},
		{"Empty", nil, false, "too short"},
		{"ShortUnsigned", []byte("\x7fELF"), false, "too short"},
		{"AnotherKey", signedOther, false, "another key"},
		{"AnotherModulesEntry", signedForModule, false, "does not match"},
		{"AnotherEnginesEntry", signedForEngine, false, "does not match"},
		{"MACFlipped", flip(signed, artifactsign.HeaderSize-1), false, "does not match"},
		{"SizeFlipped", flip(signed, 16+8+7), false, "does not match"},
		{"DigestFlipped", flip(signed, 16+8+8), false, "does not match"},
		{"ArtifactFlipped", flip(signed, len(signed)-10), true, "sha256"},
		{"Truncated", signed[:len(signed)-1], true, "stored as"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem.Set(key, enginetest.MemoryEntry{Info: info(tc.entry), Bytes: tc.entry})
			b, _, err := get(t, ours, key)
			switch {
			case tc.corrupt && tc.name == "ArtifactFlipped":
				// Caught by the digest check of what is handed on (Fetch).
				if err != nil || bytes.Equal(b, art) {
					t.Fatalf("get: %v", err)
				}
			case tc.corrupt && !errors.Is(err, engine.ErrArtifactCorrupt):
				t.Fatalf("get: %v, want ErrArtifactCorrupt", err)
			case !tc.corrupt && (!errors.Is(err, engine.ErrArtifactUnverified) || !strings.Contains(err.Error(), tc.why)):
				t.Fatalf("get: %v, want ErrArtifactUnverified saying %q", err, tc.why)
			}
			a := engine.NewArtifacts(ours, nil)
			dir := t.TempDir()
			if path, _, ok := a.Fetch(context.Background(), key, dir); ok {
				t.Fatalf("Fetch installed %s", path)
			}
			st := a.Stats()
			if tc.corrupt && (st.SharedCorrupt != 1 || st.SharedRefused != 0) || !tc.corrupt && (st.SharedRefused != 1 || st.SharedCorrupt != 0) {
				t.Fatalf("counted %+v", st)
			}
			if es, _ := os.ReadDir(dir); len(es) != 0 {
				t.Fatalf("Fetch left %v", es)
			}
		})
	}
	mem.Set(key, enginetest.MemoryEntry{Info: info(signed), Bytes: signed})
	a := engine.NewArtifacts(ours, nil)
	path, _, ok := a.Fetch(context.Background(), key, t.TempDir())
	if !ok {
		t.Fatalf("Fetch of the signed entry failed: %+v", a.Stats())
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, art) {
		t.Fatal("Fetch of the signed entry installed other bytes")
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state", "artifact.key")
	key, created, err := artifactsign.LoadKey(path)
	if err != nil || !created || len(key) != artifactsign.MinKeyBytes {
		t.Fatalf("LoadKey of a missing file: %d bytes, created %v, %v", len(key), created, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("created key file: %v, %v; want mode 0600", fi.Mode(), err)
	}
	again, created, err := artifactsign.LoadKey(path)
	if err != nil || created || !bytes.Equal(again, key) {
		t.Fatalf("LoadKey again: created %v, %v, same %v", created, err, bytes.Equal(again, key))
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if k, _, err := artifactsign.LoadKey(link); err != nil || !bytes.Equal(k, key) {
		t.Fatalf("LoadKey through a symlink: %v", err)
	}
	for _, tc := range []struct {
		name    string
		content []byte
		mode    os.FileMode
		want    string
	}{
		{"ReadableByOthers", key, 0o644, "chmod 600"},
		{"GroupReadable", key, 0o640, "chmod 600"},
		{"Short", key[:16], 0o600, "want 32 to 4096"},
		{"Empty", nil, 0o400, "want 32 to 4096"},
	} {
		p := filepath.Join(dir, tc.name)
		if err := os.WriteFile(p, tc.content, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, tc.mode); err != nil {
			t.Fatal(err)
		}
		if _, _, err := artifactsign.LoadKey(p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	if _, _, err := artifactsign.LoadKey(dir); err == nil {
		t.Error("a directory was taken as a key")
	}
	if _, err := artifactsign.New(enginetest.NewMemoryStore(), key[:31]); err == nil {
		t.Error("New took a 31-byte key")
	}
}

// BenchmarkSigned: what signing adds to a put and a get of a 16 MiB
// artifact (a Go-built module's is about that), against the same store
// unsigned.
func BenchmarkSigned(b *testing.B) {
	art := bytes.Repeat([]byte("native code 0123"), 1<<20)
	key := engine.ArtifactKey{ModuleDigest: "sha256:" + strings.Repeat("a", 64), EngineKey: "wasmtime-39.0.1-x"}
	mem := enginetest.NewMemoryStore()
	signed, err := artifactsign.New(mem, bytes.Repeat([]byte{1}, artifactsign.MinKeyBytes))
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range []struct {
		name  string
		store engine.ArtifactStore
	}{{"Unsigned", mem}, {"Signed", signed}} {
		b.Run(s.name+"/Put", func(b *testing.B) {
			b.SetBytes(int64(len(art)))
			for range b.N {
				if err := s.store.PutPrecompiled(context.Background(), key, info(art), bytes.NewReader(art)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(s.name+"/Fetch", func(b *testing.B) {
			if err := s.store.PutPrecompiled(context.Background(), key, info(art), bytes.NewReader(art)); err != nil {
				b.Fatal(err)
			}
			a := engine.NewArtifacts(s.store, nil)
			dir := b.TempDir()
			b.SetBytes(int64(len(art)))
			for range b.N {
				path, _, ok := a.Fetch(context.Background(), key, dir)
				if !ok {
					b.Fatalf("fetch failed: %+v", a.Stats())
				}
				os.Remove(path)
			}
		})
	}
}
