package local

import (
	"reflect"
	"testing"
)

// FuzzSelectRules checks what FuzzParseManifest leaves open: the selection
// follows the documented rules exactly, not only in kind. Of an index,
// the first wasip1/wasm entry is picked, and an index without one is
// refused; of an image manifest, the one layer of a Wasm media type is
// picked, and a manifest with none or several is refused.
//
//	go test -run '^$' -fuzz FuzzSelectRules -fuzztime 60s -parallel 1 ./services/registry-cache/regcache/local/
func FuzzSelectRules(f *testing.F) {
	const d1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	const d2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	for _, seed := range []struct{ mediaType, body string }{
		{"", `{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"` + d1 + `","platform":{"os":"wasip1","architecture":"wasm"}},{"digest":"` + d2 + `","platform":{"os":"wasip1","architecture":"wasm"}}]}`},
		{"", `{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"` + d1 + `"},{"digest":"` + d2 + `","platform":{"os":"wasip1","architecture":"wasm","variant":"x"}}]}`},
		{"application/vnd.oci.image.manifest.v1+json", `{"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"` + d1 + `"},{"mediaType":"application/wasm","digest":"` + d2 + `"}]}`},
		{"application/vnd.oci.image.manifest.v1+json", `{"layers":[{"mediaType":"application/wasm","digest":"` + d1 + `"},{"mediaType":"application/wasm","digest":"` + d1 + `"}]}`},
		{"", `{"config":{"mediaType":"application/vnd.oci.image.config.v1+json"},"layers":[]}`},
	} {
		f.Add(seed.mediaType, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, mediaType string, body []byte) {
		kind, m, err := classify(mediaType, body)
		if err != nil {
			return
		}
		switch kind {
		case kindIndex:
			want := -1
			for i, d := range m.Manifests {
				if d.Platform != nil && d.Platform.OS == wasmOS && d.Platform.Architecture == wasmArch {
					want = i
					break
				}
			}
			d, err := selectPlatform(m)
			switch {
			case want < 0 && err == nil:
				t.Fatalf("index without a %s/%s entry: picked %+v", wasmOS, wasmArch, d)
			case want >= 0 && (err != nil || !reflect.DeepEqual(d, m.Manifests[want])):
				t.Fatalf("index: picked %+v (%v), want the first %s/%s entry %+v", d, err, wasmOS, wasmArch, m.Manifests[want])
			}
		case kindImage:
			var wasm []int
			for i, l := range m.Layers {
				if l.MediaType == MediaTypeWasmLayer || l.MediaType == MediaTypeWasmToOCILayer {
					wasm = append(wasm, i)
				}
			}
			d, err := selectModule(m)
			switch {
			case len(wasm) != 1 && err == nil:
				t.Fatalf("manifest with %d Wasm layers: picked %+v", len(wasm), d)
			case len(wasm) == 1 && (err != nil || !reflect.DeepEqual(d, m.Layers[wasm[0]])):
				t.Fatalf("manifest: picked %+v (%v), want its Wasm layer %+v", d, err, m.Layers[wasm[0]])
			}
		}
	})
}
