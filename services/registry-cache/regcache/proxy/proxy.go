// Package proxy is a gRPC client of wasmlet.registry.v1 that implements
// regcache.Cache, regcache.Pinner and regcache.PrecompiledStore (streamed
// in chunks, the artifact's digest checked as it is read), so that a node
// agent or executor can use a remote registry cache exactly as it would
// the in-process one; cachetest runs against it over a real server.
// Status codes are mapped back to the regcache sentinels, keeping the
// server's message, so errors.Is(err, regcache.ErrNotFound) holds across
// the wire. A server that stores no precompiled modules (an older or a
// restricted cache: Unimplemented) is remembered, and its gets are misses
// (regcache.ErrNotFound) from then on without a call. It owns no state
// beyond that and the connection it is given, which the caller closes.
//
//	conn, _ := grpcutil.Dial("unix:///run/wasmlet/registry.sock")
//	var c regcache.Cache = proxy.New(conn)
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	godigest "github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	registryv1 "github.com/wasmlet/wasmlet/gen/wasmlet/registry/v1"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/internal/wire"
)

// Client implements regcache.Cache over gRPC.
type Client struct {
	rpc  registryv1.RegistryServiceClient
	name string // the cache's address, named when it cannot be reached
	// noPrecompiled is set once the server answered that it stores no
	// precompiled modules: later gets are misses, puts fail, without a call.
	noPrecompiled atomic.Bool
}

// errNoPrecompiled: the server serves no precompiled modules.
var errNoPrecompiled = errors.New("the registry cache does not store precompiled modules (an older or a restricted one)")

// precompiledUnsupported reports whether err says the server stores no
// precompiled modules, and remembers it.
func (c *Client) precompiledUnsupported(err error) bool {
	if status.Code(err) != codes.Unimplemented {
		return false
	}
	c.noPrecompiled.Store(true)
	return true
}

// noPrecompiledGet is a get's answer from a server without precompiled
// modules: a miss.
func noPrecompiledGet(key regcache.PrecompiledKey) error {
	return fmt.Errorf("get precompiled %s: %w: %w", key.EngineKey, regcache.ErrNotFound, errNoPrecompiled)
}

var (
	_ regcache.Cache            = (*Client)(nil)
	_ regcache.Pinner           = (*Client)(nil)
	_ regcache.PrecompiledStore = (*Client)(nil)
)

// New returns a client that talks over conn.
func New(conn grpc.ClientConnInterface) *Client {
	c := &Client{rpc: registryv1.NewRegistryServiceClient(conn), name: "the registry cache"}
	if t, ok := conn.(interface{ Target() string }); ok {
		c.name = "the registry cache at " + strings.TrimPrefix(t.Target(), "passthrough:///")
	}
	return c
}

// fromStatus maps a call's error back to the regcache sentinels, and says
// which cache did not answer when the call never reached it (a connection
// refused or cut, a keepalive ping unanswered: a paused or stopped cache),
// which the bare transport error does not say. The cache's own
// Unavailable (the origin registry could not be reached) says so in its
// message and is left as it is.
func fromStatus(err error, cache string) error {
	e := wire.FromStatus(err)
	if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable && !strings.Contains(st.Message(), regcache.ErrUnavailable.Error()) {
		return fmt.Errorf("%s did not answer: %w", cache, e)
	}
	return e
}

