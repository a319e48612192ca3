package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/logmsg"
	"github.com/wasmlet/wasmlet/internal/natsutil"
	"github.com/wasmlet/wasmlet/internal/natsutil/natsserver"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	regserver "github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

// The executor section measures one executor process alone, over gRPC, for
// each engine, against the figures of the executor issue.
const (
	execThroughputTarget = 1000 // instances/s, at least
	execStartP50Target   = 5    // ms
	execDensityTarget    = 3    // MiB per sleeping instance
	execThreadsTarget    = 0.05 // OS threads per sleeping instance (issue 18)
	execKillP99Target    = 50   // ms
	runwasiAnchor        = "runwasi: 330 tasks/s"
	execNode             = "bench-executor"
)

// execEngines are the engines measured, side by side.
var execEngines = []string{"wasmtime", "wazero"}

// executorBench is the executor section on the stack's binaries.
func executorBench(ctx context.Context, s *Stack, opts Options) ([]Figure, error) {
	return ExecutorFigures(ctx, s.Bin, opts)
}

// ExecutorFigures measures the executor binary in bin (see Build, which
// also puts the example module hello.wasm there) for each engine: a real
// executor process on a unix socket, with an in-process registry cache
// (the registry cache's gRPC server over files) and an in-process NATS
// server, driven over gRPC as the node agent drives it. It needs the Go
// toolchain (to build testdata/wasm/spin) and wat2wasm (Debian's wabt).
func ExecutorFigures(ctx context.Context, bin string, opts Options) ([]Figure, error) {
	work, err := os.MkdirTemp("", "wlx-") // short: unix socket paths are bounded
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	mods, err := execModules(bin, work)
	if err != nil {
		return nil, err
	}
	env, err := serveExecEnv(work, mods.cache)
	if err != nil {
		return nil, err
	}
	defer env.close()
	byEngine := map[string][]Figure{}
	for _, eng := range execEngines {
		b := env.bench(bin, eng, opts)
		b.mods = mods
		figs, err := b.run(ctx)
		byEngine[eng] = figs
		if err != nil {
			return interleave(byEngine), fmt.Errorf("%s: %w", eng, err)
		}
	}
	return interleave(byEngine), nil
}

// execEnv is what the executor processes of a section run against: an
// in-process NATS server and an in-process registry cache (its gRPC server
// over files) on a unix socket in work.
type execEnv struct {
	work, regAddr string
	ns            *natsserver.Server
	nc            *nats.Conn
	stopReg       context.CancelFunc
}

// serveExecEnv starts the environment, the registry cache serving cache
// (which must not change afterwards).
func serveExecEnv(work string, cache cachetest.Files) (_ *execEnv, err error) {
	e := &execEnv{work: work, stopReg: func() {}}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.ns, err = natsserver.Start(natsserver.Config{StoreDir: filepath.Join(work, "nats")}); err != nil {
		return nil, err
	}
	if e.nc, err = natsutil.Connect(e.ns.URL, "", "wasmlet-bench"); err != nil {
		return nil, err
	}
	e.regAddr = "unix://" + filepath.Join(work, "reg.sock")
	rl, err := grpcutil.Listen(e.regAddr)
	if err != nil {
		return nil, err
	}
	rs := grpc.NewServer()
	regserver.New(cache).Register(rs)
	rctx, stopReg := context.WithCancel(context.Background())
	e.stopReg = stopReg
	go grpcutil.Serve(rctx, rs, rl, time.Second)
	return e, nil
}

// bench is an execBench of engine in the environment (its modules unset).
func (e *execEnv) bench(bin, engine string, opts Options) *execBench {
	return &execBench{bin: bin, dir: filepath.Join(e.work, engine), engine: engine, regAddr: e.regAddr, natsURL: e.ns.URL, nc: e.nc, opts: opts}
}

