// Package regcache is the registry cache's domain API: the Cache interface
// that the node agent and the executors program against, the optional
// Pinner and PrecompiledStore, their request and result types, and their
// errors. It speaks only of artifacts and digests, holds no state and
// touches nothing; three packages implement or serve it:
//
//   - regcache/local: the cache itself, in-process (pulls with oras-go into a
//     content-addressed store on disk);
//   - regcache/proxy: a gRPC client of wasmlet.registry.v1 that implements
//     the same interfaces, so that a caller never knows which one it holds;
//   - regcache/server: the gRPC server that exposes any Cache.
//
// Errors are the sentinels below, wrapped with %w; the server and proxy map
// them to and from gRPC status codes, so errors.Is works across the wire.
// The contracts of pins and of precompiled modules are on Pinner and
// PrecompiledStore.
//
//	c, _ := local.New(local.Config{Dir: dir})
//	res, err := c.Resolve(ctx, regcache.ResolveRequest{Reference: "127.0.0.1:5000/hello:v1"})
//	rc, size, err := c.Fetch(ctx, res.ModuleDigest)
package regcache

import (
	"context"
	"errors"
	"io"
	"time"
)

// PullPolicy mirrors a container's imagePullPolicy.
type PullPolicy int

const (
	// PullIfNotPresent uses a cached digest for a tag when there is one.
	PullIfNotPresent PullPolicy = iota
	// PullAlways asks the origin for the tag's digest every time.
	PullAlways
	// PullNever uses the cache only.
	PullNever
)

// Credentials for one registry host.
type Credentials struct {
	Username      string
	Password      string
	IdentityToken string
	RegistryToken string
}

// ResolveRequest asks for the module a reference names.
type ResolveRequest struct {
	Reference string
	Policy    PullPolicy
	// Credentials by registry host ("host:port"); never stored or logged.
	Credentials map[string]Credentials
	// PinHolder, when set, pins the module for this holder (without a TTL)
	// before Resolve returns; see Pinner. Implementations that cannot pin
	// ignore it.
	PinHolder string
}

// Resolved is where a reference led.
type Resolved struct {
	Reference      string // normalised
	ManifestDigest string
	ModuleDigest   string // pass to Fetch
	ModuleSize     int64
	MediaType      string
	// Warning is set when a cached digest was used because the origin could
	// not be asked; the node agent turns it into a pod event.
	Warning string
}

// Cache resolves references to Wasm modules and serves modules by digest.
// Implementations are safe for concurrent use.
type Cache interface {
	// Resolve pulls what the policy says into the cache and returns the
	// module's digest. Once it returns, Fetch of ModuleDigest succeeds.
	Resolve(ctx context.Context, req ResolveRequest) (Resolved, error)
	// Fetch opens a cached blob by digest, with its size. The caller closes
	// it. ErrNotFound when the cache does not hold it.
	Fetch(ctx context.Context, digest string) (io.ReadCloser, int64, error)
}

// PinRequest keeps Digest from eviction for Holder.
type PinRequest struct {
	Holder string
	Digest string
	// TTL ends the pin by itself after this long; 0 means until Unpin.
	TTL time.Duration
}

// UnpinRequest releases Holder's pin of Digest, or all of Holder's pins
// when Digest is empty.
type UnpinRequest struct {
	Holder string
	Digest string
}

// Pinner keeps cached blobs from eviction while they are in use.
//
// A cache may have a size budget; past it, the least recently used blobs
// are evicted. A blob is never evicted while it is pinned, nor within a
// grace period after it was last used (resolved, fetched, put, pinned), so
// that a caller that resolves and then fetches is not raced by eviction
// even without pins. A caller whose artifact must outlive the grace period
// (an executor running an instance that may restart) pins it:
//
//	res, err := c.Resolve(ctx, regcache.ResolveRequest{Reference: ref, PinHolder: "executor/node-a/inst-42"})
//	// ... the instance runs; restarts Fetch res.ModuleDigest again ...
//	err = pinner.Unpin(ctx, regcache.UnpinRequest{Holder: "executor/node-a/inst-42"})
//
// A holder is an opaque string naming who holds the pin; pins of different
// holders are independent (an unpin releases only pins of exactly its
// holder), and one holder pinning a digest twice holds one pin (the second
// renews it). Over mutual TLS the gRPC server scopes the holder by the
// client's certificate, so that no client releases another's pins. Pins
// are kept on disk across restarts of the cache. A pin with a TTL ends by
// itself unless renewed, so a holder that dies without unpinning does not
// keep blobs forever; a holder that restarts releases its leftovers with
// Unpin(holder, "") at start-up. For an executor the simplest scheme is one
// holder per executor process (e.g. "executor/node-a/wasmtime"), pinning
// each digest its instances use (module and precompiled artifact) while at
// least one instance uses it: at start-up it releases everything with
// Unpin{Holder} and pins again what it re-adopts.
//
// Pinner and PrecompiledStore are apart from Cache because callers that
// only resolve and fetch (the node agent, test fakes) should not have to
// implement them; local.Cache and proxy.Client implement all three.
type Pinner interface {
	// Pin keeps a cached blob from eviction until Unpin or until the TTL
	// passes. It may be called more than once: a second call by the same
	// holder renews the pin with the new TTL. ErrNotFound when the cache
	// does not hold the blob (it may have been evicted: resolve again).
	Pin(ctx context.Context, req PinRequest) error
	// Unpin releases pins. Releasing a pin that does not exist is not an
	// error, so it may be called more than once.
	Unpin(ctx context.Context, req UnpinRequest) error
}

