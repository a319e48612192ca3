// Package wagi is handler mode: the executor serves HTTP on an instance's
// listeners itself and runs the module once per request, WAGI style
// (CGI: the request in the environment and on stdin, the response on
// stdout), from a pool of instances instantiated ahead of requests, so
// that a request pays only the module's _start. It works on any engine
// that instantiates ahead (engine.Instantiator), also one that cannot
// hand a module a socket (wasmtime).
//
// It owns a handler's listeners, its HTTP servers, its pool and the runs
// of its requests, and is the engine.Instance the instance manager holds
// for it: Kill stops serving and frees everything (Drain, once the
// requests in flight are answered), Done is closed once every run has
// ended, Usage adds up its instances. It must not know of
// instance ids, states, pods or gRPC, nor of any runtime: each run is an
// engine.Run (its thread, CPU limit, kill, the one rule for how it ended).
//
// What a request gets: the spec's args, preopens and memory and CPU
// limits per run (each run is an instance of its own); the spec's env,
// then the CGI variables (Env); its body on stdin (read whole first,
// bounded by Config.MaxRequestBytes); the run's stderr goes to the spec's
// Stderr a line at a time, with a line of the executor's when a run
// fails. A run that traps or exits non-zero, or writes no valid CGI
// response, is answered 500; a request that waits longer than
// Config.QueueTimeout for a run, 503; a client gone kills its run.
//
// Usage, by the instance manager:
//
//	inst, err := wagi.Serve(ctx, eng, m, spec, wagi.Config{})
//	// serving on spec.Listeners until
//	inst.Kill()
//	inst.Wait()
package wagi

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/threadcpu"
)

// Mode is the one handler mode there is, as the instance API names it.
const Mode = "wagi"

// Config bounds a handler; zero values take the defaults.
type Config struct {
	// Pool is how many instances are kept instantiated ahead of requests
	// (default: the number of cores, GOMAXPROCS).
	Pool int
	// MaxInFlight bounds the runs at once (default 4 per core); more
	// requests wait for one to end.
	MaxInFlight int
	// QueueTimeout bounds a request's wait for a run (default 10s); it is
	// then answered 503.
	QueueTimeout time.Duration
	// MaxRequestBytes bounds a request body (default 16 MiB; more: 413).
	MaxRequestBytes int64
	// MaxResponseBytes bounds what a run writes to stdout (default 16
	// MiB; more: 500).
	MaxResponseBytes int
}

func (c Config) withDefaults() Config {
	n := runtime.GOMAXPROCS(0)
	c.Pool = cmp.Or(max(c.Pool, 0), n)
	c.MaxInFlight = cmp.Or(max(c.MaxInFlight, 0), 4*n)
	c.QueueTimeout = cmp.Or(max(c.QueueTimeout, 0), 10*time.Second)
	c.MaxRequestBytes = cmp.Or(max(c.MaxRequestBytes, 0), 16<<20)
	c.MaxResponseBytes = cmp.Or(max(c.MaxResponseBytes, 0), 16<<20)
	return c
}

// Handler is a module served in handler mode: an engine.Instance that
// runs until killed.
type Handler struct {
	eng  engine.Instantiator
	mod  engine.Module
	spec engine.Spec
	cfg  Config
	log  *lines // the spec's Stderr, for lines of the executor

	servers []*http.Server
	addrs   []net.Addr
	slots   chan struct{} // one per run in flight
	need    chan struct{} // wakes the filler
	stop    chan struct{} // closed by Kill
	wg      sync.WaitGroup

	mu         sync.Mutex
	stopped    bool
	idle       []engine.Pending
	runs       map[engine.Instance]struct{}
	endedCPU   time.Duration // of runs that ended
	unmeasured bool          // a run's CPU could not be read
	setupCPU   atomic.Int64  // ns spent instantiating

	stopOnce  sync.Once
	drainOnce sync.Once
	done      chan struct{}
	result    engine.Result
}

