package local

import (
	"errors"
	"testing"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// FuzzParseManifest feeds manifests and indexes of any shape to the code
// that reads them: it must not panic, must fail only with ErrNotWasm or a
// parse error, and what it picks must be what was asked for. Seeds are
// below and in testdata/fuzz/FuzzParseManifest; run it as a fuzzer with
//
//	go test -run '^$' -fuzz FuzzParseManifest -fuzztime 30s ./services/registry-cache/regcache/local
func FuzzParseManifest(f *testing.F) {
	const d1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	const d2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	for _, seed := range []struct{ mediaType, body string }{
		{"", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.wasm.config.v0+json","digest":"` + d1 + `","size":2},"layers":[{"mediaType":"application/wasm","digest":"` + d2 + `","size":8}]}`},
		{"application/vnd.oci.image.manifest.v1+json", `{"schemaVersion":2,"config":{"mediaType":"application/vnd.wasm.config.v1+json","digest":"` + d1 + `","size":2},"layers":[{"mediaType":"application/vnd.wasm.content.layer.v1+wasm","digest":"` + d2 + `","size":8}]}`},
		{"", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d1 + `","size":400,"platform":{"os":"linux","architecture":"amd64"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d2 + `","size":400,"platform":{"os":"wasip1","architecture":"wasm"}}]}`},
		{"application/vnd.docker.distribution.manifest.list.v2+json", `{"schemaVersion":2,"manifests":[{"digest":"` + d1 + `","size":1}]}`},
		{"", `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"` + d1 + `","size":2},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"` + d2 + `","size":8}]}`},
		{"", `{"manifests":null,"config":null,"layers":[{},{}]}`},
		{"text/plain", `[]`},
		{"", ``},
	} {
		f.Add(seed.mediaType, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, mediaType string, body []byte) {
		kind, m, err := classify(mediaType, body)
		if err != nil {
			if kind != 0 {
				t.Fatalf("classify failed (%v) but returned kind %d", err, kind)
			}
			return
		}
		switch kind {
		case kindIndex:
			d, err := selectPlatform(m)
			if err != nil {
				if !errors.Is(err, regcache.ErrNotWasm) {
					t.Fatalf("selectPlatform: %v, want ErrNotWasm", err)
				}
				return
			}
			if d.Platform == nil || d.Platform.OS != wasmOS || d.Platform.Architecture != wasmArch {
				t.Fatalf("selectPlatform picked %+v, not a %s/%s entry", d, wasmOS, wasmArch)
			}
		case kindImage:
			d, err := selectModule(m)
			if err != nil {
				if !errors.Is(err, regcache.ErrNotWasm) {
					t.Fatalf("selectModule: %v, want ErrNotWasm", err)
				}
				return
			}
			if d.MediaType != MediaTypeWasmLayer && d.MediaType != MediaTypeWasmToOCILayer {
				t.Fatalf("selectModule picked a layer of type %q", d.MediaType)
			}
		default:
			t.Fatalf("classify returned kind %d without an error", kind)
		}
	})
}
