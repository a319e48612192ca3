package local

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// Pins are kept as a snapshot (pins.json) and a journal of the changes
// since (pins.log, a JSON record a line). A change appends to the journal
// only, so that a pod's pin and unpin cost one short write however many
// pins there are; once the journal holds more than pinLogCompact records
// and twice as many as there are pins, the snapshot is rewritten and the
// journal emptied. A record cut short by a crash is the journal's last
// line: it is dropped when the store opens.
const pinLogCompact = 1000

type pinEntry struct {
	Digest  string    `json:"digest"`
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires,omitzero"`
}

// pinOp is a record of pins.log: a pin, or an unpin of the holder's pin of
// Digest (of all its pins when Digest is empty).
type pinOp struct {
	Unpin   bool      `json:"unpin,omitempty"`
	Digest  string    `json:"digest,omitempty"`
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires,omitzero"`
}

// pinnedLocked reports whether a live pin holds d, dropping expired ones.
func (s *store) pinnedLocked(d digest.Digest, now time.Time) bool {
	holders := s.pins[d]
	for h, exp := range holders {
		if !exp.IsZero() && !now.Before(exp) {
			delete(holders, h)
		}
	}
	if len(holders) == 0 {
		delete(s.pins, d)
		return false
	}
	return true
}

// removePinLocked removes holder's pin of d (of every blob when d is
// empty) and reports whether it held one.
func (s *store) removePinLocked(d digest.Digest, holder string) bool {
	changed := false
	for pd, holders := range s.pins {
		if d != "" && pd != d {
			continue
		}
		if _, ok := holders[holder]; ok {
			delete(holders, holder)
			changed = true
		}
		if len(holders) == 0 {
			delete(s.pins, pd)
		}
	}
	return changed
}

func (s *store) addPin(d digest.Digest, holder string, expires time.Time) {
	if s.pins[d] == nil {
		s.pins[d] = map[string]time.Time{}
	}
	s.pins[d][holder] = expires
}

// savePins writes every change of the pins up to gen (the caller's
// pinsGen) to pins.log, unless a write since has covered it. Pins and
// unpins made while one write is under way share the next (a group
// commit): a burst of pods costs a few short appends.
func (s *store) savePins(gen uint64) error {
	s.pinWrite.Lock()
	defer s.pinWrite.Unlock()
	s.mu.Lock()
	if s.pinsSaved >= gen {
		s.mu.Unlock()
		return nil
	}
	ops := s.pinOps
	s.pinOps = nil
	covers := s.pinsGen
	s.metrics.setPinned(len(s.pins))
	var snapshot []pinEntry
	if n := s.pinLogOps + len(ops); s.pinLogTorn || n > pinLogCompact && n > 2*s.pinCountLocked() {
		snapshot = s.pinListLocked()
	}
	s.mu.Unlock()
	var err error
	if snapshot != nil {
		err = s.compactPins(snapshot)
	} else {
		err = s.appendPinLog(ops)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.pinOps = append(ops, s.pinOps...) // the next write tries again
		return err
	}
	s.pinsSaved = max(s.pinsSaved, covers)
	return nil
}

func (s *store) pinCountLocked() int {
	n := 0
	for _, holders := range s.pins {
		n += len(holders)
	}
	return n
}

// pinListLocked is the pins, sorted, as pins.json keeps them.
func (s *store) pinListLocked() []pinEntry {
	list := make([]pinEntry, 0, len(s.pins))
	for d, holders := range s.pins {
		for h, exp := range holders {
			list = append(list, pinEntry{Digest: d.String(), Holder: h, Expires: exp})
		}
	}
	slices.SortFunc(list, func(a, b pinEntry) int {
		if a.Digest != b.Digest {
			return cmpString(a.Digest, b.Digest)
		}
		return cmpString(a.Holder, b.Holder)
	})
	return list
}

// appendPinLog appends ops to pins.log in one write. With pinWrite held.
func (s *store) appendPinLog(ops []pinOp) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf) // a record a line
	for _, op := range ops {
		if err := enc.Encode(op); err != nil {
			return err
		}
	}
	if s.pinLog == nil {
		f, err := os.OpenFile(filepath.Join(s.dir, "pins.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("save pins: %w", err)
		}
		s.pinLog = f
	}
	if _, err := s.pinLog.Write(buf.Bytes()); err != nil {
		s.pinLogTorn = true // a partial record must not prefix the next one
		return fmt.Errorf("save pins: %w", err)
	}
	s.pinLogOps += len(ops)
	return nil
}

// compactPins writes the snapshot to pins.json, then empties pins.log. A
// crash between the two leaves a journal whose records the snapshot
// already holds: replaying them again changes nothing. With pinWrite held.
func (s *store) compactPins(snapshot []pinEntry) error {
	if err := s.saveJSON("pins.json", snapshot); err != nil {
		return err
	}
	if err := os.Truncate(filepath.Join(s.dir, "pins.log"), 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("save pins: %w", err)
	}
	s.pinLogOps, s.pinLogTorn = 0, false
	return nil
}

// replayPinLog applies pins.log to the pins read from pins.json. A last
// line without its newline (a write cut short by a crash) is dropped from
// the file, so that the next record starts a line of its own.
func (s *store) replayPinLog() error {
	path := filepath.Join(s.dir, "pins.log")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read pins.log: %w", err)
	}
	if end := bytes.LastIndexByte(data, '\n') + 1; end < len(data) {
		s.log.Warn("pins.log ends in a partial record, dropped", "bytes", len(data)-end)
		if err := os.Truncate(path, int64(end)); err != nil {
			return fmt.Errorf("repair pins.log: %w", err)
		}
		data = data[:end]
	}
	for line := range bytes.Lines(data) {
		var op pinOp
		if err := json.Unmarshal(line, &op); err != nil {
			s.log.Warn("damaged record in pins.log, skipped", "error", err)
			continue
		}
		s.pinLogOps++
		if op.Unpin {
			s.removePinLocked(digest.Digest(op.Digest), op.Holder)
		} else if d, err := digest.Parse(op.Digest); err == nil {
			s.addPin(d, op.Holder, op.Expires)
		}
	}
	return nil
}

// pin holds d for holder until expires (zero: until unpinned).
func (s *store) pin(d digest.Digest, holder string, expires time.Time) error {
	s.mu.Lock()
	if _, ok := s.blobs[d]; !ok || !s.has(d) {
		s.mu.Unlock()
		return fmt.Errorf("pin %s: %w: the cache does not hold it (it may have been evicted); resolve it again", d, regcache.ErrNotFound)
	}
	s.addPin(d, holder, expires)
	s.pinOps = append(s.pinOps, pinOp{Digest: d.String(), Holder: holder, Expires: expires})
	s.touchLocked(d)
	s.pinsGen++
	gen := s.pinsGen
	s.mu.Unlock()
	return s.savePins(gen)
}

// unpin releases holder's pin of d, or all its pins when d is empty, and
// evicts what no longer fits.
func (s *store) unpin(d digest.Digest, holder string) error {
	s.mu.Lock()
	if !s.removePinLocked(d, holder) {
		s.mu.Unlock()
		return nil
	}
	s.pinOps = append(s.pinOps, pinOp{Unpin: true, Digest: string(d), Holder: holder})
	s.pinsGen++
	gen := s.pinsGen
	s.evictLocked("")
	s.mu.Unlock()
	return s.savePins(gen)
}
