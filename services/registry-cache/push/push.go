// Package push uploads a .wasm file to an OCI registry in the CNCF Wasm
// artifact layout, for tests, the dev stack and the registry-cache CLI.
//
// It owns only the upload; it does not touch the cache's store. The
// manifest it writes is a pure function of the module's bytes (no
// timestamps), so pushing the same module twice gives the same digest.
//
//	ref, err := push.Push(ctx, push.Options{File: "hello.wasm", Reference: "127.0.0.1:5000/hello:v1", PlainHTTP: true})
//	// ref is "127.0.0.1:5000/hello@sha256:..."
package push

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// Media types of the CNCF Wasm artifact layout.
const (
	MediaTypeConfig = "application/vnd.wasm.config.v0+json"
	MediaTypeLayer  = "application/wasm"
)

// Credentials for the target registry.
type Credentials struct {
	Username string
	Password string
}

// Options say what to push where.
type Options struct {
	// File is the .wasm file to push; or set Bytes.
	File  string
	Bytes []byte
	// Reference is host[:port]/repository[:tag]; without a tag the
	// manifest is pushed by digest only.
	Reference string
	// PlainHTTP talks HTTP instead of HTTPS.
	PlainHTTP bool
	// Credentials, when the registry wants them.
	Credentials Credentials
	// CAFile adds roots to the system roots for HTTPS.
	CAFile string
}

// wasmConfig is the artifact's config blob: deliberately without a
// creation time, so that equal modules give equal manifests.
type wasmConfig struct {
	Architecture string   `json:"architecture"`
	OS           string   `json:"os"`
	LayerDigests []string `json:"layerDigests"`
}

// Push uploads the module and its manifest and returns the reference by
// digest, host/repository@sha256:....
func Push(ctx context.Context, opts Options) (string, error) {
	module := opts.Bytes
	if opts.File != "" {
		b, err := os.ReadFile(opts.File)
		if err != nil {
			return "", fmt.Errorf("push: %w", err)
		}
		module = b
	}
	if len(module) == 0 {
		return "", errors.New("push: no module: set File or Bytes")
	}
	ref, err := registry.ParseReference(opts.Reference)
	if err != nil {
		return "", fmt.Errorf("push %s: %w", opts.Reference, err)
	}
	if _, err := ref.Digest(); err == nil {
		return "", fmt.Errorf("push %s: the reference names a digest; give a tag or no tag", opts.Reference)
	}
	repo, err := repository(ref, opts)
	if err != nil {
		return "", fmt.Errorf("push %s: %w", opts.Reference, err)
	}

	layer := ocispec.Descriptor{MediaType: MediaTypeLayer, Digest: digest.FromBytes(module), Size: int64(len(module))}
	config, err := json.Marshal(wasmConfig{Architecture: "wasm", OS: "wasip1", LayerDigests: []string{layer.Digest.String()}})
	if err != nil {
		return "", err
	}
	configDesc := ocispec.Descriptor{MediaType: MediaTypeConfig, Digest: digest.FromBytes(config), Size: int64(len(config))}
	manifest := ocispec.Manifest{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: MediaTypeConfig,
		Config:       configDesc,
		Layers:       []ocispec.Descriptor{layer},
	}
	manifest.SchemaVersion = 2
	body, err := json.Marshal(manifest)
	if err != nil {
		return "", err
	}
	manDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(body), Size: int64(len(body))}

	for _, b := range []struct {
		desc ocispec.Descriptor
		data []byte
	}{{layer, module}, {configDesc, config}} {
		if err := pushBlob(ctx, repo, b.desc, b.data); err != nil {
			return "", fmt.Errorf("push %s: blob %s: %w", opts.Reference, b.desc.Digest, err)
		}
	}
	if ref.Reference == "" {
		err = repo.Manifests().Push(ctx, manDesc, bytes.NewReader(body))
	} else {
		err = repo.PushReference(ctx, manDesc, bytes.NewReader(body), ref.Reference)
	}
	if err != nil {
		return "", fmt.Errorf("push %s: manifest: %w", opts.Reference, err)
	}
	return ref.Registry + "/" + ref.Repository + "@" + manDesc.Digest.String(), nil
}

func pushBlob(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor, data []byte) error {
	ok, err := repo.Exists(ctx, desc)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	err = repo.Push(ctx, desc, bytes.NewReader(data))
	if errors.Is(err, errdef.ErrAlreadyExists) {
		return nil
	}
	return err
}

func repository(ref registry.Reference, opts Options) (*remote.Repository, error) {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if opts.CAFile != "" {
		roots, err := x509.SystemCertPool()
		if err != nil {
			roots = x509.NewCertPool()
		}
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", opts.CAFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	client := &auth.Client{Client: &http.Client{Transport: transport}, Cache: auth.NewCache()}
	if opts.Credentials != (Credentials{}) {
		client.Credential = auth.StaticCredential(ref.Registry, auth.Credential{
			Username: opts.Credentials.Username,
			Password: opts.Credentials.Password,
		})
	}
	return &remote.Repository{
		Reference: registry.Reference{Registry: ref.Registry, Repository: ref.Repository},
		PlainHTTP: opts.PlainHTTP,
		Client:    client,
	}, nil
}
