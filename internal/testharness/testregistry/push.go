package testregistry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// These helpers speak the distribution API directly, without oras, so that
// tests of wasmlet's own pull code can build artifacts of any shape (the
// wasm-to-oci layout, indexes, container images) with an independent
// implementation.

// Layer is one blob of an image manifest.
type Layer struct {
	MediaType string
	Data      []byte
}

// Manifest describes a pushed manifest.
type Manifest struct {
	Digest    string
	Size      int64
	MediaType string
}

// IndexEntry is one manifest of an image index with its platform.
type IndexEntry struct {
	Manifest
	OS, Architecture string
}

// Digest returns the sha256 digest string of data.
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// PushBlob uploads data to repo in one monolithic upload and returns its digest.
func (r *Registry) PushBlob(ctx context.Context, repo string, data []byte) (string, error) {
	dgst := Digest(data)
	resp, err := r.do(ctx, http.MethodPost, r.URL+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("start upload to %s: status %s", repo, resp.Status)
	}
	loc, err := resp.Location()
	if err != nil {
		return "", fmt.Errorf("start upload to %s: %w", repo, err)
	}
	q := loc.Query()
	q.Set("digest", dgst)
	loc.RawQuery = q.Encode()
	resp, err = r.do(ctx, http.MethodPut, loc.String(), "application/octet-stream", data)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("finish upload of %s to %s: status %s", dgst, repo, resp.Status)
	}
	return dgst, nil
}

// PushManifest puts a manifest into repo under tag, or under its digest
// when tag is empty.
func (r *Registry) PushManifest(ctx context.Context, repo, tag, mediaType string, body []byte) (Manifest, error) {
	m := Manifest{Digest: Digest(body), Size: int64(len(body)), MediaType: mediaType}
	ref := tag
	if ref == "" {
		ref = m.Digest
	}
	resp, err := r.do(ctx, http.MethodPut, r.URL+"/v2/"+repo+"/manifests/"+url.PathEscape(ref), mediaType, body)
	if err != nil {
		return Manifest{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return Manifest{}, fmt.Errorf("put manifest %s:%s: status %s: %s", repo, ref, resp.Status, msg)
	}
	return m, nil
}

// PushImage uploads config and layers and puts an OCI image manifest that
// names them.
func (r *Registry) PushImage(ctx context.Context, repo, tag, configMediaType string, config []byte, layers []Layer) (Manifest, error) {
	cfgDigest, err := r.PushBlob(ctx, repo, config)
	if err != nil {
		return Manifest{}, err
	}
	man := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: configMediaType, Digest: digestOf(cfgDigest), Size: int64(len(config))},
		Layers:    []ocispec.Descriptor{},
	}
	man.SchemaVersion = 2
	for _, l := range layers {
		d, err := r.PushBlob(ctx, repo, l.Data)
		if err != nil {
			return Manifest{}, err
		}
		man.Layers = append(man.Layers, ocispec.Descriptor{MediaType: l.MediaType, Digest: digestOf(d), Size: int64(len(l.Data))})
	}
	body, err := json.Marshal(man)
	if err != nil {
		return Manifest{}, err
	}
	return r.PushManifest(ctx, repo, tag, ocispec.MediaTypeImageManifest, body)
}

// PushWasmToOCI pushes module in the older wasm-to-oci layout (config
// application/vnd.wasm.config.v1+json, layer
// application/vnd.wasm.content.layer.v1+wasm).
func (r *Registry) PushWasmToOCI(ctx context.Context, repo, tag string, module []byte) (Manifest, error) {
	return r.PushImage(ctx, repo, tag, "application/vnd.wasm.config.v1+json", []byte("{}"),
		[]Layer{{MediaType: "application/vnd.wasm.content.layer.v1+wasm", Data: module}})
}

// PushContainerImage pushes a minimal Linux container image (an OCI image
// config and one tar+gzip layer).
func (r *Registry) PushContainerImage(ctx context.Context, repo, tag string) (Manifest, error) {
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	// An empty gzip stream stands in for a layer: the registry does not
	// look inside.
	layer := []byte{0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	return r.PushImage(ctx, repo, tag, ocispec.MediaTypeImageConfig, config,
		[]Layer{{MediaType: ocispec.MediaTypeImageLayerGzip, Data: layer}})
}

// PushIndex puts an OCI image index of entries (already pushed to repo).
func (r *Registry) PushIndex(ctx context.Context, repo, tag string, entries []IndexEntry) (Manifest, error) {
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}
	idx.SchemaVersion = 2
	for _, e := range entries {
		idx.Manifests = append(idx.Manifests, ocispec.Descriptor{
			MediaType: e.MediaType,
			Digest:    digestOf(e.Digest),
			Size:      e.Size,
			Platform:  &ocispec.Platform{OS: e.OS, Architecture: e.Architecture},
		})
	}
	body, err := json.Marshal(idx)
	if err != nil {
		return Manifest{}, err
	}
	return r.PushManifest(ctx, repo, tag, ocispec.MediaTypeImageIndex, body)
}

func (r *Registry) do(ctx context.Context, method, u, contentType string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if r.Username != "" {
		req.SetBasicAuth(r.Username, r.Password)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	return resp, nil
}

func digestOf(s string) digest.Digest { return digest.Digest(s) }

// Get returns the body of a GET of path (e.g. "/v2/repo/manifests/<digest>")
// with the Accept header set for OCI manifests and indexes.
func (r *Registry) Get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest+", "+ocispec.MediaTypeImageIndex)
	if r.Username != "" {
		req.SetBasicAuth(r.Username, r.Password)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %s", path, resp.Status)
	}
	return body, nil
}
