package wazero

import (
	"bufio"
	"encoding/binary"
	"io"
	"os"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// wasiOf reads what checkWASI checks from wasm's import and export
// sections alone: the function and memory imports, and whether a _start
// function is exported. Prepare, with Config.InterpretFirst, checks a
// module so rather than decode and validate it twice: once there under no
// memory limit, and again for the instance's (about a third of
// interpreting a Go-built module). ok is false when the sections do not
// parse; the module is then left to wazero, which says why.
func wasiOf(wasm []byte) (imports []engine.Import, hasStart, ok bool) {
	if len(wasm) < 8 || string(wasm[:8]) != "\x00asm\x01\x00\x00\x00" {
		return nil, false, false
	}
	var mems []engine.Import
	secs, ok := sectionsOf(wasm)
	if !ok {
		return nil, false, false
	}
	for _, sec := range secs {
		r := reader(sec.body)
		switch sec.id {
		case 2: // imports
			count, ok := r.uint()
			for i := uint64(0); ok && i < count; i++ {
				var imp engine.Import
				var kind byte
				imp.Module, ok = r.name()
				if ok {
					imp.Name, ok = r.name()
				}
				if ok {
					kind, ok = r.byte()
				}
				switch {
				case !ok:
				case kind == 0: // func: type index
					imports = append(imports, imp)
					_, ok = r.uint()
				case kind == 1: // table: reference type, limits
					if _, ok = r.byte(); ok {
						ok = r.limits()
					}
				case kind == 2: // memory: limits
					mems = append(mems, imp)
					ok = r.limits()
				case kind == 3: // global: value type, mutability
					_, ok = r.byte()
					if ok {
						_, ok = r.byte()
					}
				case kind == 4: // tag: attribute, type index
					if _, ok = r.byte(); ok {
						_, ok = r.uint()
					}
				default:
					ok = false
				}
			}
			if !ok {
				return nil, false, false
			}
		case 7: // exports
			count, ok := r.uint()
			for i := uint64(0); ok && i < count; i++ {
				var name string
				var kind byte
				if name, ok = r.name(); ok {
					kind, ok = r.byte()
				}
				if ok {
					_, ok = r.uint()
				}
				hasStart = hasStart || ok && kind == 0 && name == "_start"
			}
			if !ok {
				return nil, false, false
			}
		}
	}
	return append(imports, mems...), hasStart, true
}

// section is one of a module's sections: its id, its body, and where it
// starts (its id) and ends (its body's end) in the module.
type section struct {
	id         byte
	body       []byte
	start, end int
}

// sectionsOf splits a module, past its 8-byte preamble, into its
// sections; ok is false when they do not parse.
func sectionsOf(wasm []byte) (secs []section, ok bool) {
	if len(wasm) < 8 {
		return nil, false
	}
	p := wasm[8:]
	for len(p) > 0 {
		start := len(wasm) - len(p)
		size, n := binary.Uvarint(p[1:])
		if n <= 0 || size > uint64(len(p)-1-n) {
			return nil, false
		}
		end := start + 1 + n + int(size)
		secs = append(secs, section{id: p[0], body: p[1+n : 1+n+int(size)], start: start, end: end})
		p = wasm[end:]
	}
	return secs, true
}

// reader reads a section's body.
type reader []byte

func (r *reader) byte() (byte, bool) {
	if len(*r) == 0 {
		return 0, false
	}
	b := (*r)[0]
	*r = (*r)[1:]
	return b, true
}

func (r *reader) uint() (uint64, bool) {
	v, n := binary.Uvarint(*r)
	if n <= 0 {
		return 0, false
	}
	*r = (*r)[n:]
	return v, true
}

func (r *reader) name() (string, bool) {
	l, ok := r.uint()
	if !ok || l > uint64(len(*r)) {
		return "", false
	}
	s := string((*r)[:l])
	*r = (*r)[l:]
	return s, true
}

// limits reads a table's or memory's limits: flags, minimum, and the
// maximum when flag bit 0 says there is one.
func (r *reader) limits() bool {
	flags, ok := r.byte()
	if ok {
		_, ok = r.uint()
	}
	if ok && flags&1 != 0 {
		_, ok = r.uint()
	}
	return ok
}

// wasiSections reads from the module file f what wasiOf reads: its
// preamble and its import and export sections, passing over the rest (the
// code and data, nearly all of a Go-built module) without reading it. ok
// is false when its sections do not parse (as sectionsOf's).
func wasiSections(f *os.File) (wasm []byte, ok bool, err error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	size := fi.Size()
	br := bufio.NewReader(f)
	wasm = make([]byte, 8)
	if _, err := io.ReadFull(br, wasm); err != nil {
		return nil, false, nil
	}
	for pos := int64(8); pos < size; {
		// A size may be padded (Go's linker pads them): its length is
		// what was read.
		hr := &countingReader{r: br}
		id, err1 := hr.ReadByte()
		n, err2 := binary.ReadUvarint(hr)
		if err1 != nil || err2 != nil {
			return nil, false, nil
		}
		head := int64(hr.n)
		if n > uint64(size-pos-head) {
			return nil, false, nil
		}
		pos += head + int64(n)
		switch {
		case id == 2 || id == 7: // imports, exports
			wasm = binary.AppendUvarint(append(wasm, id), n)
			wasm = append(wasm, make([]byte, n)...)
			if _, err := io.ReadFull(br, wasm[len(wasm)-int(n):]); err != nil {
				return nil, false, err
			}
		case n <= uint64(br.Buffered()):
			br.Discard(int(n))
		default:
			if _, err := f.Seek(pos, io.SeekStart); err != nil {
				return nil, false, err
			}
			br.Reset(f)
		}
	}
	return wasm, true, nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r *bufio.Reader
	n int
}

func (c *countingReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}