func (e *execEnv) close() {
	e.stopReg()
	if e.nc != nil {
		e.nc.Close()
	}
	if e.ns != nil {
		e.ns.Shutdown()
	}
}

// interleave puts the engines' figures side by side: each engine measures
// the same figures in the same order.
func interleave(byEngine map[string][]Figure) []Figure {
	return interleaveIn(execEngines, byEngine)
}

// interleaveIn puts the figures of each name in order side by side.
func interleaveIn(order []string, byName map[string][]Figure) []Figure {
	var out []Figure
	for i := 0; ; i++ {
		any := false
		for _, name := range order {
			if i < len(byName[name]) {
				out = append(out, byName[name][i])
				any = true
			}
		}
		if !any {
			return out
		}
	}
}

// execMods are the modules measured, by digest, and the cache serving them.
type execMods struct {
	cache              cachetest.Files
	empty, hello, spin string // digests
	helloBytes         int64
}

// execModules assembles the trivial module and builds the spinning one
// into work; the Go example module comes from bin.
func execModules(bin, work string) (*execMods, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	empty := filepath.Join(work, "empty.wasm")
	if b, err := exec.Command("wat2wasm", "-o", empty, filepath.Join(root, "testdata", "wasm", "empty", "empty.wat")).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("wat2wasm: %v: %s (install Debian package wabt)", err, b)
	}
	spin := filepath.Join(work, "spin.wasm")
	cmd := exec.Command("go", "build", "-trimpath", "-o", spin, "./testdata/wasm/spin")
	cmd.Dir, cmd.Env = root, append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build testdata/wasm/spin: %v: %s", err, b)
	}
	m := &execMods{cache: cachetest.Files{}}
	for _, f := range []struct {
		path   string
		digest *string
	}{{empty, &m.empty}, {filepath.Join(bin, "hello.wasm"), &m.hello}, {spin, &m.spin}} {
		b, err := os.ReadFile(f.path)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(b)
		*f.digest = "sha256:" + hex.EncodeToString(sum[:])
		m.cache[*f.digest] = f.path
		if f.digest == &m.hello {
			m.helloBytes = int64(len(b))
		}
	}
	return m, nil
}

// execBench measures one engine.
type execBench struct {
	bin, dir, engine, regAddr, natsURL string
	nc                                 *nats.Conn
	mods                               *execMods
	opts                               Options

	// state, when set, is the executor's state dir instead of the one
	// kept between runs (stateDir); args are more flags for it.
	state string
	args  []string

	proc  *execProc
	seq   atomic.Int64
	figs  []Figure
	label string // "executor <engine>: "
}

func (b *execBench) run(ctx context.Context) ([]Figure, error) {
	b.label = "executor " + b.engine + ": "
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return nil, err
	}
	// First process: compiles both modules (not measured), then the
	// throughput, start and kill figures.
	p, err := b.start(ctx, "1")
	if err != nil {
		return nil, err
	}
	err = b.timed(ctx, p)
	if serr := p.stop(); err == nil {
		err = serr
	}
	if err != nil {
		return b.figs, err
	}
	// Second process, with the artifacts on disk: density, from an idle
	// process that has compiled nothing (a compile's freed memory would
	// hide instances' growth).
	if p, err = b.start(ctx, "2"); err != nil {
		return b.figs, err
	}
	err = b.density(ctx, p)
	if serr := p.stop(); err == nil {
		err = serr
	}
	return b.figs, err
}

