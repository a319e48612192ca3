package local

import (
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

type precompiledEntry struct {
	ModuleDigest string `json:"moduleDigest"`
	EngineKey    string `json:"engineKey"`
	Digest       string `json:"digest"`
	Size         int64  `json:"size"`
}

func precompiledKey(k regcache.PrecompiledKey) string { return k.ModuleDigest + "\x00" + k.EngineKey }

// recordPrecompiled maps key to the artifact d, already written.
func (s *store) recordPrecompiled(key regcache.PrecompiledKey, d digest.Digest, size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.precompiled[precompiledKey(key)] = precompiledEntry{ModuleDigest: key.ModuleDigest, EngineKey: key.EngineKey, Digest: d.String(), Size: size}
	return s.savePrecompiledLocked()
}

func (s *store) savePrecompiledLocked() error {
	list := make([]precompiledEntry, 0, len(s.precompiled))
	for _, p := range s.precompiled {
		list = append(list, p)
	}
	slices.SortFunc(list, func(a, b precompiledEntry) int {
		return cmpString(a.ModuleDigest+"\x00"+a.EngineKey, b.ModuleDigest+"\x00"+b.EngineKey)
	})
	return s.saveJSON("precompiled.json", list)
}

// lookupPrecompiled returns the artifact recorded for key, forgetting it
// when its blob was evicted.
func (s *store) lookupPrecompiled(key regcache.PrecompiledKey) (precompiledEntry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.precompiled[precompiledKey(key)]
	if !ok {
		return precompiledEntry{}, false
	}
	d, err := digest.Parse(e.Digest)
	if err != nil || !s.has(d) {
		delete(s.precompiled, precompiledKey(key))
		if err := s.savePrecompiledLocked(); err != nil {
			s.log.Warn("save precompiled index", "error", err)
		}
		return precompiledEntry{}, false
	}
	return e, true
}
