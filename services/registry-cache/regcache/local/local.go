// Package local is the registry cache itself, in-process: it implements
// regcache.Cache by pulling Wasm OCI artifacts with oras-go into a
// content-addressed store on disk.
//
// It owns everything under Config.Dir: blobs/<algorithm>/<hex> (manifests,
// modules and precompiled artifacts, each verified against its digest
// before a rename makes it visible), blobs/tmp (downloads in progress; a
// crash's leftovers are removed at the next start), refs.json (the last
// digest each reference resolved to, so that PullIfNotPresent and PullNever
// work without the origin), pins.json with its journal pins.log, and
// precompiled.json. One process owns the directory: several node agents
// share a cache through its gRPC server, not by sharing the directory. It must not touch anything else on
// disk, and it never stores or logs credentials: they travel with each
// request.
//
// With Config.MaxStoreBytes set, the store is kept within that budget by
// evicting the least recently used blobs, never one that is pinned
// (regcache.Pinner) or was used within Config.EvictionGrace. The budget is
// soft: when everything left is pinned or recent, the store stays over it
// and a warning is logged.
//
// Concurrent requests for one reference, or for one blob across
// references, share a single download; it is cancelled when every caller
// waiting for it has given up, so an abandoned download leaves nothing.
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
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// Defaults for Config.
const (
	DefaultMaxManifestBytes    = 4 << 20
	DefaultMaxLayerBytes       = 256 << 20
	DefaultMaxPrecompiledBytes = 1 << 30
	DefaultEvictionGrace       = 5 * time.Minute
	// MaxEngineKeyLength bounds a precompiled module's engine key.
	MaxEngineKeyLength = 256
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
	// MaxPrecompiledBytes limits a precompiled artifact (default 1 GiB).
	MaxPrecompiledBytes int64
	// MaxStoreBytes is the store's size budget; 0 means no budget.
	MaxStoreBytes int64
	// EvictionGrace spares blobs used this recently from eviction, so that
	// a Resolve is not raced by eviction before its Fetch (default 5 min).
	EvictionGrace time.Duration
	// Metrics, when set, records what the cache does.
	Metrics *Metrics
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Cache is the in-process registry cache. It is safe for concurrent use.
type Cache struct {
	cfg     Config
	log     *slog.Logger
	store   *store
	http    *http.Client
	metrics *Metrics

	fmu     sync.Mutex
	flights map[string]*flight
}

// flight is a download shared by the callers waiting for it.
type flight struct {
	done    chan struct{}
	val     any
	err     error
	waiters int
	cancel  context.CancelFunc
}

var (
	_ regcache.Cache            = (*Cache)(nil)
	_ regcache.Pinner           = (*Cache)(nil)
	_ regcache.PrecompiledStore = (*Cache)(nil)
)

// New validates cfg, fills in defaults and opens the store.
func New(cfg Config) (*Cache, error) {
	if cfg.Dir == "" {
		return nil, errors.New("registry cache: Config.Dir is required")
	}
	if cfg.MaxManifestBytes < 0 || cfg.MaxLayerBytes < 0 || cfg.MaxPrecompiledBytes < 0 || cfg.MaxStoreBytes < 0 || cfg.EvictionGrace < 0 {
		return nil, errors.New("registry cache: size limits and the eviction grace must not be negative")
	}
	if cfg.MaxManifestBytes == 0 {
		cfg.MaxManifestBytes = DefaultMaxManifestBytes
	}
	if cfg.MaxLayerBytes == 0 {
		cfg.MaxLayerBytes = DefaultMaxLayerBytes
	}
	if cfg.MaxPrecompiledBytes == 0 {
		cfg.MaxPrecompiledBytes = DefaultMaxPrecompiledBytes
	}
	if cfg.EvictionGrace == 0 {
		cfg.EvictionGrace = DefaultEvictionGrace
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
	st, err := openStore(cfg.Dir, cfg.MaxStoreBytes, cfg.EvictionGrace, cfg.Logger, cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("registry cache: %w", err)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	transport.ResponseHeaderTimeout = 30 * time.Second
	return &Cache{
		cfg:     cfg,
		log:     cfg.Logger,
		store:   st,
		http:    &http.Client{Transport: transport},
		metrics: cfg.Metrics,
		flights: map[string]*flight{},
	}, nil
}

// Resolve implements regcache.Cache. With req.PinHolder set, the module is
// pinned before Resolve returns.
func (c *Cache) Resolve(ctx context.Context, req regcache.ResolveRequest) (regcache.Resolved, error) {
	res, err := c.resolve(ctx, req)
	if err == nil {
		if d, perr := digest.Parse(res.ModuleDigest); perr == nil {
			c.store.touch(d)
		}
		if req.PinHolder != "" {
			err = c.Pin(ctx, regcache.PinRequest{Holder: req.PinHolder, Digest: res.ModuleDigest})
		}
	}
	if err != nil {
		c.metrics.failed("resolve", err)
		return regcache.Resolved{}, err
	}
	return res, nil
}

func (c *Cache) resolve(ctx context.Context, req regcache.ResolveRequest) (regcache.Resolved, error) {
	ref, err := ParseReference(req.Reference)
	if err != nil {
		return regcache.Resolved{}, err
	}
	name := ref.String()
	cached, haveCached := c.store.lookup(name)
	switch req.Policy {
	case regcache.PullNever:
		if !haveCached {
			c.metrics.miss("module")
			return regcache.Resolved{}, fmt.Errorf("resolve %s: %w: the module is not in the cache and the pull policy is Never; pull it first or change the pull policy", name, regcache.ErrNotFound)
		}
		c.metrics.hit("module")
		return resolved(name, cached), nil
	case regcache.PullIfNotPresent:
		if haveCached {
			c.metrics.hit("module")
			return resolved(name, cached), nil
		}
	case regcache.PullAlways:
	default:
		return regcache.Resolved{}, fmt.Errorf("resolve %s: unknown pull policy %d", name, req.Policy)
	}

	pr, err := c.pullShared(ctx, ref, req.Credentials)
	if err != nil {
		if haveCached && errors.Is(err, regcache.ErrUnavailable) {
			c.metrics.hit("module")
			c.log.WarnContext(ctx, "registry unreachable, using cached digest", "reference", name, "digest", cached.ManifestDigest, "error", err)
			res := resolved(name, cached)
			res.Warning = fmt.Sprintf("the registry could not be asked for %s (%v); using the cached digest %s", name, err, cached.ManifestDigest)
			return res, nil
		}
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return regcache.Resolved{}, fmt.Errorf("pull %s: %w: gave up waiting for the registry; nothing was cached; check that the registry is up and answering, or allow more time", name, err)
		}
		return regcache.Resolved{}, fmt.Errorf("pull %s: %w", name, err)
	}
	if pr.downloaded {
		c.metrics.miss("module")
	} else {
		c.metrics.hit("module")
	}
	return resolved(name, pr.entry), nil
}

// Fetch implements regcache.Cache.
func (c *Cache) Fetch(ctx context.Context, dgst string) (io.ReadCloser, int64, error) {
	rc, size, err := c.fetch(dgst)
	if err != nil {
		c.metrics.failed("fetch", err)
		return nil, 0, err
	}
	c.metrics.served(size)
	return rc, size, nil
}

func (c *Cache) fetch(dgst string) (io.ReadCloser, int64, error) {
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

// Pin implements regcache.Pinner.
func (c *Cache) Pin(ctx context.Context, req regcache.PinRequest) error {
	err := c.pin(req)
	c.metrics.failed("pin", err)
	return err
}

func (c *Cache) pin(req regcache.PinRequest) error {
	if req.Holder == "" {
		return fmt.Errorf("pin %s: %w: the holder is empty; name who holds the pin", req.Digest, regcache.ErrInvalidReference)
	}
	if req.TTL < 0 {
		return fmt.Errorf("pin %s: %w: negative ttl %v", req.Digest, regcache.ErrInvalidReference, req.TTL)
	}
	d, err := digest.Parse(req.Digest)
	if err != nil {
		return fmt.Errorf("pin %q: %w: not a digest (%v)", req.Digest, regcache.ErrInvalidReference, err)
	}
	var expires time.Time
	if req.TTL > 0 {
		expires = c.store.now().Add(req.TTL)
	}
	return c.store.pin(d, req.Holder, expires)
}

// Unpin implements regcache.Pinner.
func (c *Cache) Unpin(ctx context.Context, req regcache.UnpinRequest) error {
	if req.Holder == "" {
		return fmt.Errorf("unpin: %w: the holder is empty", regcache.ErrInvalidReference)
	}
	var d digest.Digest
	if req.Digest != "" {
		var err error
		if d, err = digest.Parse(req.Digest); err != nil {
			return fmt.Errorf("unpin %q: %w: not a digest (%v)", req.Digest, regcache.ErrInvalidReference, err)
		}
	}
	return c.store.unpin(d, req.Holder)
}

// PutPrecompiled implements regcache.PrecompiledStore.
func (c *Cache) PutPrecompiled(ctx context.Context, key regcache.PrecompiledKey, dgst string, size int64, r io.Reader) error {
	err := c.putPrecompiled(ctx, key, dgst, size, r)
	c.metrics.failed("put_precompiled", err)
	return err
}

func (c *Cache) putPrecompiled(ctx context.Context, key regcache.PrecompiledKey, dgst string, size int64, r io.Reader) error {
	if err := validPrecompiledKey(key); err != nil {
		return err
	}
	d, err := digest.Parse(dgst)
	if err != nil || d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("put precompiled %s: %w: artifact digest %q is not sha256:<64 hex digits>", key.EngineKey, regcache.ErrInvalidReference, dgst)
	}
	if size < 0 {
		return fmt.Errorf("put precompiled %s: %w: negative size", key.EngineKey, regcache.ErrInvalidReference)
	}
	if _, err := c.store.write(d, size, c.cfg.MaxPrecompiledBytes, contextReader{ctx, r}); err != nil {
		return fmt.Errorf("put precompiled %s for module %s: %w", key.EngineKey, key.ModuleDigest, err)
	}
	if err := c.store.recordPrecompiled(key, d, size); err != nil {
		return fmt.Errorf("put precompiled %s for module %s: %w", key.EngineKey, key.ModuleDigest, err)
	}
	c.log.InfoContext(ctx, "stored precompiled module", "module", key.ModuleDigest, "engine", key.EngineKey, "digest", d, "size", size)
	return nil
}

// GetPrecompiled implements regcache.PrecompiledStore.
func (c *Cache) GetPrecompiled(ctx context.Context, key regcache.PrecompiledKey) (io.ReadCloser, regcache.Precompiled, error) {
	rc, info, err := c.getPrecompiled(key)
	switch {
	case err == nil:
		c.metrics.hit("precompiled")
		c.metrics.served(info.Size)
	case errors.Is(err, regcache.ErrNotFound):
		c.metrics.miss("precompiled")
	default:
		c.metrics.failed("get_precompiled", err)
	}
	return rc, info, err
}

func (c *Cache) getPrecompiled(key regcache.PrecompiledKey) (io.ReadCloser, regcache.Precompiled, error) {
	if err := validPrecompiledKey(key); err != nil {
		return nil, regcache.Precompiled{}, err
	}
	e, ok := c.store.lookupPrecompiled(key)
	if !ok {
		return nil, regcache.Precompiled{}, fmt.Errorf("get precompiled %s for module %s: %w: none is cached; compile the module and put it", key.EngineKey, key.ModuleDigest, regcache.ErrNotFound)
	}
	f, size, err := c.store.open(digest.Digest(e.Digest))
	if err != nil {
		return nil, regcache.Precompiled{}, fmt.Errorf("get precompiled %s for module %s: %w", key.EngineKey, key.ModuleDigest, err)
	}
	return f, regcache.Precompiled{Digest: e.Digest, Size: size}, nil
}

func validPrecompiledKey(key regcache.PrecompiledKey) error {
	if _, err := digest.Parse(key.ModuleDigest); err != nil {
		return fmt.Errorf("precompiled module: %w: module digest %q is not a digest (%v)", regcache.ErrInvalidReference, key.ModuleDigest, err)
	}
	if key.EngineKey == "" || len(key.EngineKey) > MaxEngineKeyLength {
		return fmt.Errorf("precompiled module %s: %w: the engine key must be 1 to %d bytes", key.ModuleDigest, regcache.ErrInvalidReference, MaxEngineKeyLength)
	}
	for _, r := range key.EngineKey {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("precompiled module %s: %w: the engine key %q holds control characters", key.ModuleDigest, regcache.ErrInvalidReference, key.EngineKey)
		}
	}
	return nil
}

// contextReader stops a copy when ctx ends (a client that went away
// mid-upload).
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (cr contextReader) Read(p []byte) (int, error) {
	if err := cr.ctx.Err(); err != nil {
		return 0, err
	}
	return cr.r.Read(p)
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

// shared runs fn once for all concurrent callers with the same key. fn's
// context is independent of any one caller's, so that a caller giving up
// does not fail the others; when the last waiting caller gives up, fn's
// context is cancelled, and a later caller starts afresh.
func (c *Cache) shared(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	c.fmu.Lock()
	f, ok := c.flights[key]
	if !ok {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sharedPullTimeout)
		f = &flight{done: make(chan struct{}), cancel: cancel}
		c.flights[key] = f
		go func() {
			defer cancel()
			v, err := fn(fctx)
			c.fmu.Lock()
			if c.flights[key] == f {
				delete(c.flights, key)
			}
			f.val, f.err = v, err
			c.fmu.Unlock()
			close(f.done)
		}()
	}
	f.waiters++
	c.fmu.Unlock()
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		c.fmu.Lock()
		f.waiters--
		if f.waiters == 0 {
			f.cancel()
			if c.flights[key] == f {
				delete(c.flights, key)
			}
		}
		c.fmu.Unlock()
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
