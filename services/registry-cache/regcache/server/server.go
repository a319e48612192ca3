// Package server exposes any regcache.Cache as the gRPC service
// wasmlet.registry.v1.RegistryService. It owns only the translation between
// protobuf messages and the Cache interface, and error codes at that
// boundary; it keeps no state and touches no disk. Pin/Unpin and the
// precompiled-module RPCs are served when the Cache also implements
// regcache.Pinner and regcache.PrecompiledStore (local.Cache does), and
// answer UNIMPLEMENTED otherwise.
//
// Pins are per holder, and a holder is a name the client gives; over
// mutual TLS the server scopes it by the client's certificate (see
// holder), so that a client can renew and release only its own pins,
// whatever name it gives. A client on the unix socket (mode 0600: the
// cache's own user) names holders as it likes.
//
//	srv := grpc.NewServer()
//	server.New(cache).Register(srv)
//	grpcutil.Serve(ctx, srv, listener, 5*time.Second)
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	registryv1 "github.com/wasmlet/wasmlet/gen/wasmlet/registry/v1"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/internal/wire"
)

// ChunkSize is the most bytes one Fetch message carries.
const ChunkSize = 256 << 10

// Server serves a Cache over gRPC.
type Server struct {
	registryv1.UnimplementedRegistryServiceServer
	cache       regcache.Cache
	pinner      regcache.Pinner           // nil: unimplemented
	precompiled regcache.PrecompiledStore // nil: unimplemented
}

var _ registryv1.RegistryServiceServer = (*Server)(nil)

// New returns a server for c.
func New(c regcache.Cache) *Server {
	s := &Server{cache: c}
	s.pinner, _ = c.(regcache.Pinner)
	s.precompiled, _ = c.(regcache.PrecompiledStore)
	return s
}

// Register adds the service to s.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	registryv1.RegisterRegistryServiceServer(r, s)
}

// Resolve implements registryv1.RegistryServiceServer.
func (s *Server) Resolve(ctx context.Context, req *registryv1.ResolveRequest) (*registryv1.ResolveResponse, error) {
	policy, ok := wire.PolicyFromProto(req.GetPullPolicy())
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "resolve %s: unknown pull policy %v", req.GetReference(), req.GetPullPolicy())
	}
	var creds map[string]regcache.Credentials
	if len(req.GetCredentials()) > 0 {
		creds = make(map[string]regcache.Credentials, len(req.GetCredentials()))
		for host, c := range req.GetCredentials() {
			creds[host] = regcache.Credentials{
				Username:      c.GetUsername(),
				Password:      c.GetPassword(),
				IdentityToken: c.GetIdentityToken(),
				RegistryToken: c.GetRegistryToken(),
			}
		}
	}
	res, err := s.cache.Resolve(ctx, regcache.ResolveRequest{Reference: req.GetReference(), Policy: policy, Credentials: creds, PinHolder: holder(ctx, req.GetPinHolder())})
	if err != nil {
		return nil, wire.ToStatus(err)
	}
	return &registryv1.ResolveResponse{
		Reference:      res.Reference,
		ManifestDigest: res.ManifestDigest,
		ModuleDigest:   res.ModuleDigest,
		ModuleSize:     res.ModuleSize,
		MediaType:      res.MediaType,
		Warning:        res.Warning,
	}, nil
}

// Fetch implements registryv1.RegistryServiceServer: the size travels in
// the first message, with the first chunk; an empty blob is one message.
func (s *Server) Fetch(req *registryv1.FetchRequest, stream grpc.ServerStreamingServer[registryv1.FetchResponse]) error {
	rc, size, err := s.cache.Fetch(stream.Context(), req.GetDigest())
	if err != nil {
		return wire.ToStatus(err)
	}
	defer rc.Close()
	return sendChunks(rc, size, "fetch "+req.GetDigest(), func(chunk []byte, first bool) error {
		msg := &registryv1.FetchResponse{Chunk: chunk}
		if first {
			msg.Size = size
		}
		return stream.Send(msg)
	})
}

// sendChunks sends rc in chunks of at most ChunkSize; the first call has
// first set, and an empty blob is one call.
func sendChunks(rc io.Reader, size int64, what string, send func(chunk []byte, first bool) error) error {
	buf := make([]byte, ChunkSize)
	first := true
	var sent int64
	for {
		n, err := io.ReadFull(rc, buf)
		if n > 0 || first {
			if serr := send(buf[:n], first); serr != nil {
				return serr
			}
			first = false
			sent += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return wire.ToStatus(fmt.Errorf("%s: read: %w", what, err))
		}
	}
	if sent != size {
		return status.Errorf(codes.DataLoss, "%s: sent %d bytes, want %d", what, sent, size)
	}
	return nil
}

