// Package server exposes any regcache.Cache as the gRPC service
// wasmlet.registry.v1.RegistryService. It owns only the translation between
// protobuf messages and the Cache interface, and error codes at that
// boundary; it keeps no state and touches no disk.
//
//	srv := grpc.NewServer()
//	server.New(cache).Register(srv)
//	grpcutil.Serve(ctx, srv, listener, 5*time.Second)
package server

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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
	cache regcache.Cache
}

var _ registryv1.RegistryServiceServer = (*Server)(nil)

// New returns a server for c.
func New(c regcache.Cache) *Server { return &Server{cache: c} }

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
	res, err := s.cache.Resolve(ctx, regcache.ResolveRequest{Reference: req.GetReference(), Policy: policy, Credentials: creds})
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
	buf := make([]byte, ChunkSize)
	first := true
	var sent int64
	for {
		n, err := io.ReadFull(rc, buf)
		if n > 0 || first {
			msg := &registryv1.FetchResponse{Chunk: buf[:n]}
			if first {
				msg.Size = size
				first = false
			}
			if serr := stream.Send(msg); serr != nil {
				return serr
			}
			sent += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return wire.ToStatus(fmt.Errorf("fetch %s: read: %w", req.GetDigest(), err))
		}
	}
	if sent != size {
		return status.Errorf(codes.DataLoss, "fetch %s: sent %d bytes, want %d", req.GetDigest(), sent, size)
	}
	return nil
}
