// Package local is the registry cache itself, in-process: it implements
// regcache.Cache by pulling Wasm OCI artifacts with oras-go into a
// content-addressed store on disk.
//
// It owns everything under Config.Dir: blobs/<algorithm>/<hex> (manifests
// and modules, each verified against its digest before a rename makes it
// visible), blobs/tmp (downloads in progress) and refs.json (the last digest
// each reference resolved to, so that PullIfNotPresent and PullNever work
// without the origin). It must not touch anything else on disk, and it
// never stores or logs credentials: they travel with each request.
//
// Accepted artifacts: the CNCF Wasm layout (config
// application/vnd.wasm.config.v0+json, one application/wasm layer), the
// older wasm-to-oci layout (one application/vnd.wasm.content.layer.v1+wasm
// layer), and image indexes with a wasip1/wasm entry. Container images are
// refused with regcache.ErrNotWasm.
//
//	c, err := local.New(local.Config{Dir: "/var/lib/wasmlet/registry"})
//	res, err := c.Resolve(ctx, regcache.ResolveRequest{Reference: "registry.example:5000/hello:v1"})
//	rc, size, err := c.Fetch(ctx, res.ModuleDigest)
package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// Defaults for Config.
const (
	DefaultMaxManifestBytes = 4 << 20
	DefaultMaxLayerBytes    = 256 << 20
)

// sharedPullTimeout bounds a download that several callers share: it runs
// on past the first caller's cancellation, so it needs its own bound.
const sharedPullTimeout = 10 * time.Minute