// Resolve implements regcache.Cache.
func (c *Client) Resolve(ctx context.Context, req regcache.ResolveRequest) (regcache.Resolved, error) {
	policy := wire.PolicyToProto(req.Policy)
	if policy < 0 {
		return regcache.Resolved{}, fmt.Errorf("resolve %s: unknown pull policy %d", req.Reference, req.Policy)
	}
	preq := &registryv1.ResolveRequest{Reference: req.Reference, PullPolicy: policy, PinHolder: req.PinHolder}
	if len(req.Credentials) > 0 {
		preq.Credentials = make(map[string]*registryv1.Credentials, len(req.Credentials))
		for host, cr := range req.Credentials {
			preq.Credentials[host] = &registryv1.Credentials{
				Username:      cr.Username,
				Password:      cr.Password,
				IdentityToken: cr.IdentityToken,
				RegistryToken: cr.RegistryToken,
			}
		}
	}
	resp, err := c.rpc.Resolve(ctx, preq)
	if err != nil {
		return regcache.Resolved{}, fromStatus(err, c.name)
	}
	return regcache.Resolved{
		Reference:      resp.GetReference(),
		ManifestDigest: resp.GetManifestDigest(),
		ModuleDigest:   resp.GetModuleDigest(),
		ModuleSize:     resp.GetModuleSize(),
		MediaType:      resp.GetMediaType(),
		Warning:        resp.GetWarning(),
	}, nil
}

// Fetch implements regcache.Cache. It waits for the first message, so that
// a missing blob fails here and the size is known; the returned reader
// yields the rest of the stream and ends the call when closed.
func (c *Client) Fetch(ctx context.Context, digest string) (io.ReadCloser, int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.rpc.Fetch(ctx, &registryv1.FetchRequest{Digest: digest})
	if err != nil {
		cancel()
		return nil, 0, fromStatus(err, c.name)
	}
	first, err := stream.Recv()
	if err != nil {
		cancel()
		if errors.Is(err, io.EOF) {
			return nil, 0, fmt.Errorf("fetch %s: the server ended the stream without data", digest)
		}
		return nil, 0, fromStatus(err, c.name)
	}
	size := first.GetSize()
	recv := func() ([]byte, error) {
		msg, err := stream.Recv()
		return msg.GetChunk(), err
	}
	return &reader{recv: recv, cancel: cancel, buf: first.GetChunk(), want: size, digest: digest, cache: c.name}, size, nil
}

// Pin implements regcache.Pinner. The TTL travels in whole seconds,
// rounded up.
func (c *Client) Pin(ctx context.Context, req regcache.PinRequest) error {
	if req.TTL < 0 {
		return fmt.Errorf("pin %s: %w: negative ttl %v", req.Digest, regcache.ErrInvalidReference, req.TTL)
	}
	ttl := int64((req.TTL + time.Second - 1) / time.Second)
	_, err := c.rpc.Pin(ctx, &registryv1.PinRequest{Holder: req.Holder, Digest: req.Digest, TtlSeconds: ttl})
	return fromStatus(err, c.name)
}

// Unpin implements regcache.Pinner.
func (c *Client) Unpin(ctx context.Context, req regcache.UnpinRequest) error {
	_, err := c.rpc.Unpin(ctx, &registryv1.UnpinRequest{Holder: req.Holder, Digest: req.Digest})
	return fromStatus(err, c.name)
}

// PutPrecompiled implements regcache.PrecompiledStore: it streams r in
// chunks of server.ChunkSize bytes.
func (c *Client) PutPrecompiled(ctx context.Context, key regcache.PrecompiledKey, info regcache.Precompiled, r io.Reader) error {
	if c.noPrecompiled.Load() {
		return fmt.Errorf("put precompiled %s: %w", key.EngineKey, errNoPrecompiled)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.rpc.PutPrecompiled(ctx)
	if c.precompiledUnsupported(err) {
		return fmt.Errorf("put precompiled %s: %w", key.EngineKey, errNoPrecompiled)
	}
	if err != nil {
		return fromStatus(err, c.name)
	}
	first := &registryv1.PutPrecompiledRequest{ModuleDigest: key.ModuleDigest, EngineKey: key.EngineKey, Digest: info.Digest, Size: info.Size}
	buf := make([]byte, chunkSize)
	for {
		n, rerr := io.ReadFull(r, buf)
		if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
			return fmt.Errorf("put precompiled %s: read: %w", key.EngineKey, rerr)
		}
		if n > 0 || first != nil {
			msg := first
			if msg == nil {
				msg = &registryv1.PutPrecompiledRequest{}
			}
			first = nil
			msg.Chunk = buf[:n]
			if err := stream.Send(msg); err != nil {
				// The server ended the call; its status comes with CloseAndRecv.
				break
			}
		}
		if rerr != nil {
			break
		}
	}
	_, err = stream.CloseAndRecv()
	if c.precompiledUnsupported(err) {
		return fmt.Errorf("put precompiled %s: %w", key.EngineKey, errNoPrecompiled)
	}
	return fromStatus(err, c.name)
}

