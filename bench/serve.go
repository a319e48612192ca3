package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
)

// The serve section (issue 17): the example server examples/httpserver
// in a real executor process (wazero, the engine that hands listeners to
// modules; wasmtime refuses them) against the same source built natively,
// same machine, same run, same client; then the CPU of idle servers.
const (
	serveRateRatioTarget = 0.5 // Wasm / native requests/s, at least
	serveP99RatioTarget  = 2   // Wasm / native p99, at most
	serveIdleCPUTarget   = 1   // % of one core, all idle servers together
	serveEngine          = "wazero"
	serveAnchor          = "wasmtime serve 36,643 req/s (runwasi#729); SpinKube's k6 example 973 req/s"
)

// serveConns are the concurrent keep-alive connections of the load.
var serveConns = []int{1, 16}

// serveBench is the serve section on the stack's binaries, then pod start
// with and without a network namespace on a node of its own (podnet.go).
func serveBench(ctx context.Context, s *Stack, opts Options) ([]Figure, error) {
	figs, err := ServeFigures(ctx, s.Bin, opts)
	if err != nil {
		return figs, err
	}
	more, err := podNetwork(ctx, s, opts)
	return append(figs, more...), err
}

// ServeFigures measures examples/httpserver in the executor binary in bin
// (see Build), as ExecutorFigures does (a real executor process over gRPC,
// an in-process registry cache and NATS server): the instance gets a
// listener on 127.0.0.1 from the executor. The native server is the same
// source built for this machine, listening on $ADDR. It needs the Go
// toolchain.
func ServeFigures(ctx context.Context, bin string, opts Options) ([]Figure, error) {
	work, err := os.MkdirTemp("", "wls-") // short: unix socket paths are bounded
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	wasm, native := filepath.Join(work, "httpserver.wasm"), filepath.Join(work, "httpserver")
	if err := goBuild(nil, native, "./examples/httpserver"); err != nil {
		return nil, err
	}
	if err := goBuild([]string{"GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0"}, wasm, "./examples/httpserver"); err != nil {
		return nil, err
	}
	cache := cachetest.Files{}
	digest, err := cache.Add(wasm)
	if err != nil {
		return nil, err
	}
	handler, err := handlerModule(work, cache)
	if err != nil {
		return nil, err
	}
	env, err := serveExecEnv(work, cache)
	if err != nil {
		return nil, err
	}
	defer env.close()
	b := env.bench(bin, serveEngine, opts)
	b.label = "serve " + serveEngine + ": "
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return nil, err
	}
	p, err := b.start(ctx, "serve")
	if err != nil {
		return nil, err
	}
	err = b.serve(ctx, p, digest, native)
	if err == nil {
		err = b.idleServers(ctx, p, digest)
	}
	if serr := p.stop(); err == nil {
		err = serr
	}
	if err != nil {
		return b.figs, err
	}
	// Handler mode (servehandler.go), on each engine.
	more, err := handlerServe(ctx, env, bin, opts, handler, native)
	return append(b.figs, more...), err
}

// goBuild builds pkg of this module into out, with env added.
func goBuild(env []string, out, pkg string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir, cmd.Env = root, append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s %s: %v: %s", strings.Join(env, " "), pkg, err, b)
	}
	return nil
}

// createServer creates and starts an instance of the server module with
// one listener, "http" on 127.0.0.1:port (the executor opens it).
func (p *execProc) createServer(ctx context.Context, id, digest string, port int) error {
	r, err := p.c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: id, Start: true, Spec: &executorv1.InstanceSpec{
		Module:     &executorv1.Module{Digest: digest, Reference: "bench.local/httpserver"},
		Args:       []string{"httpserver"},
		Env:        []*executorv1.EnvVar{{Name: "POD_NAME", Value: "bench"}},
		LogSubject: subjects.Logs(execNode, "serve", id, "app"),
		Labels:     map[string]string{"bench": "serve"},
		Listeners:  []*executorv1.Listener{{Name: "http", Port: int32(port), Protocol: executorv1.Protocol_PROTOCOL_TCP}},
	}})
	if err != nil {
		return fmt.Errorf("create %s: %w", id, err)
	}
	if in := r.GetInstance(); in.GetState() != executorv1.InstanceState_INSTANCE_STATE_RUNNING {
		return fmt.Errorf("server %s is %s after create (%s: %s)", id, in.GetState(), in.GetReason(), in.GetMessage())
	}
	return nil
}

