//go:build linux

package binpages

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// exeRss sums the resident kB of this process's mappings of its own
// executable, from /proc/self/smaps.
func exeRss(t *testing.T) (readonly, all int) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	var ours, ro bool
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 6 && strings.Contains(f[0], "-") && len(f[1]) == 4:
			ours, ro = f[5] == exe, f[1][1] == '-'
		case len(f) == 3 && f[0] == "Rss:" && ours:
			kb, _ := strconv.Atoi(f[1])
			all += kb
			if ro {
				readonly += kb
			}
		}
	}
	return readonly, all
}

// TestDrop drops the test binary's start-up pages: its read-only mappings
// are mostly no longer resident, the process runs on (the code it needs
// faults back in), and the writable data is left as it was.
func TestDrop(t *testing.T) {
	before, _ := exeRss(t)
	n, err := Drop()
	if err != nil {
		t.Fatal(err)
	}
	after, _ := exeRss(t)
	t.Logf("dropped %d mappings: read-only pages of the binary %d kB resident before, %d kB after", n, before, after)
	if n == 0 || after*2 > before {
		t.Errorf("dropped %d mappings; read-only pages of the binary %d kB resident before, %d kB after: want under half", n, before, after)
	}
	if data := strings.Repeat("x", 3); data != "xxx" { // still running, data intact
		t.Fatal(data)
	}
}

// TestReadonlyMappings keeps only the private, read-only mappings of the
// given file that hold no copied pages.
func TestReadonlyMappings(t *testing.T) {
	const smaps = `00400000-00404000 r--p 00000000 fe:00 42      /bin/x
Rss:                  16 kB
Anonymous:             0 kB
00404000-01ab3000 r-xp 00004000 fe:00 42      /bin/x
Anonymous:             0 kB
01ab3000-0259d000 r--p 016b3000 fe:00 42      /bin/x
Anonymous:             4 kB
0259d000-02613000 rw-p 0219c000 fe:00 42      /bin/x
Anonymous:             0 kB
02613000-02691000 r--p 00000000 fe:00 43      /bin/other
Anonymous:             0 kB
02691000-02692000 r--s 00000000 fe:00 42      /bin/x
Anonymous:             0 kB
7f9123fa5000-7f91240fb000 r-xp 00026000 fe:01 42  /lib/y
Anonymous:             0 kB
`
	got, err := readonlyMappings(strings.NewReader(smaps), mkdev(0xfe, 0), 42)
	if err != nil {
		t.Fatal(err)
	}
	want := []mapping{{0x400000, 0x404000}, {0x404000, 0x1ab3000}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("got %#v, want %#v", got, want)
	}
}
