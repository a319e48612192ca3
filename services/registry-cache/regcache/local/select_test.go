package local

import (
	"errors"
	"strings"
	"testing"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

func TestClassifyAndSelect(t *testing.T) {
	const d1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	const d2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	tests := []struct {
		name      string
		mediaType string // Content-Type
		body      string
		wantKind  manifestKind
		wantLayer string // digest of the picked layer or index entry
		wantErr   error
		wantMsg   string
	}{
		{
			name:      "cncf",
			body:      `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.wasm.config.v0+json","digest":"` + d1 + `","size":2},"layers":[{"mediaType":"application/wasm","digest":"` + d2 + `","size":8}]}`,
			wantKind:  kindImage,
			wantLayer: d2,
		},
		{
			name:      "wasm-to-oci without mediaType field",
			mediaType: "application/vnd.oci.image.manifest.v1+json",
			body:      `{"schemaVersion":2,"config":{"mediaType":"application/vnd.wasm.config.v1+json","digest":"` + d1 + `","size":2},"layers":[{"mediaType":"application/vnd.wasm.content.layer.v1+wasm","digest":"` + d2 + `","size":8}]}`,
			wantKind:  kindImage,
			wantLayer: d2,
		},
		{
			name:     "container image",
			body:     `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"` + d1 + `","size":2},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"` + d2 + `","size":8}]}`,
			wantKind: kindImage,
			wantErr:  regcache.ErrNotWasm,
			wantMsg:  "container image",
		},
		{
			name:     "two wasm layers",
			body:     `{"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.wasm.config.v0+json","digest":"` + d1 + `","size":2},"layers":[{"mediaType":"application/wasm","digest":"` + d1 + `","size":8},{"mediaType":"application/wasm","digest":"` + d2 + `","size":8}]}`,
			wantKind: kindImage,
			wantErr:  regcache.ErrNotWasm,
			wantMsg:  "2 Wasm layers",
		},
		{
			name:     "unknown artifact",
			body:     `{"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.example+json","digest":"` + d1 + `","size":2},"layers":[{"mediaType":"text/plain","digest":"` + d2 + `","size":8}]}`,
			wantKind: kindImage,
			wantErr:  regcache.ErrNotWasm,
			wantMsg:  "text/plain",
		},
		{
			name:      "index with wasip1",
			body:      `{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d1 + `","size":9,"platform":{"os":"linux","architecture":"amd64"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d2 + `","size":9,"platform":{"os":"wasip1","architecture":"wasm"}}]}`,
			wantKind:  kindIndex,
			wantLayer: d2,
		},
		{
			name:     "docker list without wasip1",
			body:     `{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"` + d1 + `","size":9,"platform":{"os":"linux","architecture":"amd64"}},{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"` + d2 + `","size":9,"platform":{"os":"linux","architecture":"arm64"}}]}`,
			wantKind: kindIndex,
			wantErr:  regcache.ErrNotWasm,
			wantMsg:  "linux/amd64, linux/arm64",
		},
		{
			name:    "not json",
			body:    `<html>`,
			wantErr: errors.New("parse"),
			wantMsg: "parse manifest",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, m, err := classify(tt.mediaType, []byte(tt.body))
			if err == nil && kind != tt.wantKind {
				t.Fatalf("kind = %v, want %v", kind, tt.wantKind)
			}
			if err == nil {
				if kind == kindIndex {
					d, serr := selectPlatform(m)
					err = serr
					if serr == nil && d.Digest.String() != tt.wantLayer {
						t.Fatalf("picked %s, want %s", d.Digest, tt.wantLayer)
					}
				} else {
					d, serr := selectModule(m)
					err = serr
					if serr == nil && d.Digest.String() != tt.wantLayer {
						t.Fatalf("picked %s, want %s", d.Digest, tt.wantLayer)
					}
				}
			}
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantMsg)
			}
			if errors.Is(tt.wantErr, regcache.ErrNotWasm) && !errors.Is(err, regcache.ErrNotWasm) {
				t.Fatalf("error = %v, want ErrNotWasm", err)
			}
		})
	}
}

func TestParseReference(t *testing.T) {
	const dg = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	for in, want := range map[string]string{
		"127.0.0.1:5000/hello:v1":       "127.0.0.1:5000/hello:v1",
		"127.0.0.1:5000/hello":          "127.0.0.1:5000/hello:latest",
		"registry.example/a/b/c:x":      "registry.example/a/b/c:x",
		"127.0.0.1:5000/hello@" + dg:    "127.0.0.1:5000/hello@" + dg,
		"127.0.0.1:5000/hello:v1@" + dg: "127.0.0.1:5000/hello@" + dg,
	} {
		ref, err := ParseReference(in)
		if err != nil {
			t.Errorf("ParseReference(%q): %v", in, err)
			continue
		}
		if ref.String() != want {
			t.Errorf("ParseReference(%q) = %q, want %q", in, ref.String(), want)
		}
	}
	for _, in := range []string{"", "hello:v1", "127.0.0.1:5000/Hello:v1", "127.0.0.1:5000/hello@sha256:abc", "127.0.0.1:5000/hello:v/1"} {
		if _, err := ParseReference(in); !errors.Is(err, regcache.ErrInvalidReference) {
			t.Errorf("ParseReference(%q) = %v, want ErrInvalidReference", in, err)
		}
	}
}

func TestCredentials(t *testing.T) {
	creds := map[string]regcache.Credentials{
		"https://r.example:5000/": {Username: "a", Password: "p"},
		"other:1":                 {Username: "b", Password: "q"},
	}
	if cr, ok := lookupCredentials(creds, "r.example:5000"); !ok || cr.Username != "a" {
		t.Errorf("docker-config style key not found: %+v %v", cr, ok)
	}
	if _, ok := lookupCredentials(creds, "r.example"); ok {
		t.Error("credentials matched a different host")
	}
	k1 := credentialKey(creds, "r.example:5000")
	k2 := credentialKey(creds, "other:1")
	k3 := credentialKey(nil, "other:1")
	if k1 == k2 || k2 == k3 || k3 != "anonymous" {
		t.Errorf("credential keys must differ by credentials: %q %q %q", k1, k2, k3)
	}
	if len(k1) != 64 {
		t.Errorf("credential key %q is not a sha256 fingerprint", k1)
	}
}
