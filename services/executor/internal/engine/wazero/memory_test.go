package wazero

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// TestImageShared: instances of a Go module waiting in poll_oneoff have
// the module's image mapped over their memory, and go on as before it,
// reading and writing their data after each wait; their mappings go when
// they end.
func TestImageShared(t *testing.T) {
	e := newEngine(t, t.TempDir(), nil)
	m := enginetest.Prepare(t, e, wasmbuild.BuildDir(t, "examples/hello"))
	ctx := context.Background()
	before := imageMappings(t)

	const n = 3
	var insts []engine.Instance
	for range n {
		w := enginetest.NewLineWaiter("count 1")
		inst, err := e.Start(ctx, m, engine.Spec{Args: []string{"hello"}, Env: env("COUNT", "2", "SLEEP", "1h"), Stdout: w})
		if err != nil {
			t.Fatal(err)
		}
		insts = append(insts, inst)
		<-w.Seen
	}
	deadline := time.Now().Add(10 * time.Second)
	for imageMappings(t) < before+n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := imageMappings(t); got != before+n {
		t.Fatalf("%d sleeping instances map the image %d times, want %d", n, got-before, n)
	}
	// Asleep, an instance has unmapped the pages of the image it did not
	// change, though its start read most of them.
	if size, rss := imageResident(t); rss*4 > size {
		t.Errorf("sleeping instances have %d of their images' %d bytes mapped", rss, size)
	} else {
		t.Logf("sleeping instances have %d of their images' %d bytes mapped", rss, size)
	}

	var out bytes.Buffer
	inst, err := e.Start(ctx, m, engine.Spec{Args: []string{"hello", "again"}, Env: env("COUNT", "5", "SLEEP", "20ms"), Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if res := inst.Wait(); !res.Exited || res.ExitCode != 0 {
		t.Fatalf("counting instance: %+v", res)
	}
	for _, want := range []string{`argv: ["hello" "again"]`, "count 1\n", "count 5\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("counting instance wrote %q, want %q in it", out.String(), want)
		}
	}

	for _, inst := range insts {
		inst.Kill()
		inst.Wait()
	}
	if got := imageMappings(t); got != before {
		t.Errorf("after the instances ended the image is mapped %d times, want %d", got, before)
	}
}

// imageMappings counts the private, writable mappings of module images in
// this process: one per instance that shares one.
func imageMappings(t *testing.T) int {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 6 && fs[1] == "rw-p" && strings.Contains(fs[5], "wasmlet-wazero-image") {
			n++
		}
	}
	return n
}

// imageResident sums the size and Rss of the private, writable mappings
// of module images in this process.
func imageResident(t *testing.T) (size, rss int64) {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		fs := strings.Fields(l)
		switch {
		case len(fs) >= 5 && strings.Contains(fs[0], "-") && !strings.HasSuffix(fs[0], ":"):
			in = len(fs) >= 6 && fs[1] == "rw-p" && strings.Contains(fs[5], "wasmlet-wazero-image")
		case in && len(fs) >= 2 && (fs[0] == "Size:" || fs[0] == "Rss:"):
			kb, _ := strconv.ParseInt(fs[1], 10, 64)
			if fs[0] == "Size:" {
				size += kb << 10
			} else {
				rss += kb << 10
			}
		}
	}
	return size, rss
}

// TestImageFile: where memfd_create is refused, the image is a file with
// no name in the cache, and is the memory it was made from.
func TestImageFile(t *testing.T) {
	dir := t.TempDir()
	mem := make([]byte, 256<<10)
	copy(mem[70<<10:], "data")
	img := newImageIn(mem, dir, false)
	if img == nil {
		t.Fatal("no image")
	}
	defer img.close()
	if len(img.data) != 72<<10 || !bytes.Equal(img.data, mem[:72<<10]) {
		t.Fatalf("image of %d bytes, want the memory's first %d", len(img.data), 72<<10)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("the image left %d files in the cache", len(ents))
	}
}

// TestUnmapUnchanged: at the first wait, the pages that hold what they
// would unwritten go (of the image's range: read, or written with its
// bytes; past it: written with zeros), the others stay, and the memory
// reads as before.
func TestUnmapUnchanged(t *testing.T) {
	if pagemap() < 0 {
		t.Skip("no /proc/self/pagemap")
	}
	page := os.Getpagesize()
	init := make([]byte, 4*page)
	for i := range init {
		init[i] = byte(i%251 + 1)
	}
	img := newImage(init, t.TempDir())
	if img == nil {
		t.Fatal("no image")
	}
	defer img.close()
	l := &linearMemory{max: 1 << 30, start: img}
	mem := l.Reallocate(uint64(16 * page))
	if mem == nil {
		t.Fatal("no memory")
	}
	defer l.Free()
	sum := 0
	sum += int(mem[0])                  // image page 0: read
	copy(mem[page:2*page], init[page:]) // image page 1: written with its bytes
	mem[2*page] ^= 0xff                 // image page 2: changed
	mem[5*page] = 1                     // past it, page 5: written with zeros
	mem[5*page] = 0                     //
	mem[6*page] = 7                     // page 6: not zero
	want := append([]byte(nil), mem...)

	l.share()
	present := presentPages(t, mem, page)
	for i, wantPresent := range map[int]bool{0: false, 1: false, 2: true, 3: false, 4: false, 5: false, 6: true, 7: false} {
		if present[i] != wantPresent {
			t.Errorf("page %d: present %v, want %v", i, present[i], wantPresent)
		}
	}
	if !bytes.Equal(mem, want) || sum != int(init[0]) {
		t.Fatal("the memory changed")
	}
}

// presentPages reports, per page of mem, whether it is mapped.
func presentPages(t *testing.T, mem []byte, page int) []bool {
	n := len(mem) / page
	flags := make([]byte, 8*n)
	at := int64(uintptr(unsafe.Pointer(&mem[0]))/uintptr(page)) * 8
	if k, err := unix.Pread(pagemap(), flags, at); err != nil || k != len(flags) {
		t.Fatalf("pagemap: %v", err)
	}
	present := make([]bool, n)
	for i := range present {
		present[i] = binary.LittleEndian.Uint64(flags[8*i:])&pagePresent != 0
	}
	return present
}

// TestZeroTouched: a reused memory is all zero again, and the pages its
// instance never touched are not faulted in to be zeroed.
func TestZeroTouched(t *testing.T) {
	if pagemap() < 0 {
		t.Skip("no /proc/self/pagemap")
	}
	page := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, 8*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	mem[page+3] = 1
	mem[5*page] = 2
	mem[8*page-1] = 3
	zeroTouched(mem)
	present := presentPages(t, mem, page)
	for i, want := range []bool{false, true, false, false, false, true, false, true} {
		if present[i] != want {
			t.Errorf("page %d: present %v, want %v", i, present[i], want)
		}
	}
	if !bytes.Equal(mem, make([]byte, len(mem))) {
		t.Fatal("the memory is not all zero")
	}
}