// stopAndDelete kills a running instance and deletes it once it ended.
func (p *execProc) stopAndDelete(ctx context.Context, id string, end chan *executorv1.Instance) error {
	if _, err := p.c.StopInstance(ctx, &executorv1.StopInstanceRequest{Id: id, GracePeriod: durationpb.New(0)}); err != nil {
		return fmt.Errorf("stop %s: %w", id, err)
	}
	_, err := p.endAndDelete(ctx, id, end)
	return err
}

// serve: requests/s and latency of GET / against the Wasm server and the
// native one, the two taking turns, opts.ServeRounds rounds of
// opts.ServeDuration per target and number of connections.
func (b *execBench) serve(ctx context.Context, p *execProc, digest, native string) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	id := b.id("server")
	end := p.watchFor(id)
	if err := p.createServer(ctx, id, digest, ports[0]); err != nil {
		return fmt.Errorf("%w (executor log: %s)", err, p.logTail())
	}
	defer p.stopAndDelete(context.Background(), id, end)
	return b.compareNative(ctx, p, ports[0], ports[1], native, serveWords{
		request: "GET / of examples/httpserver (\"Hello from WebAssembly, pod bench!\")",
		wasm:    "the Wasm server: the module in a real executor process (" + b.engine + "), the listener on 127.0.0.1 opened by the executor and handed over (LISTEN_FDS)",
		native:  "serve native: ",
	})
}

// compareNative starts the native server (the binary native) on
// 127.0.0.1:nativePort and compares the Wasm server on wasmPort with it
// (compare).
func (b *execBench) compareNative(ctx context.Context, p *execProc, wasmPort, nativePort int, native string, words serveWords) error {
	cmd := exec.Command(native)
	cmd.Env = append(os.Environ(), "ADDR=127.0.0.1:"+strconv.Itoa(nativePort), "POD_NAME=bench")
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	return b.compare(ctx, p, []serveTarget{
		{"wasm", fmt.Sprintf("http://127.0.0.1:%d/", wasmPort), p.cmd.Process.Pid},
		{"native", fmt.Sprintf("http://127.0.0.1:%d/", nativePort), cmd.Process.Pid},
	}, words)
}

// serveTarget is a server under load: its URL, and the process whose CPU
// is its.
type serveTarget struct {
	name, url string // name: "wasm" or "native"
	pid       int
}

// serveWords say what compare measures: the request, the Wasm server, and
// the label of the native server's figures.
type serveWords struct{ request, wasm, native string }

