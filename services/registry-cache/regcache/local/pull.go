package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// ParseReference parses host[:port]/repository[:tag|@digest]; a missing
// tag means "latest". Errors wrap regcache.ErrInvalidReference.
func ParseReference(s string) (registry.Reference, error) {
	ref, err := registry.ParseReference(s)
	if err != nil {
		return registry.Reference{}, fmt.Errorf("reference %q: %w: %v; want host[:port]/repository[:tag] or host[:port]/repository@sha256:<digest>",
			s, regcache.ErrInvalidReference, err)
	}
	if ref.Reference == "" {
		ref.Reference = "latest"
	}
	return ref, nil
}

// pullShared runs one pull per reference and set of credentials at a time;
// concurrent callers wait for it and share its result. Each caller may
// give up when its own context ends; the pull goes on for the others.
func (c *Cache) pullShared(ctx context.Context, ref registry.Reference, creds map[string]regcache.Credentials) (pullResult, error) {
	key := ref.String() + "\x00" + credentialKey(creds, ref.Registry)
	v, err := c.shared(ctx, "pull\x00"+key, func(ctx context.Context) (any, error) {
		start := time.Now()
		pr, err := c.pull(ctx, ref, creds)
		c.metrics.pulled(start, err)
		return pr, err
	})
	if err != nil {
		return pullResult{}, err
	}
	return v.(pullResult), nil
}

