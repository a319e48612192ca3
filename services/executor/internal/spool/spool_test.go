package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func entries(from, to int) []Entry {
	var b []Entry
	for i := from; i <= to; i++ {
		b = append(b, Entry{Subject: "s", MsgID: fmt.Sprint("i:", i), Data: []byte(fmt.Sprint("line ", i))})
	}
	return b
}

func replayedIDs(t *testing.T, s *Spool) []string {
	t.Helper()
	var ids []string
	for _, r := range s.Replay() {
		if want := "line " + r.MsgID[2:]; string(r.Data) != want || r.Subject != "s" {
			t.Fatalf("replayed %q %q %q, want data %q", r.Subject, r.MsgID, r.Data, want)
		}
		ids = append(ids, r.MsgID)
	}
	return ids
}

// TestReplayWhatIsNotDone: a second Open (the next process) finds the
// messages of every segment that still holds one not done, and nothing
// of a segment whose messages were all done.
func TestReplayWhatIsNotDone(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, MaxBytes: 1 << 20, SegmentBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	a := s.Append(entries(1, 5)) // segment 1
	b := s.Append(entries(6, 8)) // rolls: segment 2
	if a == nil || b == nil || a == b {
		t.Fatalf("refs %p %p: want two segments", a, b)
	}
	for range 5 {
		s.Done(a)
	}
	if got, _ := filepath.Glob(filepath.Join(dir, "seg-*")); len(got) != 1 {
		t.Errorf("segments after the first was done: %v, want 1", got)
	}
	s.Done(b) // 6 done, 7 and 8 not: the whole segment is replayed
	// The process dies here: no Close.
	s2, err := Open(Config{Dir: dir, MaxBytes: 1 << 20, SegmentBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(replayedIDs(t, s2)); got != "[i:6 i:7 i:8]" {
		t.Errorf("replayed %s, want [i:6 i:7 i:8]", got)
	}
	if st := s2.Stats(); st.Replayed != 3 || st.Bytes <= 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestTornRecord: a record cut short (the process died inside a write) ends
// the replay of its segment; the whole records before it are kept.
func TestTornRecord(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	s.Append(entries(1, 3))
	st := s.Stats()
	seg, _ := filepath.Glob(filepath.Join(dir, "seg-*"))
	if len(seg) != 1 {
		t.Fatalf("segments %v", seg)
	}
	if err := os.Truncate(seg[0], st.Bytes-2); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(replayedIDs(t, s2)); got != "[i:1 i:2]" {
		t.Errorf("replayed %s, want [i:1 i:2]", got)
	}
}

// TestFullSpoolRefuses: a batch that does not fit under MaxBytes is not
// written and is counted; once messages are done there is room again.
func TestFullSpoolRefuses(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir(), MaxBytes: 200, SegmentBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	var refs []Ref
	for i := 1; ; i++ {
		r := s.Append(entries(i, i))
		if r == nil {
			break
		}
		refs = append(refs, r)
		if i > 100 {
			t.Fatal("a 200-byte spool took 100 messages")
		}
	}
	st := s.Stats()
	if st.Unspooled != 1 || st.Bytes > 200 {
		t.Fatalf("stats %+v, want 1 unspooled and at most 200 bytes", st)
	}
	for _, r := range refs {
		s.Done(r)
	}
	if s.Append(entries(1, 1)) == nil {
		t.Errorf("no room after every message was done: %+v", s.Stats())
	}
}

// TestPayloadAndCount: an entry's payload kind and item count survive a
// replay, next to entries without them (as an older executor wrote them),
// and the counters count items.
func TestPayloadAndCount(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	s.Append([]Entry{
		{Subject: "wasmlet.logs.n.ns.p.c", MsgID: "i:1", Data: []byte("old")},
		{Subject: "wasmlet.logs.n.ns.p.c", MsgID: "i:2", Payload: "LogBatch", Count: 100, Data: []byte("batch")},
	})
	if st := s.Stats(); st.Spooled != 101 {
		t.Fatalf("spooled %d items, want 101", st.Spooled)
	}
	s2, err := Open(Config{Dir: dir, MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	r := s2.Replay()
	if len(r) != 2 || s2.Stats().Replayed != 101 {
		t.Fatalf("replayed %d messages, %d items; want 2, 101", len(r), s2.Stats().Replayed)
	}
	if e := r[0].Entry; e.Subject != "wasmlet.logs.n.ns.p.c" || e.Payload != "" || e.Count != 0 || string(e.Data) != "old" {
		t.Fatalf("first: %+v", e)
	}
	if e := r[1].Entry; e.Subject != "wasmlet.logs.n.ns.p.c" || e.Payload != "LogBatch" || e.Count != 100 || e.MsgID != "i:2" || string(e.Data) != "batch" {
		t.Fatalf("second: %+v", e)
	}
}
