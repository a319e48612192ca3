package spool

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzEntries makes a batch from fuzz bytes: a message a line, its fields
// (subject, msg id, payload, data) separated by NUL. Subjects and payload
// names hold no spaces (a NATS subject cannot; the head is cut at them).
func fuzzEntries(b []byte) []Entry {
	var batch []Entry
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		f := bytes.SplitN(line, []byte{0}, 4)
		for len(f) < 4 {
			f = append(f, nil)
		}
		batch = append(batch, Entry{
			Subject: strings.ReplaceAll(string(f[0]), " ", "_"),
			MsgID:   string(f[1]),
			Payload: strings.ReplaceAll(string(f[2]), " ", "_"),
			Count:   len(f[3]) % 5,
			Data:    f[3],
		})
	}
	return batch
}

// sameEntry compares what a replay must give back: Count only as Items
// (0 and 1 are both one item), Data by content.
func sameEntry(a, b Entry) bool {
	return a.Subject == b.Subject && a.MsgID == b.MsgID && a.Payload == b.Payload &&
		a.Items() == b.Items() && bytes.Equal(a.Data, b.Data)
}

func openFuzz(t *testing.T, dir string) *Spool {
	t.Helper()
	s, err := Open(Config{Dir: dir, MaxBytes: 1 << 30, SegmentBytes: 1 << 30})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

// FuzzSpoolReplay appends a batch, then damages the segment the way a
// death or a bad disk would (cut at any byte, one byte changed) and opens
// the spool again: the replay must be exactly the records that lie whole
// before the damage, as written, and nothing else. (A changed length
// field could in principle frame a shorter body whose CRC-32C matches the
// old sum: a 2^-32 chance, not a defect.)
//
//	go test -run '^$' -fuzz FuzzSpoolReplay -fuzztime 60s -parallel 1 ./services/executor/internal/spool/
func FuzzSpoolReplay(f *testing.F) {
	f.Add([]byte("wasmlet.logs.n.ns.p.c\x00i:1\x00LogBatch\x00hello\nwasmlet.logs.n.ns.p.c\x00i:2\x00\x00"), uint32(1<<31), uint32(0), uint8(0))
	f.Add([]byte("s\x00i:1\x00\x00line 1\ns\x00i:2\x00\x00line 2\ns\x00i:3\x00\x00line 3"), uint32(40), uint32(0), uint8(0))
	f.Add([]byte("s\x00i:1\x00\x00line 1\ns\x00i:2\x00\x00line 2"), uint32(1<<31), uint32(20), uint8(1))
	f.Add([]byte("s\x00i:1\x00\x00line 1\ns\x00i:2\x00\x00line 2"), uint32(1<<31), uint32(21), uint8(0x80))
	f.Add([]byte("a b c\x00\x00p q\x00"+strings.Repeat("x", 200)), uint32(7), uint32(3), uint8(0xff))
	f.Fuzz(func(t *testing.T, recs []byte, cut, flip uint32, mask uint8) {
		dir := t.TempDir()
		batch := fuzzEntries(recs)
		s := openFuzz(t, dir)
		if s.Append(batch) == nil {
			t.Fatalf("append of %d messages refused: %+v", len(batch), s.Stats())
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "seg-00000000000000000001.log")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// Where each record ends, from the file as written.
		var ends []int
		for off := 0; off < len(b); {
			off += 8 + int(binary.LittleEndian.Uint32(b[off:]))
			ends = append(ends, off)
		}
		if len(ends) != len(batch) || ends[len(ends)-1] != len(b) {
			t.Fatalf("%d messages written as %d records ending at %v of %d bytes", len(batch), len(ends), ends, len(b))
		}
		damage := int(cut % uint32(len(b)+1))
		b = b[:damage]
		if mask != 0 && len(b) > 0 {
			p := int(flip % uint32(len(b)))
			b[p] ^= mask
			damage = p
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		whole := 0
		for whole < len(ends) && ends[whole] <= damage {
			whole++
		}
		s = openFuzz(t, dir)
		defer s.Close()
		got := s.Replay()
		if len(got) != whole {
			t.Fatalf("damage at byte %d of %v: replayed %d records, want the %d before it", damage, ends, len(got), whole)
		}
		for i, r := range got {
			if !sameEntry(r.Entry, batch[i]) {
				t.Fatalf("record %d replayed as %+v, written as %+v", i, r.Entry, batch[i])
			}
		}
	})
}

// FuzzSpoolDecode opens a spool whose only segment holds arbitrary bytes:
// Open must not fail or panic, and whatever it replays (or decode makes of
// the bytes as one record's body) must be a message the spool can write:
// appended again and reopened, it comes back the same.
//
//	go test -run '^$' -fuzz FuzzSpoolDecode -fuzztime 60s -parallel 1 ./services/executor/internal/spool/
func FuzzSpoolDecode(f *testing.F) {
	rec := func(body string) string {
		var h [8]byte
		binary.LittleEndian.PutUint32(h[:], uint32(len(body)))
		binary.LittleEndian.PutUint32(h[4:], crc32.Checksum([]byte(body), castagnoli))
		return string(h[:]) + body
	}
	f.Add([]byte(rec("\x01s\x03i:1hello") + rec("\x0fs LogBatch 1024\x03i:2x")))
	f.Add([]byte(rec("\x01s\x03i:1hello") + "\x05\x00\x00\x00"))
	f.Add([]byte(rec("\x07s  0 x y\x00") + rec("\x05a b 7\x00")))
	f.Add([]byte(rec("\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01")))
	f.Add([]byte(rec("\xff\xff\xff\xff\x0f")))
	f.Add([]byte("\xff\xff\xff\xff\x00\x00\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, seg []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "seg-00000000000000000001.log"), seg, 0o600); err != nil {
			t.Fatal(err)
		}
		s := openFuzz(t, dir)
		got := s.Replay()
		var items uint64
		batch := make([]Entry, len(got))
		for i, r := range got {
			if r.Ref == nil {
				t.Fatalf("record %d replayed without a Ref", i)
			}
			items += r.Items()
			batch[i] = r.Entry
		}
		if st := s.Stats(); st.Replayed != items {
			t.Fatalf("stats say %d items replayed, the replay holds %d", st.Replayed, items)
		}
		s.Close()
		// The CRC keeps most mutations from reaching decode: give it the
		// bytes as a record's body too.
		if e, ok := decode(seg); ok {
			batch = append(batch, e)
		}
		if len(batch) == 0 {
			return
		}
		dir2 := t.TempDir()
		s2 := openFuzz(t, dir2)
		if s2.Append(batch) == nil {
			t.Fatalf("append of %d replayed messages refused", len(batch))
		}
		s2.Close()
		again := openFuzz(t, dir2)
		defer again.Close()
		back := again.Replay()
		if len(back) != len(batch) {
			t.Fatalf("%d messages replayed, written again and replayed as %d", len(batch), len(back))
		}
		for i := range back {
			if !sameEntry(back[i].Entry, batch[i]) {
				t.Fatalf("message %d replayed as %+v, written again and replayed as %+v", i, batch[i], back[i].Entry)
			}
		}
	})
}
