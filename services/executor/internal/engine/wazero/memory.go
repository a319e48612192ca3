package wazero

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"
	"unsafe"

	"github.com/tetratelabs/wazero/experimental"
	"golang.org/x/sys/unix"
)

// Linear memory outside the Go heap (wazero's experimental
// MemoryAllocator, given to each instantiation). By default wazero backs a
// linear memory with a Go []byte and grows it by copying into a larger
// one, so a Go-built module's memory was all resident, copied at least
// once at start, and left garbage for the GC to find. Here each memory reserves its
// maximum as an anonymous mapping with no access and no swap reserved, and
// growing makes more of it readable and writable in place: only the pages
// the module touches become resident, and nothing is copied or collected.
//
// Page faults cost a lot on virtual machines (a fresh mapping for every
// instance made a Go module's start several times slower), so an ended
// instance's mapping is kept for the next instance with the same maximum
// (up to idleMemories), zeroed over the pages it touched (zeroTouched), as
// the Go heap recycles its memory. Faulting a fresh mapping's initial size in with one madvise
// (MADV_POPULATE_WRITE) is not done: it made the whole initial memory
// resident and a burst of fresh instances no faster.
//
// A module's data segments are the same in every instance, and most of
// their pages are only read (a Go module's span over a MiB). They are the
// module's image, a sealed memfd (or an unnamed file in the cache), mapped
// privately over the start of an instance's memory: the pages it only
// reads are the image's, resident once for all instances, and a write
// copies the one page. A module compiled without its data section
// (data.go) has the image its segments make, mapped as its memory is
// allocated, before wazero instantiates anything in it (Reallocate).
// Starting, the module maps most of the image's pages; at its first wait
// those it has not changed, and the pages past the image it wrote only
// zeros to, are unmapped again (linearMemory.share, told from
// /proc/self/pagemap): a sleeping instance's VmRSS counts every page it
// maps, shared or not. A mapping kept for reuse has its image range made
// anonymous again (nothing resident, nothing to zero).
// Other modules' first instance, its data applied and nothing run yet,
// leaves its memory up to its last non-zero page as the image, and an
// instance maps it when it first waits in poll_oneoff (no wasm runs on
// its memory then), writing back the pages it had changed
// (linearMemory.share); mapped at their start, wazero's copy of the data
// segments would copy every page of it at once.
//
// wazero releases a memory when it closes the module, on the goroutine
// that runs its wasm (a cancelled context only marks the module), so no
// wasm runs on a memory after it was released. Afterwards only its length
// is read (Usage), never its bytes.

const idleMemories = 16

// memories keeps released mappings by reservation size.
var memories = struct {
	sync.Mutex
	idle map[uint64][]*mappedMemory
	n    int
}{idle: map[uint64][]*mappedMemory{}}

// Allocate implements experimental.MemoryAllocator: an instantiation
// under experimental.WithMemoryAllocator(ctx, l) makes its memory l.
func (l *linearMemory) Allocate(_, max uint64) experimental.LinearMemory {
	l.max = max
	return l
}

// linearMemory is one instance's linear memory, on a mapping of its own
// once first sized.
type linearMemory struct {
	max uint64
	m   *mappedMemory
	// start is the image mapped as the memory is allocated; mapped, once
	// it is, until the first wait.
	start, mapped *image
	// img is the module's image, mapped at the first wait (share).
	img    *image
	waited bool // share has run
	// copySmall copies a start image of at most copyImage bytes rather
	// than map it: for a handler's instance, which lives for a request.
	copySmall bool
}

// mappedMemory is a reservation of len(mem) bytes whose first open bytes
// are readable and writable.
type mappedMemory struct {
	mem    []byte // as unix.Mmap returned it
	open   uint64
	used   uint64 // the most an instance had; zeroed before reuse past clean
	clean  uint64 // its first bytes are zero and not resident (an image's, made anonymous again)
	imaged uint64 // its first bytes are an image's, mapped privately
}

// Reallocate implements experimental.LinearMemory. Sizes are whole wasm
// pages (64 KiB), so every boundary is page-aligned.
func (l *linearMemory) Reallocate(size uint64) []byte {
	if l.m == nil {
		l.m = takeMapping(max(l.max, size, 1), size)
		if l.m == nil {
			return nil
		}
	}
	m := l.m
	if size > uint64(len(m.mem)) {
		return nil
	}
	if size > m.open {
		if err := unix.Mprotect(m.mem[m.open:size], unix.PROT_READ|unix.PROT_WRITE); err != nil {
			return nil
		}
		m.open = size
	}
	if img := l.start; img != nil {
		// Once, at the first size (the initial memory, which holds the
		// image: stripData).
		l.start = nil
		if uint64(len(img.data)) > m.open {
			return nil
		}
		if l.copySmall && len(img.data) <= copyImage {
			// Its bytes, copied: cheaper than a mapping and its undoing.
			copy(m.mem, img.data)
		} else if m.mapImage(img) {
			l.mapped = img
		}
	}
	m.used = max(m.used, size)
	return m.mem[:size:size]
}

