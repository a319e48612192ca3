package service

import (
	"net"

	"google.golang.org/grpc"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/internal/server"
)

// newGRPCServer listens on addr and registers the executor's service over
// rt; grpcutil.Serve adds the standard health service.
func newGRPCServer(addr string, t grpcutil.TLS, rt instances.Runtime) (*grpc.Server, net.Listener, error) {
	srv, l, err := grpcutil.NewServer(addr, t)
	if err != nil {
		return nil, nil, err
	}
	executorv1.RegisterExecutorServiceServer(srv, server.New(rt))
	return srv, l, nil
}
