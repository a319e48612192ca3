// Package artifactsign makes an executor load only the precompiled
// artifacts that it, or another executor given the same key, made: an
// artifact is native code, and the registry cache that shares them takes
// one from any client. A Store wraps the shared engine.ArtifactStore,
// signs what it puts and refuses what it gets unless signed with the key
// (engine.ErrArtifactUnverified; changed bytes: engine.ErrArtifactCorrupt);
// either way the engine compiles.
//
// It owns the key file (LoadKey) and the signature header (see sign); it
// must not interpret the artifact's bytes (the engines do). HMAC and not a
// public-key signature: every executor that verifies also signs, so one
// secret per flavour is the whole configuration.
//
// Usage:
//
//	key, created, err := artifactsign.LoadKey(filepath.Join(stateDir, "artifact.key"))
//	store, err := artifactsign.New(proxy.New(conn), key) // the registry cache's store
//	eng, err := wasmtime.New(wasmtime.Config{CacheDir: dir, Shared: store})
package artifactsign

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// Sizes of a key file, in bytes.
const (
	MinKeyBytes = 32
	MaxKeyBytes = 4096
)

// The header before a signed artifact's bytes: magic, key id, the
// artifact's size (big-endian) and sha256, and the MAC.
const (
	magic      = "wasmlet-signed1\n"
	idLen      = 8
	headerSize = len(magic) + idLen + 8 + sha256.Size + sha256.Size
)

// HeaderSize is how many bytes a signature adds to an artifact.
const HeaderSize = headerSize

// Store is an engine.ArtifactStore that signs the artifacts it puts to
// another store and refuses (engine.ErrArtifactUnverified) the ones it
// gets that the key did not sign. Safe for concurrent use.
type Store struct {
	next engine.ArtifactStore
	key  []byte
	id   [idLen]byte
}

var _ engine.ArtifactStore = (*Store)(nil)

// New returns a Store over next, signing with key (at least MinKeyBytes).
func New(next engine.ArtifactStore, key []byte) (*Store, error) {
	if len(key) < MinKeyBytes {
		return nil, fmt.Errorf("artifact key of %d bytes: want at least %d", len(key), MinKeyBytes)
	}
	s := &Store{next: next, key: bytes.Clone(key)}
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("wasmlet artifact key id"))
	copy(s.id[:], m.Sum(nil))
	return s, nil
}

// KeyID names the key in logs and refusals, without revealing it.
func (s *Store) KeyID() string { return hex.EncodeToString(s.id[:]) }

// mac is the signature of an artifact of size bytes with sha256 sum,
// compiled from key.ModuleDigest by the engine of key.EngineKey. Each
// field is length-prefixed, so no two field lists sign the same bytes.
// mac signs the module digest, the engine key (engine, version, settings,
// GOARCH, CPU features: engine.EngineKey) and the artifact's size and
// sha256. It travels in a header before the bytes, checked before a byte
// of the artifact is read; the signed size and digest are what
// engine.Artifacts.Fetch then checks the bytes against.
func (s *Store) mac(key engine.ArtifactKey, size int64, sum []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		m.Write(n[:])
		m.Write(b)
	}
	field([]byte("wasmlet precompiled artifact v1"))
	field([]byte(key.ModuleDigest))
	field([]byte(key.EngineKey))
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(size))
	field(n[:])
	field(sum)
	return m.Sum(nil)
}

func (s *Store) header(key engine.ArtifactKey, size int64, sum []byte) []byte {
	h := make([]byte, 0, headerSize)
	h = append(h, magic...)
	h = append(h, s.id[:]...)
	h = binary.BigEndian.AppendUint64(h, uint64(size))
	h = append(h, sum...)
	return append(h, s.mac(key, size, sum)...)
}

// GetPrecompiled implements engine.ArtifactStore: it reads the header of the
// stored entry and returns the artifact after it, with the signed size and
// digest, or an error wrapping engine.ErrArtifactUnverified when the key
// did not sign it for key.
func (s *Store) GetPrecompiled(ctx context.Context, key engine.ArtifactKey) (io.ReadCloser, engine.ArtifactInfo, error) {
	rc, info, err := s.next.GetPrecompiled(ctx, key)
	if err != nil {
		return nil, engine.ArtifactInfo{}, err
	}
	size, sum, err := s.open(rc, info, key)
	if err != nil {
		rc.Close()
		return nil, engine.ArtifactInfo{}, err
	}
	return rc, engine.ArtifactInfo{Digest: "sha256:" + hex.EncodeToString(sum), Size: size}, nil
}

