package local

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// Media types this cache knows.
const (
	MediaTypeWasmConfig      = "application/vnd.wasm.config.v0+json"
	MediaTypeWasmLayer       = "application/wasm"
	MediaTypeWasmToOCILayer  = "application/vnd.wasm.content.layer.v1+wasm"
	mediaTypeDockerManifest  = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerList      = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerConfig    = "application/vnd.docker.container.image.v1+json"
	mediaTypeDockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// Platform of the index entry to pick.
const (
	wasmOS   = "wasip1"
	wasmArch = "wasm"
)

// manifestKind tells an index from an image manifest.
type manifestKind int

const (
	kindImage manifestKind = iota + 1
	kindIndex
)

// parsedManifest is the part of an image manifest or index this cache reads.
type parsedManifest struct {
	MediaType string               `json:"mediaType"`
	Config    *ocispec.Descriptor  `json:"config"`
	Layers    []ocispec.Descriptor `json:"layers"`
	Manifests []ocispec.Descriptor `json:"manifests"`
}

// classify parses a manifest body. mediaType is what the registry said
// (Content-Type); the body's own mediaType wins when present.
func classify(mediaType string, body []byte) (manifestKind, parsedManifest, error) {
	var m parsedManifest
	if err := json.Unmarshal(body, &m); err != nil {
		return 0, m, fmt.Errorf("parse manifest: %w", err)
	}
	mt := m.MediaType
	if mt == "" {
		mt = mediaType
	}
	switch mt {
	case ocispec.MediaTypeImageIndex, mediaTypeDockerList:
		return kindIndex, m, nil
	case ocispec.MediaTypeImageManifest, mediaTypeDockerManifest:
		return kindImage, m, nil
	}
	// Without a media type, the shape decides.
	switch {
	case m.Manifests != nil && m.Config == nil:
		return kindIndex, m, nil
	case m.Config != nil:
		return kindImage, m, nil
	}
	return 0, m, fmt.Errorf("%w: unsupported manifest media type %q", regcache.ErrNotWasm, mt)
}

// selectPlatform picks the wasip1/wasm entry of an index.
func selectPlatform(m parsedManifest) (ocispec.Descriptor, error) {
	var found []string
	for _, d := range m.Manifests {
		if d.Platform == nil {
			found = append(found, "unknown")
			continue
		}
		if d.Platform.OS == wasmOS && d.Platform.Architecture == wasmArch {
			return d, nil
		}
		found = append(found, d.Platform.OS+"/"+d.Platform.Architecture)
	}
	if len(found) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("%w: the image index is empty", regcache.ErrNotWasm)
	}
	return ocispec.Descriptor{}, fmt.Errorf("%w: the image index has no %s/%s entry (platforms found: %s); push a Wasm module for %s/%s",
		regcache.ErrNotWasm, wasmOS, wasmArch, strings.Join(found, ", "), wasmOS, wasmArch)
}

// selectModule picks the Wasm layer of an image manifest: exactly one layer
// of a Wasm media type. Anything else is refused, with a message that says
// what the artifact looks like.
func selectModule(m parsedManifest) (ocispec.Descriptor, error) {
	var wasm []ocispec.Descriptor
	var types []string
	container := m.Config != nil && (m.Config.MediaType == ocispec.MediaTypeImageConfig || m.Config.MediaType == mediaTypeDockerConfig)
	for _, l := range m.Layers {
		switch l.MediaType {
		case MediaTypeWasmLayer, MediaTypeWasmToOCILayer:
			wasm = append(wasm, l)
		case ocispec.MediaTypeImageLayer, ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayerZstd,
			mediaTypeDockerLayerGzip:
			container = true
		}
		if !slices.Contains(types, l.MediaType) {
			types = append(types, l.MediaType)
		}
	}
	switch {
	case len(wasm) == 1:
		return wasm[0], nil
	case len(wasm) > 1:
		return ocispec.Descriptor{}, fmt.Errorf("%w: the manifest has %d Wasm layers, want exactly one", regcache.ErrNotWasm, len(wasm))
	case container:
		return ocispec.Descriptor{}, fmt.Errorf("%w: it is a container image, not a Wasm module; use an artifact with an %s layer", regcache.ErrNotWasm, MediaTypeWasmLayer)
	}
	return ocispec.Descriptor{}, fmt.Errorf("%w: no layer of type %s or %s (layer types: %s)",
		regcache.ErrNotWasm, MediaTypeWasmLayer, MediaTypeWasmToOCILayer, strings.Join(types, ", "))
}
