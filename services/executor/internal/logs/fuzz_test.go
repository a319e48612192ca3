package logs

import (
	"bytes"
	"fmt"
	"testing"
)

// splitRef is the Splitter's contract in its plainest form, for the whole
// output at once: each line cut into pieces of max bytes, all but a
// line's last marked partial; an unterminated last line's pieces all
// partial.
func splitRef(out []byte, max int) []rec {
	var got []rec
	lines := bytes.Split(out, []byte("\n"))
	for i, l := range lines {
		last := i == len(lines)-1
		if last && len(l) == 0 {
			break
		}
		for len(l) > max {
			got = append(got, rec{string(l[:max]), true})
			l = l[max:]
		}
		got = append(got, rec{string(l), last})
	}
	return got
}

// FuzzSplitter writes out to a Splitter in the writes that cuts says
// (each byte the length of the next write, the rest in one) and checks the
// records against splitRef, and that no record is longer than max.
//
//	go test -run '^$' -fuzz FuzzSplitter -fuzztime 5m ./services/executor/internal/logs/
func FuzzSplitter(f *testing.F) {
	f.Add([]byte("hello\nworld\n"), []byte{3}, uint8(4))
	f.Add([]byte("abcdefg\n"), []byte{}, uint8(3))
	f.Add([]byte("abc\n"), []byte{3}, uint8(3))
	f.Add([]byte("ab\ncd\xff\r\n\n\nlong line without end"), []byte{1, 1, 5, 0, 2}, uint8(2))
	f.Fuzz(func(t *testing.T, out, cuts []byte, max8 uint8) {
		max := int(max8%64) + 1
		var got []rec
		s := NewSplitter(max, func(l []byte, p bool) {
			if len(l) > max {
				t.Fatalf("record of %d bytes, max %d", len(l), max)
			}
			got = append(got, rec{string(l), p})
		})
		p := out
		for _, c := range cuts {
			n := min(int(c), len(p))
			if k, err := s.Write(p[:n]); k != n || err != nil {
				t.Fatalf("write: %d, %v", k, err)
			}
			p = p[n:]
		}
		s.Write(p)
		s.Flush()
		if want := splitRef(out, max); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("max %d, writes %v of %q:\ngot  %+v\nwant %+v", max, cuts, out, got, want)
		}
	})
}