// mapImage maps img privately over the start of m, which it is open over.
// Where it cannot be mapped (out of mappings, vm.max_map_count), the
// range is anonymous, with img's bytes, and it reports false.
func (m *mappedMemory) mapImage(img *image) bool {
	n := uintptr(len(img.data))
	if _, err := unix.MmapPtr(img.fd, 0, unsafe.Pointer(&m.mem[0]), n, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_FIXED); err != nil {
		m.anonymous(n)
		copy(m.mem, img.data)
		return false
	}
	m.imaged = uint64(n)
	return true
}

// pagemap is /proc/self/pagemap, open for unmapUnchanged, or -1.
var pagemap = sync.OnceValue(func() int {
	fd, err := unix.Open("/proc/self/pagemap", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
})

// Page flags in /proc/self/pagemap.
const (
	pagePresent = 1 << 63
	pageSwapped = 1 << 62
	pageFile    = 1 << 61 // a file's page (here the image's), not a copy
)

// copyImage is the largest image copied into a handler instance's memory
// rather than mapped over its start (linearMemory.copySmall): one is made
// at every request, and a small image is copied in less time than mapping
// it and, at its Free, mapping anonymous memory back take; what mapping
// saves, pages shared by instances asleep, a handler's do not need.
const copyImage = 64 << 10

// zeroTouched zeroes b, page-aligned in an anonymous private mapping,
// writing only to the pages an instance touched (present or swapped
// out, as /proc/self/pagemap tells): the others read as zero already,
// and writing zeros to them would fault them in. A memory that grew to
// more than its instance wrote (a handler's few pages of several) is
// zeroed in a fraction of the time. Without pagemap all of b is written.
func zeroTouched(b []byte) {
	fd := pagemap()
	page := unix.Getpagesize()
	if fd < 0 || len(b)%page != 0 || uintptr(unsafe.Pointer(unsafe.SliceData(b)))%uintptr(page) != 0 {
		clear(b)
		return
	}
	var flags [512 * 8]byte
	for len(b) > 0 {
		n := min(len(b)/page, len(flags)/8)
		at := int64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))/uintptr(page)) * 8
		if k, err := unix.Pread(fd, flags[:8*n], at); err != nil || k != 8*n {
			clear(b)
			return
		}
		for i := range n {
			if binary.LittleEndian.Uint64(flags[8*i:])&(pagePresent|pageSwapped) != 0 {
				clear(b[i*page : (i+1)*page])
			}
		}
		b = b[n*page:]
	}
}

// maxZeroScan bounds the pages past the image that unmapUnchanged reads.
const maxZeroScan = 4096

// zeroPage is a page of zeros, for pages up to 64 KiB.
var zeroPage [64 << 10]byte

// unmapUnchanged unmaps the pages of m that hold what they would if the
// module had not written them: of its range mapped from img (nil: none),
// those mapped from it and never written, and copies written with the
// same bytes; past it (up to maxZeroScan pages), those written with
// zeros. The module's next touch of one maps it again, from img or
// zeroed. Nothing is done when pagemap cannot be read.
func (m *mappedMemory) unmapUnchanged(img *image) {
	fd := pagemap()
	page := unix.Getpagesize()
	n := int(m.imaged) / page
	if fd < 0 || page > len(zeroPage) || n > 0 && (img == nil || n > len(img.data)/page) {
		return
	}
	total := min(int(m.open)/page, n+maxZeroScan)
	if total == 0 {
		return
	}
	flags := make([]byte, 8*total)
	at := int64(uintptr(unsafe.Pointer(&m.mem[0]))/uintptr(page)) * 8
	if k, err := unix.Pread(fd, flags, at); err != nil || k != len(flags) {
		return
	}
	from := -1 // the start of a run of pages to unmap
	unmap := func(to int) {
		if from >= 0 {
			unix.Madvise(m.mem[from*page:to*page], unix.MADV_DONTNEED)
			from = -1
		}
	}
	for i := range total {
		f := binary.LittleEndian.Uint64(flags[8*i:])
		p := m.mem[i*page : (i+1)*page]
		var same bool
		switch {
		case f&pagePresent == 0:
		case i < n:
			same = f&pageFile != 0 || bytes.Equal(p, img.data[i*page:(i+1)*page])
		default:
			same = bytes.Equal(p, zeroPage[:page])
		}
		switch {
		case same && from < 0:
			from = i
		case !same:
			unmap(i)
		}
	}
	unmap(total)
}

// anonymous makes m's first n bytes, open, a fresh anonymous mapping:
// zero, and nothing resident.
func (m *mappedMemory) anonymous(n uintptr) {
	if _, err := unix.MmapPtr(-1, 0, unsafe.Pointer(&m.mem[0]), n, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE|unix.MAP_FIXED); err != nil {
		// The range may be unmapped now: no memory to give back.
		panic(fmt.Sprintf("wazero engine: restore a module's memory: %v", err))
	}
	m.imaged = 0
}

