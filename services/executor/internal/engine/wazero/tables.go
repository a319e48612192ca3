package wazero

import (
	"encoding/binary"
	"fmt"
)

// tableBudget is the memory each table of a module may take on wazero
// (engine.TableElements of it), whatever the instance's limit: wazero has
// no hook on table.grow, so the bound is written into the module as its
// tables' maximum, and bytes that depended on the limit would be compiled
// once per limit and never shared. A table that starts larger than the
// instance's limit is refused at start.
const tableBudget = 256 << 20

// capTables returns wasm with every table declared in it given a maximum
// of at most maxElems elements (wazero has no limit on table.grow but the
// table's declared maximum, and a module need not declare one), and
// whether anything changed. A table whose minimum is above maxElems is an
// error: the module cannot start under the limit. Sections other than the
// table section are copied as they are; a module that does not parse is
// returned unchanged, for wazero to refuse with its own message.
func capTables(wasm []byte, maxElems uint32) ([]byte, bool, error) {
	secs, ok := sectionsOf(wasm)
	if !ok {
		return wasm, false, nil
	}
	for _, sec := range secs {
		if sec.id != 4 { // table section
			continue
		}
		nb, changed, err := capTableSection(sec.body, maxElems)
		if err != nil || !changed {
			return wasm, false, err
		}
		out := append([]byte(nil), wasm[:sec.start]...)
		out = append(out, 4)
		out = binary.AppendUvarint(out, uint64(len(nb)))
		out = append(out, nb...)
		out = append(out, wasm[sec.end:]...)
		return out, true, nil
	}
	return wasm, false, nil
}

// tablesFit is capTables' error alone: whether every table of wasm
// starts within maxElems elements, without a copy of wasm.
func tablesFit(wasm []byte, maxElems uint32) error {
	secs, _ := sectionsOf(wasm)
	for _, sec := range secs {
		if sec.id == 4 {
			_, _, err := capTableSection(sec.body, maxElems)
			return err
		}
	}
	return nil
}

func capTableSection(body []byte, maxElems uint32) ([]byte, bool, error) {
	count, n := binary.Uvarint(body)
	if n <= 0 {
		return nil, false, nil
	}
	p := body[n:]
	out := binary.AppendUvarint(nil, count)
	changed := false
	for range count {
		// reftype, then limits: 0x00 min, or 0x01 min max.
		if len(p) < 2 || (p[0] != 0x70 && p[0] != 0x6f) || (p[1] != 0 && p[1] != 1) {
			return nil, false, nil // tables with initialisers, table64: left to wazero
		}
		ref, flag := p[0], p[1]
		p = p[2:]
		min, k := binary.Uvarint(p)
		if k <= 0 {
			return nil, false, nil
		}
		p = p[k:]
		max := uint64(1<<32 - 1)
		if flag == 1 {
			if max, k = binary.Uvarint(p); k <= 0 {
				return nil, false, nil
			}
			p = p[k:]
		}
		if min > uint64(maxElems) {
			return nil, false, fmt.Errorf("a table of %d elements (%d bytes) does not fit the memory limit", min, min*8)
		}
		if max > uint64(maxElems) {
			max, changed = uint64(maxElems), true
		}
		out = append(out, ref, 1)
		out = binary.AppendUvarint(out, min)
		out = binary.AppendUvarint(out, max)
	}
	return append(out, p...), changed, nil
}