// Pin implements registryv1.RegistryServiceServer.
func (s *Server) Pin(ctx context.Context, req *registryv1.PinRequest) (*registryv1.PinResponse, error) {
	if s.pinner == nil {
		return nil, status.Error(codes.Unimplemented, "this registry cache does not pin")
	}
	if req.GetTtlSeconds() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "pin %s: negative ttl_seconds", req.GetDigest())
	}
	err := s.pinner.Pin(ctx, regcache.PinRequest{Holder: holder(ctx, req.GetHolder()), Digest: req.GetDigest(), TTL: time.Duration(req.GetTtlSeconds()) * time.Second})
	if err != nil {
		return nil, wire.ToStatus(err)
	}
	return &registryv1.PinResponse{}, nil
}

// Unpin implements registryv1.RegistryServiceServer.
func (s *Server) Unpin(ctx context.Context, req *registryv1.UnpinRequest) (*registryv1.UnpinResponse, error) {
	if s.pinner == nil {
		return nil, status.Error(codes.Unimplemented, "this registry cache does not pin")
	}
	if err := s.pinner.Unpin(ctx, regcache.UnpinRequest{Holder: holder(ctx, req.GetHolder()), Digest: req.GetDigest()}); err != nil {
		return nil, wire.ToStatus(err)
	}
	return &registryv1.UnpinResponse{}, nil
}

// holder is the holder that name, given by the client of ctx, pins for:
// name itself, or, from a client with a TLS certificate, name scoped by
// the certificate's subject (quoted: no name given by one client is a
// name another's pins are under). An empty name stays empty, which the
// cache refuses.
func holder(ctx context.Context, name string) string {
	p, ok := peer.FromContext(ctx)
	if !ok || name == "" {
		return name
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return name
	}
	return fmt.Sprintf("tls:%q/%s", ti.State.PeerCertificates[0].Subject.String(), name)
}

// PutPrecompiled implements registryv1.RegistryServiceServer: the key,
// digest and size come in the first message; the bytes in all of them.
func (s *Server) PutPrecompiled(stream grpc.ClientStreamingServer[registryv1.PutPrecompiledRequest, registryv1.PutPrecompiledResponse]) error {
	if s.precompiled == nil {
		return status.Error(codes.Unimplemented, "this registry cache does not store precompiled modules")
	}
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return status.Error(codes.InvalidArgument, "put precompiled: empty stream; the first message must name the module digest, engine key, digest and size")
	}
	if err != nil {
		return err
	}
	key := regcache.PrecompiledKey{ModuleDigest: first.GetModuleDigest(), EngineKey: first.GetEngineKey()}
	r := &streamReader{buf: first.GetChunk(), recv: func() ([]byte, error) {
		msg, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		return msg.GetChunk(), nil
	}}
	if err := s.precompiled.PutPrecompiled(stream.Context(), key, regcache.Precompiled{Digest: first.GetDigest(), Size: first.GetSize()}, r); err != nil {
		return wire.ToStatus(err)
	}
	return stream.SendAndClose(&registryv1.PutPrecompiledResponse{})
}

// streamReader reads the chunks of a client stream; io.EOF ends it.
type streamReader struct {
	buf  []byte
	recv func() ([]byte, error)
	err  error
}

func (r *streamReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		r.buf, r.err = r.recv()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// GetPrecompiled implements registryv1.RegistryServiceServer.
func (s *Server) GetPrecompiled(req *registryv1.GetPrecompiledRequest, stream grpc.ServerStreamingServer[registryv1.GetPrecompiledResponse]) error {
	if s.precompiled == nil {
		return status.Error(codes.Unimplemented, "this registry cache does not store precompiled modules")
	}
	key := regcache.PrecompiledKey{ModuleDigest: req.GetModuleDigest(), EngineKey: req.GetEngineKey()}
	rc, info, err := s.precompiled.GetPrecompiled(stream.Context(), key)
	if err != nil {
		return wire.ToStatus(err)
	}
	defer rc.Close()
	return sendChunks(rc, info.Size, "get precompiled "+key.EngineKey, func(chunk []byte, first bool) error {
		msg := &registryv1.GetPrecompiledResponse{Chunk: chunk}
		if first {
			msg.Digest, msg.Size = info.Digest, info.Size
		}
		return stream.Send(msg)
	})
}