var _ engine.Instance = (*Handler)(nil)

// Serve opens spec's listeners (in spec.NetNS, or handed over: a
// Listener's File), instantiates the module once to check that it can
// (ErrInstantiate and the engine's other errors), and serves HTTP on
// them until the Handler is killed. Listener errors wrap
// engine.ErrPortInUse or engine.ErrListen.
func Serve(ctx context.Context, e engine.Instantiator, m engine.Module, spec engine.Spec, cfg Config) (*Handler, error) {
	if len(spec.Listeners) == 0 {
		return nil, fmt.Errorf("%w: handler mode needs a listener to serve HTTP on", engine.ErrInstantiate)
	}
	cfg = cfg.withDefaults()
	h := &Handler{
		eng: e, mod: m, spec: spec, cfg: cfg,
		log:   newLines(spec.Stderr),
		slots: make(chan struct{}, cfg.MaxInFlight),
		need:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		runs:  map[engine.Instance]struct{}{},
		done:  make(chan struct{}),
	}
	// The spec as each run's: no listeners (the executor holds them), and
	// its output is the handler's.
	h.spec.Listeners, h.spec.NetNS, h.spec.Stdout, h.spec.Stderr = nil, "", nil, nil
	first, err := h.instantiate(ctx)
	if err != nil {
		return nil, err
	}
	ls, err := listen(spec.Listeners, spec.NetNS)
	if err != nil {
		first.Close()
		return nil, err
	}
	h.idle = append(h.idle, first)
	for _, l := range ls {
		srv := &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          nil,
		}
		h.servers = append(h.servers, srv)
		h.addrs = append(h.addrs, l.Addr())
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				h.end(engine.Result{ExitCode: 1, Reason: engine.ReasonError,
					Message: fmt.Sprintf("serving HTTP on %s ended: %v", l.Addr(), err)})
			}
		}()
	}
	h.wg.Add(1)
	go h.fill()
	return h, nil
}

// listen opens ls in netns, or makes listeners of those handed over.
func listen(ls []engine.Listener, netns string) ([]net.Listener, error) {
	var out []net.Listener
	fail := func(err error) ([]net.Listener, error) {
		for _, l := range out {
			l.Close()
		}
		return nil, engine.ListenError(ls, netns, err)
	}
	for _, l := range ls {
		if l.File != nil {
			nl, err := net.FileListener(l.File)
			if err != nil {
				return fail(err)
			}
			out = append(out, nl)
			continue
		}
		err := engine.InNetNS(netns, func() error {
			nl, err := net.Listen("tcp", l.Addr())
			if err == nil {
				out = append(out, nl)
			}
			return err
		})
		if err != nil {
			return fail(err)
		}
	}
	return out, nil
}

// instantiate makes a Pending on a thread locked for the while, whose CPU
// time is counted as the handler's.
func (h *Handler) instantiate(ctx context.Context) (engine.Pending, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t := threadcpu.Current()
	p, err := h.eng.Instantiate(ctx, h.mod, h.spec)
	if cpu, ok := t.Usage(); ok {
		h.setupCPU.Add(int64(cpu))
	}
	return p, err
}

// fill keeps Config.Pool instances instantiated ahead of requests.
func (h *Handler) fill() {
	defer h.wg.Done()
	for {
		h.mu.Lock()
		n, stopped := len(h.idle), h.stopped
		h.mu.Unlock()
		if stopped {
			return
		}
		if n >= h.cfg.Pool {
			select {
			case <-h.need:
			case <-h.stop:
				return
			}
			continue
		}
		p, err := h.instantiate(context.Background())
		if err != nil {
			h.log.printf("wasmlet: handler: instantiating the module failed: %v; retrying in 1s", err)
			select {
			case <-time.After(time.Second):
			case <-h.stop:
				return
			}
			continue
		}
		h.mu.Lock()
		if h.stopped {
			h.mu.Unlock()
			p.Close()
			return
		}
		h.idle = append(h.idle, p)
		h.mu.Unlock()
	}
}

