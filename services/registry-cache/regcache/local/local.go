package local

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

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
func (c *Cache) PutPrecompiled(ctx context.Context, key regcache.PrecompiledKey, info regcache.Precompiled, r io.Reader) error {
	err := c.putPrecompiled(ctx, key, info.Digest, info.Size, r)
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
