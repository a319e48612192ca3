// Package spool keeps the messages an executor has taken from its modules
// but JetStream has not yet acknowledged, in append-only files under the
// executor's state directory, so that a killed executor (kill -9, OOM) can
// publish them when it starts again. It owns the spool directory and its
// files; it must not publish, and it knows nothing of what the messages mean.
//
// What survives: every append is one write(2) without fsync, so the death
// of the process, not a crash of the machine. A replay may repeat messages
// that were acknowledged; they carry their msg id, so JetStream drops them
// as duplicates. The files never exceed MaxBytes: a batch that does not fit
// is not spooled (a nil Ref), only published from memory.
//
// Usage:
//
//	sp, err := spool.Open(spool.Config{Dir: dir, MaxBytes: 64 << 20})
//	for _, e := range sp.Replay() { publish(e.Entry); on ack: sp.Done(e.Ref) }
//	ref := sp.Append(batch) // before publishing batch
//	... on each ack: sp.Done(ref)
package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Entry is one message.
type Entry struct {
	Subject string
	MsgID   string
	// Payload names what Data holds, for the publisher to put in a header
	// ("" for a payload that needs none). The spool keeps it as it is.
	Payload string
	// Count is how many items (e.g. log lines) the message carries; 0 is
	// taken as 1. The spool's counters count items, not messages.
	Count int
	Data  []byte
}

// Items is e.Count, at least 1.
func (e Entry) Items() uint64 {
	return uint64(max(e.Count, 1))
}

func items(batch []Entry) uint64 {
	var n uint64
	for _, e := range batch {
		n += e.Items()
	}
	return n
}

// head is what the record holds in the subject's place.
func (e Entry) head() string {
	if e.Payload == "" && e.Count <= 1 {
		return e.Subject
	}
	return e.Subject + " " + e.Payload + " " + strconv.Itoa(max(e.Count, 1))
}

// parseHead sets e's Subject, Payload and Count from a record's head.
func (e *Entry) parseHead(h string) bool {
	subj, rest, ok := strings.Cut(h, " ")
	e.Subject = subj
	if !ok {
		return true
	}
	payload, count, ok := strings.Cut(rest, " ")
	n, err := strconv.Atoi(count)
	if !ok || err != nil || n < 1 {
		return false
	}
	e.Payload, e.Count = payload, n
	return true
}

// Config configures a Spool. Zero values take the defaults.
type Config struct {
	// Dir holds the segments; it is created if missing. Required.
	Dir string
	// MaxBytes bounds all segments together (default 64 MiB).
	MaxBytes int64
	// SegmentBytes is the size at which a new segment is begun (default
	// MaxBytes/16, at least 64 KiB).
	SegmentBytes int64
}

// Ref names the segment a batch went to. Nil means not spooled; Done(nil)
// does nothing.
type Ref = *segment

type segment struct {
	id          uint64
	path        string
	size        int64
	outstanding int
}

// Replayed is a message found in the spool at Open.
type Replayed struct {
	Entry
	Ref Ref
}

// Stats counts messages by fate.
type Stats struct {
	// Items (Entry.Count), not messages:
	Spooled   uint64 // appended
	Unspooled uint64 // not appended: the spool was full or a write failed
	Replayed  uint64 // found at Open
	Bytes     int64  // on disk now
}

// Spool is a set of segment files. Safe for concurrent use.
type Spool struct {
	cfg Config

	mu     sync.Mutex
	active *segment
	f      *os.File // the active segment's file
	segs   map[uint64]*segment
	size   int64
	buf    []byte
	replay []Replayed
	stats  Stats
	closed bool
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Open reads what an earlier life left in cfg.Dir (see Replay) and begins a
// new segment.
func Open(cfg Config) (*Spool, error) {
	if cfg.Dir == "" {
		return nil, errors.New("spool: Dir is required")
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 64 << 20
	}
	if cfg.SegmentBytes <= 0 {
		cfg.SegmentBytes = max(cfg.MaxBytes/16, 64<<10)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: create %s: %w", cfg.Dir, err)
	}
	s := &Spool{cfg: cfg, segs: map[uint64]*segment{}}
	names, err := filepath.Glob(filepath.Join(cfg.Dir, "seg-*.log"))
	if err != nil {
		return nil, fmt.Errorf("spool: list %s: %w", cfg.Dir, err)
	}
	var ids []uint64
	for _, n := range names {
		id, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(n), "seg-"), ".log"), 10, 64)
		if err == nil {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var next uint64 = 1
	for _, id := range ids {
		next = id + 1
		seg := &segment{id: id, path: s.segPath(id)}
		entries, err := readSegment(seg.path)
		if err != nil {
			return nil, err
		}
		if len(entries) == 0 {
			_ = os.Remove(seg.path)
			continue
		}
		fi, err := os.Stat(seg.path)
		if err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		seg.size = fi.Size()
		seg.outstanding = len(entries)
		s.segs[id] = seg
		s.size += seg.size
		for _, e := range entries {
			s.replay = append(s.replay, Replayed{Entry: e, Ref: seg})
			s.stats.Replayed += e.Items()
		}
	}
	if err := s.roll(next); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Spool) segPath(id uint64) string {
	return filepath.Join(s.cfg.Dir, fmt.Sprintf("seg-%020d.log", id))
}