// take is an instance for a run: one of the pool's, or a new one when the
// pool is empty (a burst beyond it).
func (h *Handler) take(ctx context.Context) (engine.Pending, error) {
	h.mu.Lock()
	var p engine.Pending
	if n := len(h.idle); n > 0 {
		p = h.idle[n-1]
		h.idle = h.idle[:n-1]
	}
	h.mu.Unlock()
	select {
	case h.need <- struct{}{}:
	default:
	}
	if p != nil {
		return p, nil
	}
	return h.instantiate(ctx)
}

// ServeHTTP runs the module for one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.slot(w, r) {
		return
	}
	defer func() { <-h.slots }()
	var body []byte
	if r.ContentLength != 0 { // a GET's has none: nothing to read or keep
		var err error
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxRequestBytes))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				http.Error(w, fmt.Sprintf("request body larger than %d bytes", h.cfg.MaxRequestBytes), http.StatusRequestEntityTooLarge)
			}
			return
		}
	}
	res, out, err := h.run(r, body)
	if err != nil {
		h.fail(w, r, "%v", err)
		return
	}
	if !res.Exited || res.ExitCode != 0 {
		h.fail(w, r, "%s", res.Message)
		return
	}
	if out.over {
		h.fail(w, r, "the handler wrote more than %d bytes to stdout", h.cfg.MaxResponseBytes)
		return
	}
	resp, err := ParseResponse(out.Bytes())
	if err != nil {
		h.fail(w, r, "%v", err)
		return
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.Status)
	w.Write(resp.Body)
}

// slot takes a slot for r's run, waiting up to Config.QueueTimeout for
// one, or answers why not and reports false.
func (h *Handler) slot(w http.ResponseWriter, r *http.Request) bool {
	select {
	case h.slots <- struct{}{}:
		return true // no timer for a request that need not wait
	default:
	}
	wait := time.NewTimer(h.cfg.QueueTimeout)
	defer wait.Stop()
	select {
	case h.slots <- struct{}{}:
		return true
	case <-wait.C:
		http.Error(w, "the handler is busy: every run is taken and none ended in time; try again", http.StatusServiceUnavailable)
	case <-r.Context().Done():
	case <-h.stop:
		http.Error(w, "the handler is stopping", http.StatusServiceUnavailable)
	}
	return false
}

// run runs an instance for r with body on stdin, and returns how it ended
// and its stdout.
func (h *Handler) run(r *http.Request, body []byte) (engine.Result, *capped, error) {
	p, err := h.take(r.Context())
	if err != nil {
		return engine.Result{}, nil, err
	}
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		p.Close()
		return engine.Result{}, nil, errors.New("the handler is stopping")
	}
	h.wg.Add(1) // Kill's end waits for the run
	h.mu.Unlock()
	defer h.wg.Done()
	out := &capped{max: h.cfg.MaxResponseBytes}
	var stderr io.Writer // none: the engine need not connect it (a pipe, on wasmtime)
	if h.log.sink != nil {
		s := h.log.request()
		defer s.flush()
		stderr = s
	}
	var local net.Addr
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		local = a
	}
	var stdin io.Reader
	if len(body) > 0 {
		stdin = bytes.NewReader(body)
	}
	stdio := engine.Stdio{Env: Env(h.spec.Env, r, local), Stdin: stdin, Stdout: out, Stderr: stderr}
	// started makes inst one of the runs Kill ends, and has the client's
	// going away kill it.
	release := func() bool { return false }
	started := func(inst engine.Instance) {
		h.mu.Lock()
		h.runs[inst] = struct{}{}
		stopped := h.stopped
		h.mu.Unlock()
		if stopped {
			inst.Kill()
		}
		release = context.AfterFunc(r.Context(), inst.Kill)
	}
	var inst engine.Instance
	if in, ok := p.(engine.Inline); ok {
		// On this goroutine: no hand-over to another and back.
		inst, err = in.RunInline(stdio, started)
	} else if inst, err = p.Run(stdio); err == nil {
		started(inst)
		<-inst.Done()
	}
	release()
	if err != nil {
		return engine.Result{}, nil, err
	}
	res := inst.Wait()
	u := inst.Usage()
	h.mu.Lock()
	delete(h.runs, inst)
	h.endedCPU += u.CPU
	h.unmeasured = h.unmeasured || !u.CPUMeasured
	h.mu.Unlock()
	return res, out, nil
}