// compare: requests/s and latency of GET / against the Wasm server and
// the native one (targets, in that order), the two taking turns,
// opts.ServeRounds rounds of opts.ServeDuration per target and number of
// connections; the Wasm figures are labelled b.label, the native ones
// words.native.
func (b *execBench) compare(ctx context.Context, p *execProc, targets []serveTarget, words serveWords) error {
	for _, t := range targets {
		if err := waitHTTP(ctx, t.url, 2*time.Minute); err != nil {
			return fmt.Errorf("%s server: %w (executor log: %s)", t.name, err, p.logTail())
		}
		// Warm-up, not counted: the servers' heaps and the connections.
		if _, _, err := load(ctx, t.url, serveConns[len(serveConns)-1], time.Second); err != nil {
			return fmt.Errorf("%s server warm-up: %w", t.name, err)
		}
	}
	rounds := max(b.opts.ServeRounds, 1)
	for _, c := range serveConns {
		rates := map[string][]float64{}
		serverCPU, clientCPU := map[string][]float64{}, map[string][]float64{}
		perRequest := map[string][]float64{} // the server's CPU per request, µs
		p99s := map[string][]float64{}
		lats := map[string][]time.Duration{}
		for range rounds {
			for _, t := range targets {
				sc, cc, t0 := cpuTree(t.pid), selfCPU(), time.Now()
				n, lat, err := load(ctx, t.url, c, b.opts.ServeDuration)
				secs := time.Since(t0).Seconds()
				serverCPU[t.name] = append(serverCPU[t.name], (cpuTree(t.pid)-sc)/secs)
				clientCPU[t.name] = append(clientCPU[t.name], (selfCPU()-cc)/secs)
				if err == nil && n == 0 {
					err = errors.New("no request answered")
				}
				if err != nil {
					return fmt.Errorf("%s server, %d connections: %w (executor log: %s)", t.name, c, err, p.logTail())
				}
				rates[t.name] = append(rates[t.name], n)
				perRequest[t.name] = append(perRequest[t.name], serverCPU[t.name][len(serverCPU[t.name])-1]/n*1e6)
				p99s[t.name] = append(p99s[t.name], Durations("", "", lat).P99)
				lats[t.name] = append(lats[t.name], lat...)
			}
		}
		method := fmt.Sprintf("%s, %d keep-alive connections from one Go net/http client in the benchmark process (each connection one request at a time), %d rounds of %v, the Wasm and native servers taking turns, after a 1 s warm-up each; client and server share this machine's cores", words.request, c, rounds, b.opts.ServeDuration)
		wasmRate := Values(fmt.Sprintf("%srequests/s, hello handler, %s", b.label, connections(c)),
			method+"; "+words.wasm+"; one value per round", "req/s", rates["wasm"])
		wasmRate.Anchor = serveAnchor
		nativeRate := Values(fmt.Sprintf("%srequests/s, hello handler, %s", words.native, connections(c)),
			method+"; the native server: examples/httpserver built for linux/amd64 (go build), listening on $ADDR, GOMAXPROCS = cores; one value per round", "req/s", rates["native"])
		wasmLat := Durations(fmt.Sprintf("%slatency, hello handler, %s", b.label, connections(c)), "each request's time, request written → body read, all rounds; "+method, lats["wasm"])
		nativeLat := Durations(fmt.Sprintf("%slatency, hello handler, %s", words.native, connections(c)), "the same against the native server", lats["native"])
		var rr, pr, cr []float64
		for i := range rounds {
			rr = append(rr, rates["wasm"][i]/rates["native"][i])
			pr = append(pr, p99s["wasm"][i]/p99s["native"][i])
			cr = append(cr, perRequest["wasm"][i]/perRequest["native"][i])
		}
		rateRatio := Values(fmt.Sprintf("%sWasm / native requests/s, %s", b.label, connections(c)), "the Wasm server's requests/s over the native server's, round by round (same client, same run)", "x", rr)
		holdAtLeast(&rateRatio, "median", serveRateRatioTarget)
		rateRatio.Anchor = "issue 17: a Wasm server ≥ 0.5× native requests/s; " + serveAnchor
		p99Ratio := Values(fmt.Sprintf("%sWasm / native p99 latency, %s", b.label, connections(c)), "the Wasm server's p99 latency over the native server's, round by round", "x", pr)
		p99Ratio.Hold("median", serveP99RatioTarget)
		p99Ratio.Anchor = "issue 17: p99 ≤ 2× native"
		b.figs = append(b.figs, wasmRate, nativeRate, rateRatio, wasmLat, nativeLat, p99Ratio)
		// Where the cores went: the Wasm server's Go runtime has one
		// thread (wasip1), the native one GOMAXPROCS; the client shares
		// the same two cores.
		for _, t := range targets {
			server, label := "the executor process (the Wasm server)", b.label
			if t.name == "native" {
				server, label = "the native server process", words.native
			}
			b.figs = append(b.figs,
				Values(fmt.Sprintf("%sserver CPU under load, %s", label, connections(c)), "user+system CPU seconds of "+server+" per second of load (cores busy), one value per round", "cores", serverCPU[t.name]),
				Values(fmt.Sprintf("%sclient CPU under load, %s", label, connections(c)), "user+system CPU seconds of the benchmark process (the load client, and the idle NATS server and registry cache) per second of load against the "+t.name+" server, one value per round", "cores", clientCPU[t.name]),
				Values(fmt.Sprintf("%sserver CPU per request, %s", label, connections(c)), "user+system CPU of "+server+" over the requests it answered, one value per round: what a request costs, which the load others put on the machine moves less than it moves req/s", "µs", perRequest[t.name]))
		}
		b.figs = append(b.figs, Values(fmt.Sprintf("%sWasm / native server CPU per request, %s", b.label, connections(c)),
			"the Wasm server's CPU per request over the native server's, round by round", "x", cr))
	}
	return nil
}

