package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/wire"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
)

// TestHandlerExecutorProcess runs the example WAGI handler
// (examples/wagi-hello) in handler mode in executor processes of both
// engines, confined as by default, over gRPC as a node agent would: the
// info lists the mode, the instance is RUNNING and answers each request
// with its path, a trapping handler answers 500 and the executor goes on
// serving, its stats count the runs' CPU, a stop frees the port, and a
// stop with a grace period ends a handler with nothing in flight at once
// (EXITED Completed).
func TestHandlerExecutorProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the executor binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Second)
	defer cancel()
	files := cachetest.Files{}
	hello, err := files.Add(wasmbuild.WatAt(t, "examples/wagi-hello/hello.wat"))
	if err != nil {
		t.Fatal(err)
	}
	trap, err := files.Add(wasmbuild.Wat(t, `(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
		(memory (export "memory") 1) (func (export "_start") unreachable))`))
	if err != nil {
		t.Fatal(err)
	}
	bin, sockDir, regAddr := executorHarness(t, ctx, "exhandler", files)
	for n, eng := range []string{"wazero", "wasmtime"} {
		t.Run(eng, func(t *testing.T) {
			e := startExecutor(t, ctx, bin, sockDir, n+1, regAddr, "--engine", eng)
			info, err := e.c.GetInfo(ctx, &executorv1.GetInfoRequest{})
			if err != nil || !slices.Contains(wire.InfoFromProto(info).HandlerModes, instances.HandlerWAGI) {
				t.Fatalf("info: %v %v, want handler mode wagi listed", info, err)
			}
			create := func(id, digest string, port int) instances.Instance {
				spec := instances.Spec{Module: instances.Module{Digest: digest}, Handler: instances.HandlerWAGI,
					Listeners: []instances.Listener{{Name: "http", Port: int32(port)}}}
				r, err := e.c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: id, Start: true, Spec: wire.SpecToProto(spec)})
				if err != nil {
					t.Fatalf("create %s: %v", id, wire.FromStatus(err))
				}
				return wire.InstanceFromProto(r.GetInstance())
			}
			_, port := enginetest.LoopbackAddr(t)
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			if in := create("h", hello, port); in.State != instances.StateRunning {
				t.Fatalf("handler instance: %+v, want RUNNING", in)
			}
			for _, p := range []string{"/", "/a/b"} {
				if body := waitGet(t, "http://"+addr+p); body != "Hello from a WebAssembly handler at "+p+"\n" {
					t.Errorf("GET %s: %q", p, body)
				}
			}
			if cpu := instanceCPU(t, ctx, e, "h"); cpu <= 0 {
				t.Errorf("the handler's CPU is %v after requests, want the runs' time", cpu)
			}
			_, tport := enginetest.LoopbackAddr(t)
			create("t", trap, tport)
			for range 3 {
				resp, err := http.Get("http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(tport)) + "/")
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 500 || !strings.Contains(string(b), "wasm trap: unreachable") {
					t.Errorf("trapping handler: %d %q, want 500 saying it trapped", resp.StatusCode, b)
				}
			}
			if _, err := e.c.StopInstance(ctx, &executorv1.StopInstanceRequest{Id: "h"}); err != nil {
				t.Fatal(err)
			}
			l, err := net.Listen("tcp", addr)
			if err != nil {
				t.Fatalf("the port of a stopped handler is not free: %v", err)
			}
			l.Close()
			r, err := e.c.GetInstance(ctx, &executorv1.GetInstanceRequest{Id: "h"})
			if in := wire.InstanceFromProto(r.GetInstance()); err != nil || in.State != instances.StateKilled {
				t.Errorf("stopped handler: %+v %v, want KILLED", in, err)
			}
			// With a grace period, a handler with nothing in flight ends at
			// once, as a server that exits when asked to.
			t0 := time.Now()
			sr, err := e.c.StopInstance(ctx, &executorv1.StopInstanceRequest{Id: "t", GracePeriod: durationpb.New(30 * time.Second)})
			if in := wire.InstanceFromProto(sr.GetInstance()); err != nil || in.State != instances.StateExited || in.Reason != "Completed" || time.Since(t0) > 10*time.Second {
				t.Errorf("stop with a grace period: %+v %v after %v, want EXITED Completed at once", in, err, time.Since(t0))
			}
		})
	}
}