// fail answers 500 and says why in the container's log.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, format string, args ...any) {
	why := fmt.Sprintf(format, args...)
	h.log.printf("wasmlet: handler: %s %s answered 500: %s", r.Method, r.URL.RequestURI(), why)
	http.Error(w, "the handler failed: "+why, http.StatusInternalServerError)
}

// Addrs are the addresses it serves on, in the order of the spec's
// listeners.
func (h *Handler) Addrs() []net.Addr { return h.addrs }

// Done implements engine.Instance.
func (h *Handler) Done() <-chan struct{} { return h.done }

// Wait implements engine.Instance.
func (h *Handler) Wait() engine.Result {
	<-h.done
	return h.result
}

// Kill implements engine.Instance: it stops serving (the listeners and
// connections close), kills the runs in flight and frees the pool.
func (h *Handler) Kill() {
	h.end(engine.Result{ExitCode: engine.KilledExitCode, Reason: engine.ReasonKilled, Message: "the handler was killed"})
}

// Drain stops taking connections and ends the handler once the requests
// in flight have been answered: Completed, as a server that exits when
// asked to. A Kill meanwhile ends them at once (Killed). Idempotent.
func (h *Handler) Drain() {
	h.drainOnce.Do(func() {
		go func() {
			var wg sync.WaitGroup
			for _, s := range h.servers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s.Shutdown(context.Background()) // returns at once after a Kill's Close
				}()
			}
			wg.Wait()
			h.end(engine.Result{Exited: true, Reason: engine.ReasonCompleted, Message: "the handler was stopped and answered the requests in flight"})
		}()
	})
}

// end stops the handler, once, and ends it with res when everything of it
// has ended.
func (h *Handler) end(res engine.Result) {
	h.stopOnce.Do(func() {
		h.mu.Lock()
		h.stopped = true
		close(h.stop)
		idle := h.idle
		h.idle = nil
		var runs []engine.Instance
		for r := range h.runs {
			runs = append(runs, r)
		}
		h.mu.Unlock()
		for _, r := range runs {
			r.Kill()
		}
		go func() {
			for _, s := range h.servers {
				s.Close()
			}
			for _, p := range idle {
				p.Close()
			}
			h.wg.Wait()
			h.result = res
			close(h.done)
		}()
	})
}

// Usage implements engine.Instance: the linear memory of the instances
// held now (pooled and running; each is bounded by the spec's limit), and
// the CPU time of every run and instantiation so far.
func (h *Handler) Usage() engine.Usage {
	h.mu.Lock()
	defer h.mu.Unlock()
	u := engine.Usage{CPU: h.endedCPU + time.Duration(h.setupCPU.Load()), CPUMeasured: !h.unmeasured}
	for _, p := range h.idle {
		u.MemoryBytes += p.Memory()
	}
	for r := range h.runs {
		ru := r.Usage()
		u.MemoryBytes += ru.MemoryBytes
		u.CPU += ru.CPU
		u.CPUMeasured = u.CPUMeasured && ru.CPUMeasured
	}
	return u
}

// capped is a run's stdout, kept up to max bytes.
type capped struct {
	bytes.Buffer
	max  int
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	if c.Len()+len(p) > c.max {
		c.over = true
		return 0, errors.New("response too large")
	}
	return c.Buffer.Write(p)
}
