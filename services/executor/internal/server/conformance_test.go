package server

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/instancestest"
	"github.com/wasmlet/wasmlet/services/executor/instances/proxy"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/wazero"
	"github.com/wasmlet/wasmlet/services/executor/internal/instance"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
)

// The suite against proxy → gRPC (bufconn) → Server → manager: what the
// node agent holds is the manager's contract, errors and all.
func TestConformanceOverGRPC(t *testing.T) {
	eng, err := wazero.New(wazero.Config{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	cache := cachetest.Files{}
	spec := func(path string) instances.Spec {
		d, err := cache.Add(path)
		if err != nil {
			t.Fatal(err)
		}
		return instances.Spec{Module: instances.Module{Digest: d}}
	}
	text := filepath.Join(t.TempDir(), "not.wasm")
	if err := os.WriteFile(text, []byte("this is not a Wasm module\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	instancestest.Run(t, instancestest.Harness{
		New: func(t *testing.T, history int) instances.Runtime {
			m, err := instance.New(instance.Config{ExecutorID: "conformance", Engine: eng, Cache: cache, ModuleDir: t.TempDir(), History: history})
			if err != nil {
				t.Fatal(err)
			}
			l := bufconn.Listen(1 << 20)
			srv := grpc.NewServer()
			executorv1.RegisterExecutorServiceServer(srv, New(m))
			go srv.Serve(l)
			cc, err := grpc.NewClient("passthrough:///executor",
				grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }),
				grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				cc.Close()
				srv.Stop()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				m.Shutdown(ctx)
			})
			return proxy.New(cc)
		},
		Exit0: spec(wasmbuild.WatFile(t, "empty")),
		ExitNonZero: spec(wasmbuild.Wat(t, `(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))`)),
		ExitCode:      3,
		Running:       spec(wasmbuild.WatFile(t, "idle")),
		NotWasm:       spec(text),
		MeasuresUsage: true,
	})
}