// credentialKey fingerprints the credentials for host, so that callers with
// different credentials never share a pull (one must not ride on
// another's access).
func credentialKey(creds map[string]regcache.Credentials, host string) string {
	cr, ok := lookupCredentials(creds, host)
	if !ok {
		return "anonymous"
	}
	h := sha256.New()
	for _, s := range []string{cr.Username, cr.Password, cr.IdentityToken, cr.RegistryToken} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// lookupCredentials finds host's credentials, also under keys written the
// docker config.json way ("https://host/").
func lookupCredentials(creds map[string]regcache.Credentials, host string) (regcache.Credentials, bool) {
	if cr, ok := creds[host]; ok {
		return cr, true
	}
	for k, cr := range creds {
		k = strings.TrimPrefix(strings.TrimPrefix(k, "https://"), "http://")
		k, _, _ = strings.Cut(k, "/")
		if k == host {
			return cr, true
		}
	}
	return regcache.Credentials{}, false
}

func (c *Cache) repository(ref registry.Reference, creds map[string]regcache.Credentials) *remote.Repository {
	repo := &remote.Repository{
		Reference: registry.Reference{Registry: ref.Registry, Repository: ref.Repository},
		PlainHTTP: slices.Contains(c.cfg.InsecureHosts, ref.Registry),
		Client: &auth.Client{
			Client: c.http,
			// A token cache per pull: tokens obtained with one caller's
			// credentials are never reused for another's.
			Cache: auth.NewCache(),
			Credential: func(_ context.Context, hostport string) (auth.Credential, error) {
				cr, ok := lookupCredentials(creds, hostport)
				if !ok {
					return auth.EmptyCredential, nil
				}
				return auth.Credential{
					Username:     cr.Username,
					Password:     cr.Password,
					RefreshToken: cr.IdentityToken,
					AccessToken:  cr.RegistryToken,
				}, nil
			},
		},
		MaxMetadataBytes: c.cfg.MaxManifestBytes,
	}
	repo.Client.(*auth.Client).SetUserAgent("wasmlet-registry-cache")
	return repo
}

// pullResult is what a pull found, and whether it downloaded the module.
type pullResult struct {
	entry      refEntry
	downloaded bool
}

// pull asks the origin for ref, picks and downloads the module, and only
// then stores the manifests and records the reference.
func (c *Cache) pull(ctx context.Context, ref registry.Reference, creds map[string]regcache.Credentials) (pullResult, error) {
	start := time.Now()
	repo := c.repository(ref, creds)
	top, body, err := c.fetchManifest(ctx, repo, ref.Reference)
	if err != nil {
		return pullResult{}, err
	}
	manifests := []manifestBlob{{top, body}}
	kind, m, err := classify(top.MediaType, body)
	if err != nil {
		return pullResult{}, err
	}
	if kind == kindIndex {
		entry, err := selectPlatform(m)
		if err != nil {
			return pullResult{}, err
		}
		child, childBody, err := c.fetchManifest(ctx, repo, entry.Digest.String())
		if err != nil {
			return pullResult{}, err
		}
		kind, m, err = classify(child.MediaType, childBody)
		if err != nil {
			return pullResult{}, err
		}
		if kind != kindImage {
			return pullResult{}, fmt.Errorf("%w: the %s/%s entry of the index is itself an index", regcache.ErrNotWasm, wasmOS, wasmArch)
		}
		manifests = append(manifests, manifestBlob{child, childBody})
	}
	layer, err := selectModule(m)
	if err != nil {
		return pullResult{}, err
	}
	downloaded, err := c.fetchBlob(ctx, repo, layer)
	if err != nil {
		return pullResult{}, err
	}
	for _, mb := range manifests {
		if _, err := c.store.write(mb.desc.Digest, mb.desc.Size, c.cfg.MaxManifestBytes, bytes.NewReader(mb.body)); err != nil {
			return pullResult{}, err
		}
	}
	e := refEntry{
		ManifestDigest: top.Digest.String(),
		ModuleDigest:   layer.Digest.String(),
		ModuleSize:     layer.Size,
		MediaType:      layer.MediaType,
	}
	if err := c.store.record(ref.String(), e); err != nil {
		return pullResult{}, err
	}
	c.log.InfoContext(ctx, "pulled module", "reference", ref.String(), "manifest", e.ManifestDigest,
		"module", e.ModuleDigest, "size", e.ModuleSize, "downloaded", downloaded, "duration", time.Since(start))
	return pullResult{entry: e, downloaded: downloaded}, nil
}

type manifestBlob struct {
	desc ocispec.Descriptor
	body []byte
}

// fetchManifest gets a manifest by tag or digest and checks it against its
// digest (the one asked for, or the one the registry announced).
func (c *Cache) fetchManifest(ctx context.Context, repo *remote.Repository, reference string) (ocispec.Descriptor, []byte, error) {
	c.metrics.originRequest("manifest")
	desc, rc, err := repo.FetchReference(ctx, reference)
	if err != nil {
		return ocispec.Descriptor{}, nil, originError(err)
	}
	defer rc.Close()
	if want, err := digest.Parse(reference); err == nil && want != desc.Digest {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s: %w: the registry answered with %s", want, regcache.ErrDigestMismatch, desc.Digest)
	}
	limit := c.cfg.MaxManifestBytes
	if desc.Size > limit {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s: %w: %d bytes, over the limit of %d bytes", desc.Digest, regcache.ErrTooLarge, desc.Size, limit)
	}
	body, err := io.ReadAll(io.LimitReader(rc, limit+1))
	c.metrics.originRead(int64(len(body)))
	if err != nil {
		return ocispec.Descriptor{}, nil, originError(err)
	}
	if int64(len(body)) > limit {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s: %w: over the limit of %d bytes", desc.Digest, regcache.ErrTooLarge, limit)
	}
	if desc.Digest.Validate() != nil || desc.Digest.Algorithm().FromBytes(body) != desc.Digest || int64(len(body)) != desc.Size {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s: %w: the content the registry sent does not match; nothing was cached", desc.Digest, regcache.ErrDigestMismatch)
	}
	return desc, body, nil
}

// fetchBlob downloads a layer into the store unless it is there already,
// and says whether it had to. Concurrent downloads of one digest share a
// single request upstream.
func (c *Cache) fetchBlob(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor) (bool, error) {
	if err := desc.Digest.Validate(); err != nil {
		return false, fmt.Errorf("layer digest %q: %w", desc.Digest, err)
	}
	if c.store.has(desc.Digest) {
		return false, nil
	}
	if desc.Size > c.cfg.MaxLayerBytes {
		return false, fmt.Errorf("layer %s: %w: %d bytes, over the limit of %d bytes; raise the limit or use a smaller module",
			desc.Digest, regcache.ErrTooLarge, desc.Size, c.cfg.MaxLayerBytes)
	}
	v, err := c.shared(ctx, "blob\x00"+desc.Digest.String(), func(ctx context.Context) (any, error) {
		if c.store.has(desc.Digest) {
			return false, nil
		}
		c.metrics.originRequest("blob")
		rc, err := repo.Fetch(ctx, desc)
		if err != nil {
			err = originError(err)
			if errors.Is(err, regcache.ErrNotFound) {
				err = fmt.Errorf("layer %s: %w: the manifest names it but the registry does not have it; push the module again", desc.Digest, regcache.ErrNotFound)
			}
			return false, err
		}
		defer rc.Close()
		n, err := c.store.write(desc.Digest, desc.Size, c.cfg.MaxLayerBytes, rc)
		c.metrics.originRead(n)
		if err != nil {
			return false, originError(err)
		}
		return true, nil
	})
	if err != nil {
		return false, err
	}
	return v.(bool), nil
}
