// Package local is the registry cache itself, in-process: it implements
// regcache.Cache, regcache.Pinner and regcache.PrecompiledStore by pulling
// Wasm OCI artifacts with oras-go into a content-addressed store on disk.
//
// It owns everything under Config.Dir: blobs/<algorithm>/<hex> (manifests,
// modules and precompiled artifacts, each verified against its digest
// before a rename makes it visible), blobs/tmp (downloads in progress; a
// crash's leftovers are removed at the next start), refs.json (the last
// digest each reference resolved to, so that PullIfNotPresent and
// PullNever work without the origin), pins.json with its journal pins.log,
// and precompiled.json. One process owns the directory: node agents share
// a cache through its gRPC server, not by sharing the directory. It must
// not touch anything else on disk, and it never stores or logs
// credentials: they travel with each request.
//
// With Config.MaxStoreBytes set, the store is kept within that budget by
// evicting the least recently used blobs, never one that is pinned or was
// used within Config.EvictionGrace; when everything left is pinned or
// recent, the store stays over it and a warning is logged. Concurrent
// requests for one reference, or for one blob across references, share a
// single download, cancelled when every caller waiting for it has given
// up.
//
// Accepted artifacts: the CNCF Wasm layout (config
// application/vnd.wasm.config.v0+json, one application/wasm layer), the
// older wasm-to-oci layout (one application/vnd.wasm.content.layer.v1+wasm
// layer), and image indexes with a wasip1/wasm entry. Container images are
// refused with regcache.ErrNotWasm.
//
// Files: local.go (Config, the Cache API), pull.go (asking the origin),
// flight.go (one download for concurrent callers), select.go (which
// manifest and layer), errors.go (origin errors → regcache sentinels),
// metrics.go; the store in store.go, blobs.go, refs.go, pins.go and
// precompiled.go.
//
//	c, err := local.New(local.Config{Dir: "/var/lib/wasmlet/registry"})
//	res, err := c.Resolve(ctx, regcache.ResolveRequest{Reference: "registry.example:5000/hello:v1"})
//	rc, size, err := c.Fetch(ctx, res.ModuleDigest)
package local