// idleServers: opts.ServeIdle servers, each with a listener of its own,
// all answering and then idle; the executor's CPU over
// opts.ServeIdleWindow, against the same process with no instance.
func (b *execBench) idleServers(ctx context.Context, p *execProc, digest string) error {
	n, window := b.opts.ServeIdle, b.opts.ServeIdleWindow
	pid := p.cmd.Process.Pid
	if err := waitQuiet(ctx, pid); err != nil {
		return err
	}
	c0, t0 := cpuTree(pid), time.Now()
	time.Sleep(window)
	baseline := (cpuTree(pid) - c0) / time.Since(t0).Seconds() * 100
	before := procFields(pid, "status")

	ports, err := freePorts(n)
	if err != nil {
		return err
	}
	ids := make([]string, n)
	ends := make([]chan *executorv1.Instance, n)
	for i := range n {
		ids[i] = b.id("idle")
		ends[i] = p.watchFor(ids[i])
	}
	defer func() {
		parallel(n, 4, func(i int) error { return p.stopAndDelete(context.Background(), ids[i], ends[i]) })
	}()
	err = parallel(n, 4, func(i int) error {
		if err := p.createServer(ctx, ids[i], digest, ports[i]); err != nil {
			return err
		}
		return waitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/healthz", ports[i]), time.Minute)
	})
	if err != nil {
		return fmt.Errorf("idle servers: %w (executor log: %s)", err, p.logTail())
	}
	// Every server has answered; the client's connections are closed
	// (waitHTTP keeps none), so that each server is idle in accept.
	time.Sleep(time.Second)
	c0, t0 = cpuTree(pid), time.Now()
	time.Sleep(window)
	secs := time.Since(t0).Seconds()
	total := (cpuTree(pid) - c0) / secs * 100
	after := procFields(pid, "status")
	tick := 100 * 0.01 / secs // one 10 ms clock tick over the window, in % of a core
	f := Values(fmt.Sprintf("%sCPU of %d idle serving instances, total", b.label, n),
		fmt.Sprintf("user+system CPU of the executor process (/proc/<pid>/stat, 10 ms ticks: resolution %.2f%%) over %v with %d instances of examples/httpserver each accepting on a listener of its own, all having answered GET /healthz once, no connection open; the same process idle with no instance used %.2f%% of a core", tick, window, n, baseline),
		"% of a core", []float64{total})
	f.Hold("max", serveIdleCPUTarget)
	f.Anchor = "issue 17: 100 idle serving pods < 1% of a core in total"
	b.figs = append(b.figs, f,
		Values(fmt.Sprintf("%sCPU per idle serving instance, %d instances", b.label, n), "the figure above, less the executor's own idle CPU, divided by the instances", "% of a core", []float64{max(total-baseline, 0) / float64(n)}),
		Values(fmt.Sprintf("%sresident memory per idle serving instance, %d instances", b.label, n),
			fmt.Sprintf("(executor VmRSS with the servers − before them: %.1f → %.1f MiB) / %d", float64(before["VmRSS"])/(1<<20), float64(after["VmRSS"])/(1<<20), n),
			"MiB", []float64{float64(after["VmRSS"]-before["VmRSS"]) / float64(n) / (1 << 20)}))
	return nil
}

// connections is "1 connection", "16 connections".
func connections(n int) string {
	if n == 1 {
		return "1 connection"
	}
	return fmt.Sprintf("%d connections", n)
}

// freePorts finds n distinct free TCP ports on 127.0.0.1, all held at
// once while they are chosen.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitHTTP waits until GET url answers 200, without keeping a connection.
func waitHTTP(ctx context.Context, url string, within time.Duration) error {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	deadline := time.Now().Add(within)
	for {
		resp, err := c.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET %s: no answer in %v (%v)", url, within, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// load sends GET url over conns keep-alive connections, each one request
// at a time, for d; it returns the requests/s and each request's latency.
func load(ctx context.Context, url string, conns int, d time.Duration) (float64, []time.Duration, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	lats := make([][]time.Duration, conns)
	errs := make([]error, conns)
	var wg sync.WaitGroup
	t0 := time.Now()
	stop := t0.Add(d)
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) && ctx.Err() == nil {
				s := time.Now()
				resp, err := c.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %s", resp.Status)
					}
				}
				if err != nil {
					errs[w] = err
					return
				}
				lats[w] = append(lats[w], time.Since(s))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	var all []time.Duration
	for w := range conns {
		if errs[w] != nil {
			return 0, nil, errs[w]
		}
		all = append(all, lats[w]...)
	}
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	return float64(len(all)) / elapsed.Seconds(), all, nil
}