// PrecompiledKey names a precompiled module: the digest of the Wasm module
// it was compiled from and the key of the engine that compiled it. It is
// the one name of a precompiled artifact: the executors' engines use this
// type (as engine.ArtifactKey) and build EngineKey; the cache only
// compares it.
type PrecompiledKey struct {
	ModuleDigest string
	EngineKey    string
}

// Precompiled is what travels with a precompiled artifact's bytes: their
// sha256 digest ("sha256:<hex>"; Pin takes it) and size.
type Precompiled struct {
	Digest string
	Size   int64
}

// PrecompiledStore keeps engines' precompiled modules for the executors.
//
// An executor that compiled a module stores the engine's artifact under
// (module digest, engine key) with PutPrecompiled, and any executor with
// the same engine key gets it back with GetPrecompiled instead of
// compiling again. The engine key must name everything that makes an
// artifact loadable (engine, version, target, settings): the cache only
// compares keys. The artifact's sha256 digest travels with it and is
// verified before it becomes visible; the proxy client checks it again as
// it reads. The digest proves only that the bytes arrived intact, not who
// made them: a precompiled artifact is native code that executors load,
// so only executors may reach a cache that serves these RPCs (its unix
// socket, or mutual TLS); an executor signs what it puts and checks what it
// gets (its artifactsign, itself a PrecompiledStore over the proxy).
//
// It is also the executors' engines' store of shared artifacts
// (engine.ArtifactStore is this interface), so the proxy client is handed
// to an engine as it is: a miss is ErrNotFound, bytes that do not match
// their digest or size ErrDigestMismatch, on either side of the wire.
//
//	err := pc.PutPrecompiled(ctx, regcache.PrecompiledKey{ModuleDigest: m, EngineKey: k}, regcache.Precompiled{Digest: d, Size: n}, r)
//	rc, info, err := pc.GetPrecompiled(ctx, regcache.PrecompiledKey{ModuleDigest: m, EngineKey: k})
type PrecompiledStore interface {
	// PutPrecompiled stores the info.Size bytes read from r as the
	// artifact for key. info.Digest is the sha256 of those bytes:
	// ErrDigestMismatch, and nothing kept, when they differ; ErrTooLarge
	// past the configured limit. Putting a key again replaces its
	// artifact.
	PutPrecompiled(ctx context.Context, key PrecompiledKey, info Precompiled, r io.Reader) error
	// GetPrecompiled opens the artifact for key, with the digest and size
	// stored with it; the caller closes it. ErrNotFound when the cache
	// holds none (or, through the proxy, serves no precompiled modules).
	// A read whose bytes do not match the digest may end with
	// ErrDigestMismatch.
	GetPrecompiled(ctx context.Context, key PrecompiledKey) (io.ReadCloser, Precompiled, error)
}

// The errors a Cache returns, wrapped with detail.
var (
	// ErrInvalidReference: the reference cannot be parsed.
	ErrInvalidReference = errors.New("invalid reference")
	// ErrNotFound: the origin has no such repository, tag or digest, or the
	// cache lacks a digest asked of Fetch or under PullNever.
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized: the origin refused the credentials (or their absence).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrNotWasm: the artifact is not a Wasm module (e.g. a container image,
	// or an index without a wasip1/wasm entry).
	ErrNotWasm = errors.New("not a wasm artifact")
	// ErrDigestMismatch: content did not match its digest; nothing was kept.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrTooLarge: a manifest or layer exceeded the configured limit.
	ErrTooLarge = errors.New("too large")
	// ErrUnavailable: the origin could not be reached.
	ErrUnavailable = errors.New("registry unavailable")
)