func (b *execBench) timed(ctx context.Context, p *execProc) error {
	// Warm-up: the first instance of each module compiles it.
	for _, w := range []struct {
		digest string
		env    []*executorv1.EnvVar
	}{{b.mods.empty, nil}, {b.mods.hello, []*executorv1.EnvVar{{Name: "COUNT", Value: "1"}}}} {
		if _, err := p.runToEnd(ctx, b.id("warmup"), w.digest, w.env); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	if err := b.throughput(ctx, p); err != nil {
		return err
	}
	if err := b.startLatency(ctx, p); err != nil {
		return err
	}
	return b.killLatency(ctx, p)
}

// stateDir keeps the executor's modules and compiled artifacts between
// runs, as on a node: compiling the Go-built modules takes seconds per
// engine, and is not measured. The engines verify what they load from it.
func (b *execBench) stateDir() string {
	if b.state != "" {
		return b.state
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return filepath.Join(b.dir, "state")
	}
	return filepath.Join(base, "wasmlet-bench-executor", b.engine)
}

func (b *execBench) id(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, b.seq.Add(1))
}

// throughput: create+start+wait (+delete) of the trivial module, with
// ExecConcurrency callers, ExecInstances per round.
func (b *execBench) throughput(ctx context.Context, p *execProc) error {
	o := b.opts
	var rates []float64
	cpuBefore, selfBefore := cpuTree(p.cmd.Process.Pid), selfCPU()
	total := 0
	for range o.ExecRounds {
		t0 := time.Now()
		err := parallel(o.ExecInstances, o.ExecConcurrency, func(int) error {
			in, err := p.runToEnd(ctx, b.id("tp"), b.mods.empty, nil)
			if err != nil {
				return err
			}
			if in.GetState() != executorv1.InstanceState_INSTANCE_STATE_EXITED || in.GetExitCode() != 0 {
				return fmt.Errorf("trivial instance %s ended %s (%s: %s)", in.GetId(), in.GetState(), in.GetReason(), in.GetMessage())
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("throughput: %w", err)
		}
		rates = append(rates, float64(o.ExecInstances)/time.Since(t0).Seconds())
		total += o.ExecInstances
	}
	cpu, self := cpuTree(p.cmd.Process.Pid)-cpuBefore, selfCPU()-selfBefore
	f := Values(fmt.Sprintf("%sinstances/s, trivial module, %d callers", b.label, o.ExecConcurrency),
		fmt.Sprintf("CreateInstance(start) → WatchInstances shows EXITED → DeleteInstance of an empty-_start WAT module, %d instances per sample over one gRPC connection on a unix socket; target ≥ %d/s (anchor %s); the median must reach it",
			o.ExecInstances, execThroughputTarget, runwasiAnchor), "instances/s", rates)
	holdAtLeast(&f, "median", execThroughputTarget)
	f.Anchor = runwasiAnchor + " (create+start+wait of a trivial module)"
	b.figs = append(b.figs, f,
		Values(b.label+"executor CPU per trivial instance", "user+system CPU of the executor process during the throughput samples, divided by the instances", "ms", []float64{cpu * 1000 / float64(total)}),
		Values(b.label+"benchmark process CPU per trivial instance", "user+system CPU of the benchmark process (the gRPC client, the registry cache's server, the NATS server storing the executor's events and logs in JetStream) during the throughput samples, divided by the instances: on 2 cores, executor and this together bound the rate", "ms", []float64{self * 1000 / float64(total)}))
	return nil
}

// startLatency: CreateInstance with start of the cached Go module, which
// returns once the instance is RUNNING.
func (b *execBench) startLatency(ctx context.Context, p *execProc) error {
	env := []*executorv1.EnvVar{{Name: "COUNT", Value: "1"}, {Name: "SLEEP", Value: "20ms"}}
	var ds []time.Duration
	for range b.opts.ExecStarts {
		id := b.id("start")
		end := p.watchFor(id)
		t0 := time.Now()
		in, err := p.create(ctx, id, b.mods.hello, env)
		d := time.Since(t0)
		if err != nil {
			return fmt.Errorf("start latency: %w", err)
		}
		if in.GetState() != executorv1.InstanceState_INSTANCE_STATE_RUNNING {
			return fmt.Errorf("start latency: instance %s is %s after create (%s: %s)", id, in.GetState(), in.GetReason(), in.GetMessage())
		}
		ds = append(ds, d)
		if _, err := p.endAndDelete(ctx, id, end); err != nil {
			return err
		}
	}
	method := fmt.Sprintf("CreateInstance(start) call → its reply, which comes once the instance is RUNNING; examples/hello (Go, %.1f MB, SLEEP), precompiled artifact on disk, instances one after another", float64(b.mods.helloBytes)/1e6)
	f := Durations(b.label+"create → running, cached Go module", method, ds)
	f.Hold("median", execStartP50Target)
	b.figs = append(b.figs, f)
	return nil
}

// killLatency: StopInstance with no grace of a spinning module, which
// returns once the instance's end is recorded.
func (b *execBench) killLatency(ctx context.Context, p *execProc) error {
	var ds []time.Duration
	for range b.opts.ExecKills {
		id := b.id("kill")
		sub := subjects.Logs(execNode, "bench", id, "app")
		spinning := make(chan struct{})
		var once sync.Once
		s, err := b.nc.Subscribe(sub, func(*nats.Msg) { once.Do(func() { close(spinning) }) })
		if err != nil {
			return err
		}
		// The server must have the subscription before the line is
		// published: a round trip.
		if err := b.nc.Flush(); err != nil {
			s.Unsubscribe()
			return err
		}
		end := p.watchFor(id)
		in, err := p.createWith(ctx, id, b.mods.spin, nil, sub)
		if err == nil && in.GetState() != executorv1.InstanceState_INSTANCE_STATE_RUNNING {
			err = fmt.Errorf("instance %s is %s after create (%s: %s)", id, in.GetState(), in.GetReason(), in.GetMessage())
		}
		if err != nil {
			s.Unsubscribe()
			return fmt.Errorf("kill latency: %w", err)
		}
		select {
		case <-spinning: // it printed "spinning": it computes from here on
		case <-time.After(30 * time.Second):
			s.Unsubscribe()
			return fmt.Errorf("kill latency: instance %s printed nothing in 30s", id)
		}
		s.Unsubscribe()
		t0 := time.Now()
		out, err := p.c.StopInstance(ctx, &executorv1.StopInstanceRequest{Id: id, GracePeriod: durationpb.New(0)})
		d := time.Since(t0)
		if err != nil {
			return fmt.Errorf("kill latency: stop %s: %w", id, err)
		}
		if st := out.GetInstance().GetState(); st != executorv1.InstanceState_INSTANCE_STATE_KILLED {
			return fmt.Errorf("kill latency: instance %s is %s after stop", id, st)
		}
		ds = append(ds, d)
		if _, err := p.endAndDelete(ctx, id, end); err != nil {
			return err
		}
	}
	f := Durations(b.label+"kill latency, spinning module", "StopInstance(grace 0) call → its reply, which comes once the KILLED end is recorded; testdata/wasm/spin (Go, computes without host calls), stopped after its first log line reached NATS", ds)
	f.Hold("p99", execKillP99Target)
	b.figs = append(b.figs, f)
	return nil
}

// density: ExecDensity instances of the Go module sleeping, the
// executor's resident memory before and after.
func (b *execBench) density(ctx context.Context, p *execProc) error {
	n := b.opts.ExecDensity
	pid := p.cmd.Process.Pid
	// One instance run to its end first: it loads the artifact, which all
	// instances share, so that it is not charged to them.
	if _, err := p.runToEnd(ctx, b.id("warmup"), b.mods.hello, []*executorv1.EnvVar{{Name: "COUNT", Value: "1"}}); err != nil {
		return fmt.Errorf("density warm-up: %w", err)
	}
	time.Sleep(500 * time.Millisecond)
	before, pssBefore := procFields(pid, "status"), procFields(pid, "smaps_rollup")

	// Each instance prints "count 1" and sleeps: count those lines on NATS.
	var counted atomic.Int64
	sub, err := b.nc.Subscribe(subjects.LogsPrefix+"."+execNode+".density.>", func(m *nats.Msg) {
		rs, _ := logmsg.Decode(m.Header, m.Data)
		for _, r := range rs {
			if bytes.HasPrefix(r.GetLine(), []byte("count 1")) {
				counted.Add(1)
			}
		}
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if err := b.nc.Flush(); err != nil {
		return err
	}
	env := []*executorv1.EnvVar{{Name: "COUNT", Value: "2"}, {Name: "SLEEP", Value: "1h"}}
	var started atomic.Int64
	t0 := time.Now()
	err = parallel(n, b.opts.ExecConcurrency, func(i int) error {
		id := fmt.Sprintf("density-%d", i)
		in, err := p.createWith(ctx, id, b.mods.hello, env, subjects.Logs(execNode, "density", id, "app"))
		if err != nil {
			return err
		}
		if in.GetState() != executorv1.InstanceState_INSTANCE_STATE_RUNNING {
			return fmt.Errorf("instance %s is %s after create (%s: %s)", id, in.GetState(), in.GetReason(), in.GetMessage())
		}
		started.Add(1)
		return nil
	})
	held := Values(fmt.Sprintf("%ssleeping Go instances held (of %d asked)", b.label, n), "instances of examples/hello (SLEEP 1h) created and RUNNING at once in one executor", "instances", []float64{float64(started.Load())})
	if err != nil {
		b.figs = append(b.figs, held)
		return fmt.Errorf("density: %d of %d instances started: %w (executor log: %s)", started.Load(), n, err, p.logTail())
	}
	// Wait until every instance has reached its sleep (printed "count 1").
	for deadline := time.Now().Add(5 * time.Minute); counted.Load() < int64(n); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.figs = append(b.figs, held)
			return fmt.Errorf("density: %d of %d instances reached their sleep in 5m", counted.Load(), n)
		}
	}
	all := time.Since(t0)
	time.Sleep(time.Second)
	after, pssAfter := procFields(pid, "status"), procFields(pid, "smaps_rollup")
	perInst := func(field string) float64 { return float64(after[field]-before[field]) / float64(n) / (1 << 20) }
	pssPer := func(field string) float64 { return float64(pssAfter[field]-pssBefore[field]) / float64(n) / (1 << 20) }
	stats, err := p.c.ListInstanceStats(ctx, &executorv1.ListInstanceStatsRequest{})
	if err != nil {
		return fmt.Errorf("density: instance stats: %w", err)
	}
	var linear int64
	for _, st := range stats.GetStats() {
		linear += st.GetMemoryBytes()
	}
	f := Values(fmt.Sprintf("%sresident memory per sleeping Go instance, %d instances", b.label, n),
		fmt.Sprintf("(executor VmRSS with %d instances of examples/hello asleep − VmRSS idle with the module loaded) / %d; idle %.1f MiB, with them %.1f MiB; per instance anonymous %.2f, file %.2f, shmem %.2f MiB; linear memory (the guest's size, not all resident) %.2f MiB per instance",
			n, n, float64(before["VmRSS"])/(1<<20), float64(after["VmRSS"])/(1<<20), perInst("RssAnon"), perInst("RssFile"), perInst("RssShmem"), float64(linear)/float64(len(stats.GetStats()))/(1<<20)),
		"MiB", []float64{perInst("VmRSS")})
	f.Hold("max", execDensityTarget)
	pss := Values(fmt.Sprintf("%sproportional memory (PSS) per sleeping Go instance, %d instances", b.label, n),
		fmt.Sprintf("the same, with the executor's Pss (smaps_rollup) instead of VmRSS: a page mapped by many instances (e.g. the one precompiled artifact, mapped once per wasmtime Engine) counts once, not once per mapping; per instance anonymous %.2f, file %.2f, shmem %.2f MiB", pssPer("Pss_Anon"), pssPer("Pss_File"), pssPer("Pss_Shmem")),
		"MiB", []float64{pssPer("Pss")})
	pss.Hold("max", execDensityTarget)
	// Issue 18 §2: an instance asleep in WASI gives its thread back, on
	// either engine (wasmtime's wasm runs on a fiber).
	threads := Values(fmt.Sprintf("%sOS threads per sleeping Go instance", b.label), fmt.Sprintf("(executor threads with the instances − idle: %d → %d) / %d", before["Threads"], after["Threads"], n), "threads", []float64{float64(after["Threads"]-before["Threads"]) / float64(n)})
	threads.Hold("max", execThreadsTarget)
	b.figs = append(b.figs, held, f, pss, threads,
		Durations(fmt.Sprintf("%s%d sleeping Go instances, all asleep", b.label, n), fmt.Sprintf("first CreateInstance → every instance's first log line on NATS; %d callers", b.opts.ExecConcurrency), []time.Duration{all}))
	return nil
}

// procFields reads the "Name: N [kB]" lines of /proc/<pid>/<file>
// (status, smaps_rollup), sizes in bytes.
func procFields(pid int, file string) map[string]int64 {
	out := map[string]int64{}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		f := strings.Fields(v)
		if !ok || len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		out[k] = n
	}
	return out
}

// selfCPU is the user+system CPU seconds this process has used.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// holdAtLeast sets a target on f: its stat must be at least limit.
func holdAtLeast(f *Figure, stat string, limit float64) {
	v := map[string]float64{"median": f.Median, "p99": f.P99, "min": f.Min}[stat]
	ok := f.Samples > 0 && v >= limit
	f.Target = fmt.Sprintf("%s ≥ %g %s", stat, limit, f.Unit)
	f.Met = &ok
}

// parallel runs fn(0..n-1) on workers goroutines; the first error stops
// the handing out of more work and is returned.
func parallel(n, workers int, fn func(i int) error) error {
	var (
		next    atomic.Int64
		errOnce sync.Once
		first   error
		failed  atomic.Bool
		wg      sync.WaitGroup
	)
	for range max(1, min(workers, n)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					errOnce.Do(func() { first = err })
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// execProc is a running executor process and its client.
type execProc struct {
	cmd    *exec.Cmd
	exited chan error
	log    string
	conn   *grpc.ClientConn
	c      executorv1.ExecutorServiceClient
	stopW  context.CancelFunc

	mu      sync.Mutex
	waiters map[string]chan *executorv1.Instance
}

// start starts an executor process for b's engine (its state dir kept
// across b's processes) and follows its instances' ends.
func (b *execBench) start(ctx context.Context, name string) (*execProc, error) {
	sock := "unix://" + filepath.Join(b.dir, "exec-"+name+".sock")
	logPath := filepath.Join(b.dir, "executor-"+name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(b.bin, "executor"), "--listen", sock, "--registry", b.regAddr, "--nats", b.natsURL,
		"--state-dir", b.stateDir(), "--id", "bench-"+b.engine+"-"+name, "--engine", b.engine,
		"--max-instances", fmt.Sprint(max(b.opts.ExecDensity, b.opts.ExecConcurrency)+100))
	cmd.Args = append(cmd.Args, b.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &execProc{cmd: cmd, exited: make(chan error, 1), log: logPath, waiters: map[string]chan *executorv1.Instance{}}
	go func() { p.exited <- cmd.Wait() }()
	fail := func(err error) (*execProc, error) {
		p.kill()
		return nil, fmt.Errorf("%w (executor log: %s)", err, p.logTail())
	}
	if p.conn, err = grpcutil.Dial(sock); err != nil {
		return fail(err)
	}
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := grpcutil.WaitHealthy(hctx, p.conn); err != nil {
		return fail(err)
	}
	p.c = executorv1.NewExecutorServiceClient(p.conn)
	wctx, stopW := context.WithCancel(context.Background())
	p.stopW = stopW
	w, err := p.c.WatchInstances(wctx, &executorv1.WatchInstancesRequest{})
	if err != nil {
		return fail(err)
	}
	go p.follow(w)
	return p, nil
}

// follow hands each instance's end to its waiter.
func (p *execProc) follow(w grpc.ServerStreamingClient[executorv1.WatchInstancesResponse]) {
	for {
		r, err := w.Recv()
		if err != nil {
			return
		}
		in := r.GetInstance()
		switch in.GetState() {
		case executorv1.InstanceState_INSTANCE_STATE_EXITED, executorv1.InstanceState_INSTANCE_STATE_KILLED, executorv1.InstanceState_INSTANCE_STATE_FAILED:
			p.mu.Lock()
			ch := p.waiters[in.GetId()]
			delete(p.waiters, in.GetId())
			p.mu.Unlock()
			if ch != nil {
				ch <- in
			}
		}
	}
}

// watchFor returns the channel on which id's end will come. Call it before
// creating id.
func (p *execProc) watchFor(id string) chan *executorv1.Instance {
	ch := make(chan *executorv1.Instance, 1)
	p.mu.Lock()
	p.waiters[id] = ch
	p.mu.Unlock()
	return ch
}

func (p *execProc) create(ctx context.Context, id, digest string, env []*executorv1.EnvVar) (*executorv1.Instance, error) {
	return p.createWith(ctx, id, digest, env, subjects.Logs(execNode, "bench", id, "app"))
}

// createWith creates and starts an instance as the node agent does: with
// a log subject, so that its output goes to NATS.
func (p *execProc) createWith(ctx context.Context, id, digest string, env []*executorv1.EnvVar, logSubject string) (*executorv1.Instance, error) {
	r, err := p.c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: id, Start: true, Spec: &executorv1.InstanceSpec{
		Module:     &executorv1.Module{Digest: digest, Reference: "bench.local/" + id},
		Args:       []string{"app"},
		Env:        env,
		LogSubject: logSubject,
		Labels:     map[string]string{"bench": "executor"},
	}})
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", id, err)
	}
	return r.GetInstance(), nil
}

// runToEnd creates and starts an instance, waits for its end and deletes it.
func (p *execProc) runToEnd(ctx context.Context, id, digest string, env []*executorv1.EnvVar) (*executorv1.Instance, error) {
	end := p.watchFor(id)
	in, err := p.create(ctx, id, digest, env)
	if err != nil {
		return nil, err
	}
	if in.GetState() == executorv1.InstanceState_INSTANCE_STATE_FAILED {
		return nil, fmt.Errorf("instance %s failed: %s: %s", id, in.GetReason(), in.GetMessage())
	}
	return p.endAndDelete(ctx, id, end)
}

func (p *execProc) endAndDelete(ctx context.Context, id string, end chan *executorv1.Instance) (*executorv1.Instance, error) {
	var in *executorv1.Instance
	select {
	case in = <-end:
	case <-time.After(time.Minute):
		return nil, fmt.Errorf("instance %s: no end in 1m", id)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if _, err := p.c.DeleteInstance(ctx, &executorv1.DeleteInstanceRequest{Id: id}); err != nil {
		return nil, fmt.Errorf("delete %s: %w", id, err)
	}
	return in, nil
}

// stop ends the process with SIGTERM (it kills its instances), and with
// SIGKILL if that takes over 30s.
func (p *execProc) stop() error {
	p.stopW()
	p.conn.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			return fmt.Errorf("executor exit: %w (log: %s)", err, p.logTail())
		}
		return nil
	case <-time.After(30 * time.Second):
		p.kill()
		return errors.New("executor did not exit within 30s of SIGTERM")
	}
}

func (p *execProc) kill() {
	if p.stopW != nil {
		p.stopW()
	}
	if p.conn != nil {
		p.conn.Close()
	}
	p.cmd.Process.Kill()
	<-p.exited
}

// logTail is the end of the executor's log, for errors.
func (p *execProc) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
