package wazero

import (
	"os"
)

// Data segments without wazero. wazero applies a module's active data
// segments at every instantiation: it copies each into the fresh memory
// (a Go module's ~780 KB: most of its instantiation, in page faults), and
// keeps a slice header per segment in the instance for memory.init (a Go
// module has tens of thousands of segments: ~0.75 MiB of Go heap held by
// every instance, most of what one costs asleep). A module whose data
// segments are all active, on its own memory, at constant offsets within
// its initial memory, and that has no data count section (so no code
// names a segment: memory.init and data.drop need one), is compiled
// without its data section; the memory its segments would make is laid
// out once, as the compiled module's image (memory.go), and mapped
// privately over the start of each instance's memory as it is allocated:
// no copy, pages only read stay the image's, and a page written is copied
// then. The result is the module's: the same bytes in memory before its
// start runs, the same trap-free instantiation (segments out of bounds are
// left to wazero).

// Section ids.
const (
	sectionMemory    = 5
	sectionData      = 11
	sectionDataCount = 12
)

// stripData returns wasm without its data section, and the initial
// memory its segments make, up to their end (rounded up to the host's
// page), or ok false (wasm and nil) when the module does not qualify.
func stripData(wasm []byte) (out, mem []byte, ok bool) {
	secs, ok := sectionsOf(wasm)
	if !ok {
		return wasm, nil, false
	}
	var minBytes uint64
	haveMem := false
	dataStart, dataEnd := -1, -1
	var data []byte
	for _, sec := range secs {
		switch sec.id {
		case sectionMemory:
			r := reader(sec.body)
			count, ok1 := r.uint()
			flags, ok2 := r.byte()
			min, ok3 := r.uint()
			// One memory, 32-bit and not shared (flags 0 or 1: a maximum).
			if haveMem || !ok1 || !ok2 || !ok3 || count != 1 || flags > 1 || min > maxPages {
				return wasm, nil, false
			}
			minBytes, haveMem = min*pageSize, true
		case sectionDataCount:
			return wasm, nil, false
		case sectionData:
			if dataStart >= 0 {
				return wasm, nil, false // not a valid module: wazero's to refuse
			}
			dataStart, dataEnd, data = sec.start, sec.end, sec.body
		}
	}
	if !haveMem || dataStart < 0 {
		return wasm, nil, false
	}
	type segment struct {
		off  uint64
		init []byte
	}
	r := reader(data)
	count, ok1 := r.uint()
	if !ok1 {
		return wasm, nil, false
	}
	segs := make([]segment, 0, min(count, uint64(len(data))))
	var end uint64
	for range count {
		// Active, memory 0, offset (i32.const n) end, then the bytes.
		if flag, ok := r.byte(); !ok || flag != 0 {
			return wasm, nil, false
		}
		if op, ok := r.byte(); !ok || op != 0x41 {
			return wasm, nil, false
		}
		off, n := sleb32([]byte(r))
		if n <= 0 {
			return wasm, nil, false
		}
		r = r[n:]
		if op, ok := r.byte(); !ok || op != 0x0b {
			return wasm, nil, false
		}
		l, ok := r.uint()
		if !ok || l > uint64(len(r)) {
			return wasm, nil, false
		}
		s := segment{off: uint64(uint32(off)), init: r[:l]}
		r = r[l:]
		if s.off+l > minBytes {
			return wasm, nil, false // out of bounds: wazero's to refuse
		}
		end = max(end, s.off+l)
		segs = append(segs, s)
	}
	if len(r) != 0 || end == 0 {
		return wasm, nil, false
	}
	page := uint64(os.Getpagesize())
	mem = make([]byte, min((end+page-1)/page*page, minBytes))
	for _, s := range segs {
		copy(mem[s.off:], s.init)
	}
	out = make([]byte, 0, len(wasm)-(dataEnd-dataStart))
	out = append(append(out, wasm[:dataStart]...), wasm[dataEnd:]...)
	return out, mem, true
}

// sleb32 reads a signed LEB128 i32 from the start of b: its value and
// length, or length 0 if it is malformed.
func sleb32(b []byte) (int32, int) {
	var v int64
	var shift uint
	for i := 0; i < len(b) && i < 5; i++ {
		c := b[i]
		v |= int64(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			if v < -1<<31 || v > 1<<31-1 {
				return 0, 0
			}
			return int32(v), i + 1
		}
	}
	return 0, 0
}