// Free implements experimental.LinearMemory: the mapping is kept for a
// next instance, or unmapped.
func (l *linearMemory) Free() {
	m := l.m
	if m == nil {
		return
	}
	l.m = nil
	l.start, l.mapped, l.img = nil, nil, nil
	n := uint64(len(m.mem))
	memories.Lock()
	if memories.n < idleMemories {
		if m.imaged > 0 {
			// Its copies of the image's pages go, and the image: that
			// range is zero again without being written.
			m.clean = m.imaged
			m.anonymous(uintptr(m.imaged))
		}
		memories.idle[n] = append(memories.idle[n], m)
		memories.n++
		memories.Unlock()
		return
	}
	memories.Unlock()
	unix.Munmap(m.mem)
}

// takeMapping returns a zeroed mapping of n bytes: a kept one, or a fresh
// one with its first initial bytes open.
func takeMapping(n, initial uint64) *mappedMemory {
	memories.Lock()
	if list := memories.idle[n]; len(list) > 0 {
		m := list[len(list)-1]
		memories.idle[n] = list[:len(list)-1]
		memories.n--
		memories.Unlock()
		if m.used > m.clean {
			zeroTouched(m.mem[m.clean:m.used])
		}
		m.used, m.clean = 0, 0
		return m
	}
	memories.Unlock()
	b, err := unix.Mmap(-1, 0, int(n), unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil
	}
	m := &mappedMemory{mem: b}
	if initial > 0 && initial <= n {
		if err := unix.Mprotect(b[:initial], unix.PROT_READ|unix.PROT_WRITE); err != nil {
			unix.Munmap(b)
			return nil
		}
		m.open = initial
	}
	return m
}

// image is the initial memory of a compiled module's instances, up to its
// last non-zero page, in a memfd.
type image struct {
	fd   int
	data []byte // the memfd mapped shared, read-only
}

// newImage returns the image of mem, a memory as instantiated, or nil if
// it is all zero or the image cannot be made. It is a sealed memfd, or
// where memfd_create is refused (the executor's seccomp allow-list) a
// file without a name in dir.
func newImage(mem []byte, dir string) *image { return newImageIn(mem, dir, true) }

// newImageIn is newImage, trying memfd_create if memfd.
func newImageIn(mem []byte, dir string, memfd bool) *image {
	page := unix.Getpagesize()
	end := len(bytes.TrimRight(mem, "\x00"))
	end = (end + page - 1) / page * page
	if end == 0 || end > len(mem) {
		return nil
	}
	sealed := memfd
	fd, err := -1, error(unix.EPERM)
	if memfd {
		fd, err = unix.MemfdCreate("wasmlet-wazero-image", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		sealed = false
		fd, err = unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil
		}
	}
	img := &image{fd: fd}
	if err := unix.Ftruncate(fd, int64(end)); err != nil {
		img.close()
		return nil
	}
	for off := 0; off < end; {
		n, err := unix.Pwrite(fd, mem[off:end], int64(off))
		if err != nil || n == 0 {
			img.close()
			return nil
		}
		off += n
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL); sealed && err != nil {
		img.close()
		return nil
	}
	img.data, err = unix.Mmap(fd, 0, end, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		img.close()
		return nil
	}
	return img
}

// close releases the image; memories it is mapped into keep it.
func (img *image) close() {
	if img == nil {
		return
	}
	if img.data != nil {
		unix.Munmap(img.data)
		img.data = nil
	}
	unix.Close(img.fd)
}

// share is called at each wait in poll_oneoff, where no wasm runs on the
// memory: a no-op for the module. The first time, a memory that did not
// start as its image maps l's image over its start, keeping the pages
// the module changed since, so that the pages it has only read become
// the image's (not done when most pages changed); then every memory
// unmaps the pages that hold what they would unwritten
// (unmapUnchanged): a sleeping instance's VmRSS counts every page it
// maps, shared or not, and its start wrote zeros over many.
func (l *linearMemory) share() {
	m := l.m
	if l.waited || m == nil {
		return
	}
	l.waited = true
	img := l.mapped
	if img == nil {
		img = l.img
		l.shareImage()
	}
	l.img, l.mapped = nil, nil
	m.unmapUnchanged(img)
}

// shareImage maps l.img over the start of l's memory (share).
func (l *linearMemory) shareImage() {
	img, m := l.img, l.m
	if img == nil || m.imaged > 0 || uint64(len(img.data)) > m.open {
		return
	}
	page := unix.Getpagesize()
	var changed []int
	for off := 0; off < len(img.data); off += page {
		if !bytes.Equal(m.mem[off:off+page], img.data[off:off+page]) {
			changed = append(changed, off)
		}
	}
	if len(changed)*page*2 > len(img.data) {
		return
	}
	kept := make([]byte, len(changed)*page)
	for i, off := range changed {
		copy(kept[i*page:], m.mem[off:off+page])
	}
	// Not populated: a page is mapped when the module next reads it (and
	// copied when it writes it), so a sleeping instance maps few of them.
	m.mapImage(img)
	for i, off := range changed {
		copy(m.mem[off:off+page], kept[i*page:(i+1)*page])
	}
}
