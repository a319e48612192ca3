// Package regcache is the registry cache's domain API: the Cache interface
// that the node agent and the executors program against, its request and
// result types, and its errors. Three things implement or serve it:
//
//   - regcache/local: the cache itself, in-process (pulls with oras-go into a
//     content-addressed store on disk);
//   - regcache/proxy: a gRPC client of wasmlet.registry.v1 that implements
//     the same interface, so that a caller never knows which one it holds;
//   - regcache/server: the gRPC server that exposes any Cache.
//
// Errors are the sentinels below, wrapped with %w; the server and proxy map
// them to and from gRPC status codes, so errors.Is works across the wire.
//
// Usage:
//
//	c, _ := local.New(local.Config{Dir: dir})
//	res, err := c.Resolve(ctx, regcache.ResolveRequest{Reference: "127.0.0.1:5000/hello:v1"})
//	rc, size, err := c.Fetch(ctx, res.ModuleDigest)
package regcache

import (
	"context"
	"errors"
	"io"
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
