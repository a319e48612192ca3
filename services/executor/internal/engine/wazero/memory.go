package wazero

import (
	"context"
	"sync"

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
// (up to idleMemories), zeroed over what was used, as the Go heap recycles
// its memory. Faulting a fresh mapping's initial size in with one madvise
// (MADV_POPULATE_WRITE) is not done: it made the whole initial memory
// resident and a burst of fresh instances no faster.
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

// withLinearMemory returns ctx with the allocator that instantiations
// under it use.
func withLinearMemory(ctx context.Context) context.Context {
	return experimental.WithMemoryAllocator(ctx, experimental.MemoryAllocatorFunc(func(_, max uint64) experimental.LinearMemory {
		return &linearMemory{max: max}
	}))
}

// linearMemory is one instance's linear memory, on a mapping of its own
// once first sized.
type linearMemory struct {
	max uint64
	m   *mappedMemory
}

// mappedMemory is a reservation of len(mem) bytes whose first open bytes
// are readable and writable.
type mappedMemory struct {
	mem  []byte // as unix.Mmap returned it
	open uint64
	used uint64 // the most an instance had; zeroed before reuse
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
	m.used = max(m.used, size)
	return m.mem[:size:size]
}

// Free implements experimental.LinearMemory: the mapping is kept for a
// next instance, or unmapped.
func (l *linearMemory) Free() {
	m := l.m
	if m == nil {
		return
	}
	l.m = nil
	n := uint64(len(m.mem))
	memories.Lock()
	if memories.n < idleMemories {
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
		clear(m.mem[:m.used])
		m.used = 0
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
