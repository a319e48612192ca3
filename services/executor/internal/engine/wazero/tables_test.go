package wazero

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
)

func TestCapTables(t *testing.T) {
	wasm := func(table string) []byte {
		b, err := os.ReadFile(wasmbuild.Wat(t, `(module (memory 1) `+table+` (func (export "_start")))`))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name, table string
		changed     bool
		want        string // the table as it must be after
		err         string
	}{
		{"no maximum", "(table 1 funcref)", true, "(table 1 100 funcref)", ""},
		{"maximum above", "(table 2 1000 funcref)", true, "(table 2 100 funcref)", ""},
		{"maximum within", "(table 2 50 funcref)", false, "(table 2 50 funcref)", ""},
		{"externref", "(table 0 externref)", true, "(table 0 100 externref)", ""},
		{"no table", "", false, "", ""},
		{"minimum above", "(table 101 funcref)", false, "", "does not fit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := wasm(tc.table)
			out, changed, err := capTables(in, 100)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || changed != tc.changed {
				t.Fatalf("changed %v, err %v", changed, err)
			}
			if want := wasm(tc.want); !bytes.Equal(out, want) {
				t.Fatalf("capped module\n%x\nwant\n%x", out, want)
			}
		})
	}
	for _, b := range [][]byte{nil, []byte("\x00asm\x01\x00\x00\x00\x04\xff"), []byte("not wasm at all")} {
		if out, changed, err := capTables(b, 100); changed || err != nil || !bytes.Equal(out, b) {
			t.Fatalf("capTables(%q) = %q, %v, %v; want it unchanged", b, out, changed, err)
		}
	}
}
