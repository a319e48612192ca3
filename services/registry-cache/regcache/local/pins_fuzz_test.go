package local

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// pinsOf lists a store's pins, times in UTC, for comparing two stores.
func pinsOf(s *store) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b bytes.Buffer
	for _, p := range s.pinListLocked() {
		fmt.Fprintf(&b, "%s %q %s\n", p.Digest, p.Holder, p.Expires.UTC().Format(time.RFC3339Nano))
	}
	return b.String()
}

// FuzzPinJournal opens a store whose pins.json and pins.log hold anything:
// opening must not fail or panic (a damaged snapshot is started afresh, a
// damaged record skipped, a torn last line dropped), every pin it keeps
// names a valid digest, the repaired files replay to the same pins, and
// those pins survive a compaction (pins.json rewritten, pins.log emptied).
//
//	go test -run '^$' -fuzz FuzzPinJournal -fuzztime 60s -parallel 1 ./services/registry-cache/regcache/local/
func FuzzPinJournal(f *testing.F) {
	const d1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	const d2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	for _, seed := range []struct{ snapshot, journal string }{
		{`[{"digest":"` + d1 + `","holder":"pod-a"}]`, `{"digest":"` + d2 + `","holder":"pod-b","expires":"2030-01-01T00:00:00Z"}` + "\n"},
		{`[{"digest":"` + d1 + `","holder":"a"},{"digest":"` + d1 + `","holder":"b"}]`, `{"unpin":true,"holder":"a"}` + "\n" + `{"unpin":true,"digest":"` + d1 + `","holder":"b"}` + "\n"},
		{``, `{"digest":"` + d2 + `","holder":"x"}` + "\n" + `{"digest":"sha256:00`},
		{`[null,{},{"digest":"md5:zz"}]`, "garbage\n\n{}\n" + `{"unpin":true,"digest":"nonsense","holder":""}` + "\n"},
		{`{"not":"a list"}`, `{"digest":"` + d1 + `","holder":"h","expires":"0000-01-01T00:00:00+23:59"}` + "\n"},
		{`[{"digest":"` + d1 + `","holder":"h","expires":"9999-12-31T23:59:59.999999999-23:59"}]`, "\x00\xff\n\r\n"},
		{`[{"digest":"` + d1 + `","holder":"\u0000\ud800"}]`, `{"digest":"` + d1 + `","holder":"h","unpin":"yes"}` + "\n"},
	} {
		f.Add([]byte(seed.snapshot), []byte(seed.journal))
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, snapshot, journal []byte) {
		dir := t.TempDir()
		if len(snapshot) > 0 {
			if err := os.WriteFile(filepath.Join(dir, "pins.json"), snapshot, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "pins.log"), journal, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := openStore(dir, 0, 0, log, nil)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		for d, holders := range s.pins {
			if err := d.Validate(); err != nil {
				t.Fatalf("pinned %q: %v", d, err)
			}
			if len(holders) == 0 {
				t.Fatalf("%s kept pinned by no holder", d)
			}
		}
		if b, err := os.ReadFile(filepath.Join(dir, "pins.log")); err != nil || len(b) > 0 && b[len(b)-1] != '\n' {
			t.Fatalf("pins.log after open: %q, %v; want whole lines", b, err)
		}
		want := pinsOf(s)

		again, err := openStore(dir, 0, 0, log, nil)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		if got := pinsOf(again); got != want {
			t.Fatalf("reopened, the pins are\n%s\nwant\n%s", got, want)
		}

		s.pinWrite.Lock()
		s.mu.Lock()
		list := s.pinListLocked()
		s.mu.Unlock()
		err = s.compactPins(list)
		s.pinWrite.Unlock()
		if err != nil {
			t.Fatalf("compact %d pins: %v", len(list), err)
		}
		compacted, err := openStore(dir, 0, 0, log, nil)
		if err != nil {
			t.Fatalf("open after compaction: %v", err)
		}
		if got := pinsOf(compacted); got != want {
			t.Fatalf("after compaction, the pins are\n%s\nwant\n%s", got, want)
		}
	})
}
