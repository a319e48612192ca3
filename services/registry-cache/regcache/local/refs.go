package local

import "github.com/opencontainers/go-digest"

// refEntry is what a reference resolved to when last pulled.
type refEntry struct {
	ManifestDigest string `json:"manifestDigest"`
	ModuleDigest   string `json:"moduleDigest"`
	ModuleSize     int64  `json:"moduleSize"`
	MediaType      string `json:"mediaType"`
}

// lookup returns the entry of ref when its module is still on disk.
func (s *store) lookup(ref string) (refEntry, bool) {
	s.mu.Lock()
	e, ok := s.refs[ref]
	s.mu.Unlock()
	if !ok {
		return refEntry{}, false
	}
	d, err := digest.Parse(e.ModuleDigest)
	if err != nil || !s.has(d) {
		return refEntry{}, false
	}
	return e, true
}

// record remembers what ref resolved to, and saves the index.
func (s *store) record(ref string, e refEntry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refs[ref] = e
	return s.saveJSON("refs.json", s.refs)
}