// open reads and checks the header at the start of r.
func (s *Store) open(r io.Reader, info engine.ArtifactInfo, key engine.ArtifactKey) (int64, []byte, error) {
	unverified := func(format string, args ...any) (int64, []byte, error) {
		return 0, nil, fmt.Errorf("%w: %s %s: %s", engine.ErrArtifactUnverified, key.ModuleDigest, key.EngineKey, fmt.Sprintf(format, args...))
	}
	if info.Size < int64(headerSize) {
		return unverified("%d bytes, too short to carry a signature (put by a client without the artifact key)", info.Size)
	}
	h := make([]byte, headerSize)
	if _, err := io.ReadFull(r, h); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("%w: %s %s: ended within the signature header", engine.ErrArtifactCorrupt, key.ModuleDigest, key.EngineKey)
		}
		return 0, nil, fmt.Errorf("read signature header: %w", err)
	}
	rest, ok := bytes.CutPrefix(h, []byte(magic))
	if !ok {
		return unverified("not signed (put by a client without the artifact key)")
	}
	id, rest := rest[:idLen], rest[idLen:]
	size, rest := int64(binary.BigEndian.Uint64(rest[:8])), rest[8:]
	sum, mac := rest[:sha256.Size], rest[sha256.Size:]
	if !bytes.Equal(id, s.id[:]) {
		return unverified("signed with another key (key id %x; this executor's is %s): executors that share artifacts must be given the same --artifact-key-file", id, s.KeyID())
	}
	if size < 0 || !hmac.Equal(mac, s.mac(key, size, sum)) {
		return unverified("the signature does not match (forged, or signed for another module or engine)")
	}
	if info.Size-int64(headerSize) != size {
		return 0, nil, fmt.Errorf("%w: %s %s: stored as %d bytes, signed for %d and a %d-byte header", engine.ErrArtifactCorrupt, key.ModuleDigest, key.EngineKey, info.Size, size, headerSize)
	}
	return size, sum, nil
}

// PutPrecompiled implements engine.ArtifactStore: it puts the header and r's
// info.Size bytes, which must match info.Digest, to the next store.
func (s *Store) PutPrecompiled(ctx context.Context, key engine.ArtifactKey, info engine.ArtifactInfo, r io.Reader) error {
	want, err := hex.DecodeString(strings.TrimPrefix(info.Digest, "sha256:"))
	if err != nil || len(want) != sha256.Size || !strings.HasPrefix(info.Digest, "sha256:") || info.Size < 0 {
		return fmt.Errorf("sign artifact %s %s: digest %q, size %d: %w", key.ModuleDigest, key.EngineKey, info.Digest, info.Size, engine.ErrArtifactCorrupt)
	}
	h := s.header(key, info.Size, want)
	// The next store wants the digest of header and bytes before them:
	// hash r once, checking it against info, and read it again (a
	// bytes.Reader, as engine.Artifacts puts, seeks back; anything else is
	// held in memory).
	rs, ok := r.(io.ReadSeeker)
	if !ok {
		b, err := io.ReadAll(io.LimitReader(r, info.Size+1))
		if err != nil {
			return fmt.Errorf("sign artifact %s %s: %w", key.ModuleDigest, key.EngineKey, err)
		}
		rs = bytes.NewReader(b)
	}
	start, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("sign artifact %s %s: %w", key.ModuleDigest, key.EngineKey, err)
	}
	whole, body := sha256.New(), sha256.New()
	whole.Write(h)
	n, err := io.Copy(io.MultiWriter(whole, body), io.LimitReader(rs, info.Size+1))
	if err != nil {
		return fmt.Errorf("sign artifact %s %s: %w", key.ModuleDigest, key.EngineKey, err)
	}
	if n != info.Size || !bytes.Equal(sumOf(body), want) {
		return fmt.Errorf("sign artifact %s %s: %w: %d bytes with sha256 %x, given as %d and %s", key.ModuleDigest, key.EngineKey, engine.ErrArtifactCorrupt, n, sumOf(body), info.Size, info.Digest)
	}
	if _, err := rs.Seek(start, io.SeekStart); err != nil {
		return fmt.Errorf("sign artifact %s %s: %w", key.ModuleDigest, key.EngineKey, err)
	}
	signed := engine.ArtifactInfo{Digest: "sha256:" + hex.EncodeToString(sumOf(whole)), Size: int64(headerSize) + info.Size}
	return s.next.PutPrecompiled(ctx, key, signed, io.MultiReader(bytes.NewReader(h), io.LimitReader(rs, info.Size)))
}

func sumOf(h hash.Hash) []byte { return h.Sum(nil) }

// LoadKey reads the artifact key from path, a file of MinKeyBytes to
// MaxKeyBytes bytes (all of them are the key) that only its owner may read
// (mode 0600 or 0400: whoever reads it can make native code that the
// executors run). When path does not exist it is created, with its
// directory (0700), holding MinKeyBytes random bytes, and created is
// true. A symbolic link is followed (a Kubernetes secret volume's files
// are links).
func LoadKey(path string) (key []byte, created bool, err error) {
	key, err = readKey(path)
	if !errors.Is(err, os.ErrNotExist) {
		return key, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("artifact key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		// Another executor sharing the directory made it meanwhile.
		key, err = readKey(path)
		return key, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("artifact key: %w", err)
	}
	key = make([]byte, MinKeyBytes)
	rand.Read(key)
	_, err = f.Write(key)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, false, fmt.Errorf("artifact key %s: %w", path, err)
	}
	return key, true, nil
}

func readKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("artifact key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("artifact key: %w", err)
	}
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("artifact key %s: not a regular file", path)
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("artifact key %s has mode %04o: others may read or change it, and whoever reads it can sign native code that executors run; chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	key, err := io.ReadAll(io.LimitReader(f, MaxKeyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("artifact key %s: %w", path, err)
	}
	if len(key) < MinKeyBytes || len(key) > MaxKeyBytes {
		return nil, fmt.Errorf("artifact key %s: %d bytes, want %d to %d (e.g. head -c 32 /dev/urandom > %s)", path, len(key), MinKeyBytes, MaxKeyBytes, path)
	}
	return key, nil
}