// Config configures a Cache.
type Config struct {
	// Dir is where the cache keeps its files. Required.
	Dir string
	// InsecureHosts are registries ("host:port") reached by plain HTTP.
	InsecureHosts []string
	// CAFile is a PEM bundle of extra roots, added to the system roots.
	CAFile string
	// MaxManifestBytes limits a manifest or index (default 4 MiB).
	MaxManifestBytes int64
	// MaxLayerBytes limits a module layer (default 256 MiB).
	MaxLayerBytes int64
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Cache is the in-process registry cache. It is safe for concurrent use.
type Cache struct {
	cfg     Config
	log     *slog.Logger
	store   *store
	http    *http.Client
	flights singleflight.Group
}

var _ regcache.Cache = (*Cache)(nil)

// New validates cfg, fills in defaults and opens the store.
func New(cfg Config) (*Cache, error) {
	if cfg.Dir == "" {
		return nil, errors.New("registry cache: Config.Dir is required")
	}
	if cfg.MaxManifestBytes < 0 || cfg.MaxLayerBytes < 0 {
		return nil, errors.New("registry cache: size limits must not be negative")
	}
	if cfg.MaxManifestBytes == 0 {
		cfg.MaxManifestBytes = DefaultMaxManifestBytes
	}
	if cfg.MaxLayerBytes == 0 {
		cfg.MaxLayerBytes = DefaultMaxLayerBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.InsecureHosts = slices.Clone(cfg.InsecureHosts)
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("registry cache: read CA file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("registry cache: CA file %s holds no PEM certificate", cfg.CAFile)
		}
	}
	st, err := openStore(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("registry cache: %w", err)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	transport.ResponseHeaderTimeout = 30 * time.Second
	return &Cache{
		cfg:   cfg,
		log:   cfg.Logger,
		store: st,
		http:  &http.Client{Transport: transport},
	}, nil
}

// Resolve implements regcache.Cache.
func (c *Cache) Resolve(ctx context.Context, req regcache.ResolveRequest) (regcache.Resolved, error) {
	ref, err := ParseReference(req.Reference)
	if err != nil {
		return regcache.Resolved{}, err
	}
	name := ref.String()
	cached, haveCached := c.store.lookup(name)
	switch req.Policy {
	case regcache.PullNever:
		if !haveCached {
			return regcache.Resolved{}, fmt.Errorf("resolve %s: %w: the module is not in the cache and the pull policy is Never; pull it first or change the pull policy", name, regcache.ErrNotFound)
		}
		return resolved(name, cached), nil
	case regcache.PullIfNotPresent:
		if haveCached {
			return resolved(name, cached), nil
		}
	case regcache.PullAlways:
	default:
		return regcache.Resolved{}, fmt.Errorf("resolve %s: unknown pull policy %d", name, req.Policy)
	}

	entry, err := c.pullShared(ctx, ref, req.Credentials)
	if err != nil {
		if haveCached && errors.Is(err, regcache.ErrUnavailable) {
			c.log.WarnContext(ctx, "registry unreachable, using cached digest", "reference", name, "digest", cached.ManifestDigest, "error", err)
			res := resolved(name, cached)
			res.Warning = fmt.Sprintf("the registry could not be asked for %s (%v); using the cached digest %s", name, err, cached.ManifestDigest)
			return res, nil
		}
		return regcache.Resolved{}, fmt.Errorf("pull %s: %w", name, err)
	}
	return resolved(name, entry), nil
}

// Fetch implements regcache.Cache.
func (c *Cache) Fetch(ctx context.Context, dgst string) (io.ReadCloser, int64, error) {
	d, err := digest.Parse(dgst)
	if err != nil {
		return nil, 0, fmt.Errorf("fetch %q: %w: not a digest (%v); want sha256:<64 hex digits>", dgst, regcache.ErrInvalidReference, err)
	}
	f, size, err := c.store.open(d)
	if err != nil {
		return nil, 0, fmt.Errorf("fetch: %w", err)
	}
	return f, size, nil
}

func resolved(name string, e refEntry) regcache.Resolved {
	return regcache.Resolved{
		Reference:      name,
		ManifestDigest: e.ManifestDigest,
		ModuleDigest:   e.ModuleDigest,
		ModuleSize:     e.ModuleSize,
		MediaType:      e.MediaType,
	}
}

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
func (c *Cache) pullShared(ctx context.Context, ref registry.Reference, creds map[string]regcache.Credentials) (refEntry, error) {
	key := ref.String() + "\x00" + credentialKey(creds, ref.Registry)
	v, err := c.shared(ctx, "pull\x00"+key, func(ctx context.Context) (any, error) {
		return c.pull(ctx, ref, creds)
	})
	if err != nil {
		return refEntry{}, err
	}
	return v.(refEntry), nil
}

func (c *Cache) shared(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	ch := c.flights.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sharedPullTimeout)
		defer cancel()
		return fn(fctx)
	})
	select {
	case r := <-ch:
		return r.Val, r.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
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

// pull asks the origin for ref, picks and downloads the module, and only
// then stores the manifests and records the reference.
func (c *Cache) pull(ctx context.Context, ref registry.Reference, creds map[string]regcache.Credentials) (refEntry, error) {
	start := time.Now()
	repo := c.repository(ref, creds)
	top, body, err := c.fetchManifest(ctx, repo, ref.Reference)
	if err != nil {
		return refEntry{}, err
	}
	manifests := []manifestBlob{{top, body}}
	kind, m, err := classify(top.MediaType, body)
	if err != nil {
		return refEntry{}, err
	}
	if kind == kindIndex {
		entry, err := selectPlatform(m)
		if err != nil {
			return refEntry{}, err
		}
		child, childBody, err := c.fetchManifest(ctx, repo, entry.Digest.String())
		if err != nil {
			return refEntry{}, err
		}
		kind, m, err = classify(child.MediaType, childBody)
		if err != nil {
			return refEntry{}, err
		}
		if kind != kindImage {
			return refEntry{}, fmt.Errorf("%w: the %s/%s entry of the index is itself an index", regcache.ErrNotWasm, wasmOS, wasmArch)
		}
		manifests = append(manifests, manifestBlob{child, childBody})
	}
	layer, err := selectModule(m)
	if err != nil {
		return refEntry{}, err
	}
	if err := c.fetchBlob(ctx, repo, layer); err != nil {
		return refEntry{}, err
	}
	for _, mb := range manifests {
		if err := c.store.write(mb.desc.Digest, mb.desc.Size, c.cfg.MaxManifestBytes, bytes.NewReader(mb.body)); err != nil {
			return refEntry{}, err
		}
	}
	e := refEntry{
		ManifestDigest: top.Digest.String(),
		ModuleDigest:   layer.Digest.String(),
		ModuleSize:     layer.Size,
		MediaType:      layer.MediaType,
	}
	if err := c.store.record(ref.String(), e); err != nil {
		return refEntry{}, err
	}
	c.log.InfoContext(ctx, "pulled module", "reference", ref.String(), "manifest", e.ManifestDigest,
		"module", e.ModuleDigest, "size", e.ModuleSize, "duration", time.Since(start))
	return e, nil
}

type manifestBlob struct {
	desc ocispec.Descriptor
	body []byte
}

// fetchManifest gets a manifest by tag or digest and checks it against its
// digest (the one asked for, or the one the registry announced).
func (c *Cache) fetchManifest(ctx context.Context, repo *remote.Repository, reference string) (ocispec.Descriptor, []byte, error) {
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

// fetchBlob downloads a layer into the store unless it is there already.
// Concurrent downloads of one digest share a single request upstream.
func (c *Cache) fetchBlob(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor) error {
	if err := desc.Digest.Validate(); err != nil {
		return fmt.Errorf("layer digest %q: %w", desc.Digest, err)
	}
	if c.store.has(desc.Digest) {
		return nil
	}
	if desc.Size > c.cfg.MaxLayerBytes {
		return fmt.Errorf("layer %s: %w: %d bytes, over the limit of %d bytes; raise the limit or use a smaller module",
			desc.Digest, regcache.ErrTooLarge, desc.Size, c.cfg.MaxLayerBytes)
	}
	_, err := c.shared(ctx, "blob\x00"+desc.Digest.String(), func(ctx context.Context) (any, error) {
		if c.store.has(desc.Digest) {
			return nil, nil
		}
		rc, err := repo.Fetch(ctx, desc)
		if err != nil {
			return nil, originError(err)
		}
		defer rc.Close()
		if err := c.store.write(desc.Digest, desc.Size, c.cfg.MaxLayerBytes, rc); err != nil {
			return nil, originError(err)
		}
		return nil, nil
	})
	return err
}
