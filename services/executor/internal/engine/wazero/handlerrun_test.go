package wazero

import (
	"bytes"
	"context"
	"testing"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// BenchmarkHandlerRun is what the engine does for one handler request,
// without HTTP around it: instantiate the example handler ahead, then run
// it inline with a request's environment, as package wagi does; in
// allocations and time per request, the engine's own share of
// BenchmarkHandlerRequest.
//
//	go test -run '^$' -bench HandlerRun -benchmem ./services/executor/internal/engine/wazero/
func BenchmarkHandlerRun(b *testing.B) {
	e, err := New(Config{CacheDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	m := enginetest.Prepare(b, e, wasmbuild.WatAt(b, "examples/wagi-hello/hello.wat"))
	env := []engine.EnvVar{{Name: "REQUEST_METHOD", Value: "GET"}, {Name: "PATH_INFO", Value: "/"}, {Name: "SERVER_PROTOCOL", Value: "HTTP/1.1"}}
	want := "Content-Type: text/plain\n\nHello from a WebAssembly handler at /\n"
	var out bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		p, err := e.Instantiate(context.Background(), m, engine.Spec{})
		if err != nil {
			b.Fatal(err)
		}
		out.Reset()
		inst, err := p.(engine.Inline).RunInline(engine.Stdio{Env: env, Stdout: &out}, func(engine.Instance) {})
		if err != nil {
			b.Fatal(err)
		}
		if res := inst.Wait(); !res.Exited || res.ExitCode != 0 || out.String() != want {
			b.Fatalf("run: %+v, stdout %q", res, out.String())
		}
	}
}
