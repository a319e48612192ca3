package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
)

// The serve section's handler rows: the WAT example handler
// (examples/wagi-hello) in handler mode (WAGI: the executor serves HTTP
// and runs the module's _start once per request, from instances
// instantiated ahead), in an executor of each engine, against the same
// native hello server as the server rows, in the same run.

// handlerModule assembles examples/wagi-hello with wat2wasm (Debian's
// wabt) into work and adds it to cache; it returns its digest.
func handlerModule(work string, cache cachetest.Files) (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	src := filepath.Join(filepath.Dir(strings.TrimSpace(string(gomod))), "examples", "wagi-hello", "hello.wat")
	out := filepath.Join(work, "wagi-hello.wasm")
	if b, err := exec.Command("wat2wasm", "-o", out, src).CombinedOutput(); err != nil {
		return "", fmt.Errorf("wat2wasm %s (install Debian's wabt: make deps): %v: %s", src, err, b)
	}
	return cache.Add(out)
}

// handlerServe measures the handler of digest in an executor of each
// engine in turn (execEngines), against the native server built at
// native; figures are labelled "serve <engine> handler: ".
func handlerServe(ctx context.Context, env *execEnv, bin string, opts Options, digest, native string) ([]Figure, error) {
	var figs []Figure
	for _, eng := range execEngines {
		b := env.bench(bin, eng, opts)
		b.dir = filepath.Join(env.work, eng+"-handler")
		b.label = "serve " + eng + " handler: "
		if err := os.MkdirAll(b.dir, 0o755); err != nil {
			return figs, err
		}
		p, err := b.start(ctx, "handler")
		if err != nil {
			return figs, err
		}
		err = b.serveHandler(ctx, p, digest, native)
		if serr := p.stop(); err == nil {
			err = serr
		}
		figs = append(figs, b.figs...)
		if err != nil {
			return figs, fmt.Errorf("%s handler: %w", eng, err)
		}
	}
	return figs, nil
}

// serveHandler creates the handler instance on a port of its own and
// compares it with the native server (execBench.compare).
func (b *execBench) serveHandler(ctx context.Context, p *execProc, digest, native string) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	id := b.id("handler")
	end := p.watchFor(id)
	r, err := p.c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: id, Start: true, Spec: &executorv1.InstanceSpec{
		Module:     &executorv1.Module{Digest: digest, Reference: "bench.local/wagi-hello"},
		Args:       []string{"wagi-hello"},
		LogSubject: subjects.Logs(execNode, "serve", id, "app"),
		Labels:     map[string]string{"bench": "serve"},
		Listeners:  []*executorv1.Listener{{Name: "http", Port: int32(ports[0]), Protocol: executorv1.Protocol_PROTOCOL_TCP}},
		Handler:    executorv1.HandlerMode_HANDLER_MODE_WAGI,
	}})
	if err != nil {
		return fmt.Errorf("create %s: %w", id, err)
	}
	if in := r.GetInstance(); in.GetState() != executorv1.InstanceState_INSTANCE_STATE_RUNNING {
		return fmt.Errorf("handler %s is %s after create (%s: %s; executor log: %s)", id, in.GetState(), in.GetReason(), in.GetMessage(), p.logTail())
	}
	defer p.stopAndDelete(context.Background(), id, end)
	return b.compareNative(ctx, p, ports[0], ports[1], native, serveWords{
		request: "GET / of examples/wagi-hello (WAT, \"Hello from a WebAssembly handler at /\") against examples/httpserver (\"Hello from WebAssembly, pod bench!\")",
		wasm:    "the handler: the WAT module in handler mode (WAGI) in a real executor process (" + b.engine + "), which serves HTTP on 127.0.0.1 itself and runs the module's _start once per request, from instances instantiated ahead (default pool: one per core; at most 4 runs per core at once)",
		native:  "serve native (beside the " + b.engine + " handler): ",
	})
}