// GetPrecompiled implements regcache.PrecompiledStore, like Fetch; the
// reader also checks the bytes against the artifact's digest, and ends
// with regcache.ErrDigestMismatch instead of io.EOF when they differ.
func (c *Client) GetPrecompiled(ctx context.Context, key regcache.PrecompiledKey) (io.ReadCloser, regcache.Precompiled, error) {
	if c.noPrecompiled.Load() {
		return nil, regcache.Precompiled{}, noPrecompiledGet(key)
	}
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.rpc.GetPrecompiled(ctx, &registryv1.GetPrecompiledRequest{ModuleDigest: key.ModuleDigest, EngineKey: key.EngineKey})
	if err == nil {
		var first *registryv1.GetPrecompiledResponse
		if first, err = stream.Recv(); err == nil {
			return c.precompiledReader(key, first, stream, cancel)
		}
	}
	cancel()
	switch {
	case c.precompiledUnsupported(err):
		return nil, regcache.Precompiled{}, noPrecompiledGet(key)
	case errors.Is(err, io.EOF):
		return nil, regcache.Precompiled{}, fmt.Errorf("get precompiled %s: the server ended the stream without data", key.EngineKey)
	}
	return nil, regcache.Precompiled{}, fromStatus(err, c.name)
}

// precompiledReader reads the artifact whose first message is first, the
// bytes checked against its digest as they are read.
func (c *Client) precompiledReader(key regcache.PrecompiledKey, first *registryv1.GetPrecompiledResponse, stream grpc.ServerStreamingClient[registryv1.GetPrecompiledResponse], cancel context.CancelFunc) (io.ReadCloser, regcache.Precompiled, error) {
	info := regcache.Precompiled{Digest: first.GetDigest(), Size: first.GetSize()}
	recv := func() ([]byte, error) {
		msg, err := stream.Recv()
		return msg.GetChunk(), err
	}
	d, err := godigest.Parse(info.Digest)
	if err != nil {
		cancel()
		return nil, regcache.Precompiled{}, fmt.Errorf("get precompiled %s: the server sent digest %q: %w", key.EngineKey, info.Digest, regcache.ErrDigestMismatch)
	}
	return &reader{recv: recv, cancel: cancel, buf: first.GetChunk(), want: info.Size, digest: info.Digest, verifier: d.Verifier(), cache: c.name}, info, nil
}

// chunkSize matches the server's chunks.
const chunkSize = 256 << 10

// reader reads the chunks of a server stream.
type reader struct {
	recv     func() ([]byte, error)
	verifier godigest.Verifier // nil: not checked here
	cancel   context.CancelFunc
	buf      []byte
	got      int64
	want     int64
	digest   string
	cache    string // Client.name
	err      error
}

func (r *reader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		chunk, err := r.recv()
		if errors.Is(err, io.EOF) {
			switch {
			case r.got != r.want:
				r.err = fmt.Errorf("fetch %s: stream ended after %d of %d bytes: %w", r.digest, r.got, r.want, io.ErrUnexpectedEOF)
			case r.verifier != nil && !r.verifier.Verified():
				r.err = fmt.Errorf("fetch %s: %w: the bytes received do not match the digest", r.digest, regcache.ErrDigestMismatch)
			default:
				r.err = io.EOF
			}
			continue
		}
		if err != nil {
			r.err = fromStatus(err, r.cache)
			continue
		}
		r.buf = chunk
	}
	n := copy(p, r.buf)
	if r.verifier != nil {
		r.verifier.Write(p[:n])
	}
	r.buf = r.buf[n:]
	r.got += int64(n)
	return n, nil
}

func (r *reader) Close() error {
	r.cancel()
	return nil
}