// readSegment returns the whole records of a segment, stopping at the
// first torn or corrupt one (the process died inside its write). The
// directory holds segments seg-<n>.log, appended to until SegmentBytes;
// each message is one record:
//
//	uint32 body length | uint32 CRC-32C of body | body
//	body = uvarint len | head | uvarint len | msg id | data
//	head = subject, or subject " " payload " " count
//
// (a NATS subject holds no spaces: a head without one was written before
// payload kinds and counts were kept, with count 1).
func readSegment(path string) ([]Entry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("spool: read %s: %w", path, err)
	}
	var out []Entry
	for len(b) >= 8 {
		n := binary.LittleEndian.Uint32(b)
		sum := binary.LittleEndian.Uint32(b[4:])
		if uint64(n) > uint64(len(b)-8) {
			break
		}
		body := b[8 : 8+n]
		if crc32.Checksum(body, castagnoli) != sum {
			break
		}
		e, ok := decode(body)
		if !ok {
			break
		}
		out = append(out, e)
		b = b[8+n:]
	}
	return out, nil
}

func decode(body []byte) (Entry, bool) {
	var e Entry
	l, k := binary.Uvarint(body)
	if k <= 0 || l > uint64(len(body)-k) {
		return e, false
	}
	if !e.parseHead(string(body[k : k+int(l)])) {
		return e, false
	}
	body = body[k+int(l):]
	l, k = binary.Uvarint(body)
	if k <= 0 || l > uint64(len(body)-k) {
		return e, false
	}
	e.MsgID = string(body[k : k+int(l)])
	e.Data = append([]byte(nil), body[k+int(l):]...)
	return e, true
}

// roll begins segment id; called with s.mu held (or before s is shared).
func (s *Spool) roll(id uint64) error {
	if s.f != nil {
		s.f.Close()
		if s.active.outstanding == 0 {
			s.remove(s.active)
		}
	}
	f, err := os.OpenFile(s.segPath(id), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		s.f, s.active = nil, nil
		return fmt.Errorf("spool: create segment: %w", err)
	}
	s.f = f
	s.active = &segment{id: id, path: s.segPath(id)}
	s.segs[id] = s.active
	return nil
}

func (s *Spool) remove(seg *segment) {
	delete(s.segs, seg.id)
	s.size -= seg.size
	_ = os.Remove(seg.path)
}

// Replay returns the messages found at Open, oldest first. Each must be
// passed to Done once published (or given up), like an appended one.
func (s *Spool) Replay() []Replayed {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.replay
	s.replay = nil
	return r
}

// Append writes batch in one write and returns its Ref, to be passed to
// Done once per message. It returns nil, counting the messages as
// Unspooled, when the batch does not fit under MaxBytes or the write fails.
func (s *Spool) Append(batch []Entry) Ref {
	if len(batch) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.f == nil {
		s.stats.Unspooled += items(batch)
		return nil
	}
	buf := s.buf[:0]
	for _, e := range batch {
		start := len(buf)
		buf = append(buf, 0, 0, 0, 0, 0, 0, 0, 0)
		head := e.head()
		buf = binary.AppendUvarint(buf, uint64(len(head)))
		buf = append(buf, head...)
		buf = binary.AppendUvarint(buf, uint64(len(e.MsgID)))
		buf = append(buf, e.MsgID...)
		buf = append(buf, e.Data...)
		body := buf[start+8:]
		binary.LittleEndian.PutUint32(buf[start:], uint32(len(body)))
		binary.LittleEndian.PutUint32(buf[start+4:], crc32.Checksum(body, castagnoli))
	}
	if cap(buf) <= 1<<20 {
		s.buf = buf
	}
	if s.active.size > 0 && s.active.size+int64(len(buf)) > s.cfg.SegmentBytes {
		if err := s.roll(s.active.id + 1); err != nil {
			s.stats.Unspooled += items(batch)
			return nil
		}
	}
	if s.size+int64(len(buf)) > s.cfg.MaxBytes {
		s.stats.Unspooled += items(batch)
		return nil
	}
	n, err := s.f.Write(buf)
	s.active.size += int64(n)
	s.size += int64(n)
	if err != nil {
		// A short write leaves a torn record that ends the segment's replay:
		// begin a new segment so later appends stay readable.
		s.stats.Unspooled += items(batch)
		_ = s.roll(s.active.id + 1)
		return nil
	}
	s.active.outstanding += len(batch)
	s.stats.Spooled += items(batch)
	return s.active
}

// Done marks one message of ref's batch as acknowledged or given up. A
// segment other than the newest is deleted once all its messages are done,
// so a replay may hold acknowledged messages that shared a segment with
// others (JetStream drops them by msg id).
func (s *Spool) Done(ref Ref) {
	if ref == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ref.outstanding--
	if ref.outstanding == 0 && ref != s.active {
		s.remove(ref)
	}
}

// Stats returns the counters so far.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Bytes = s.size
	return st
}

// Close closes the active segment. What is not done stays on disk for the
// next Open.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	if s.active.outstanding == 0 {
		s.remove(s.active)
	}
	return err
}

var _ io.Closer = (*Spool)(nil)
