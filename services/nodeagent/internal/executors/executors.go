// Package executors is the node agent's view of its executors: a pool of
// replicas, several per flavour, static (--executor FLAVOUR=ADDRESS) or
// announced on NATS (events.v1.ExecutorAnnouncement on
// wasmlet.executors.<node>.<flavour>.<id>), each with the listener socket
// the node agent hands pods' listening sockets over on, when it has one
// (Executor.ListenerSocket: a static one's from Config.ListenerSockets or
// its announcement, an announced one's from its announcement). It owns
// routing (a pod's RuntimeClass handler to a flavour, Flavour), placement
// (a pod bound to one replica, Bind), the replicas' liveness (Run), the
// client transport (mutual TLS for tcp://; an announced address beyond
// loopback is never dialled in plaintext) and one watch per replica
// (watch).
//
// It never interprets instance states: it hands them, and the loss of a
// replica's instances, to a Sink.
//
// Usage:
//
//	pool, err := executors.New(executors.Config{Executors: static, NATS: nc, Node: "node-1", Default: "wasmtime"})
//	err = pool.WaitReady(ctx)
//	go pool.Run(ctx, sink)
//	flavour, err := pool.Flavour(pod, handler)
//	b := pool.Bind(ctx, flavour, map[string]string{"wasmlet.io/pod-uid": uid}, len(pod.Spec.Containers))
//	rt := proxy.New(b)  // an instances.Runtime on the replica holding the pod
//	rt.Create(ctx, id, spec, true)
//	b.Release()         // when the pod is gone
package executors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	v1 "k8s.io/api/core/v1"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/proxy"
)

// Sink receives what the watches see.
type Sink interface {
	// InstanceChanged is called for every state change, in order per
	// replica (named by Executor.ID), and for every instance of a replica
	// listed again after its watch fell behind.
	InstanceChanged(replica string, inst instances.Instance)
	// ExecutorLost is called when every instance a replica ran is gone: a
	// static executor came back with a new identity, or an announced one
	// is gone for good. reason says which, for the pod's status.
	ExecutorLost(replica, reason string)
}

// Executor is one replica.
type Executor struct {
	// ID names the replica in the pool: the flavour of a static executor,
	// the announced executor id of a discovered one.
	ID      string
	Flavour string
	Address string
	Static  bool
	// Runtime is the replica's instances, over its connection.
	Runtime instances.Runtime
	conn    *grpc.ClientConn

	gone      chan struct{} // closed once the pool gave it up
	stopWatch context.CancelFunc

	mu      sync.Mutex
	info    *instances.Info
	healthy bool
	ann     *eventsv1.ExecutorAnnouncement // latest announcement (discovered only)
	// socket: see ListenerSocket; announced: it came from an announcement
	// (a static replica given none takes the one it announces).
	socket    string
	announced bool
	seen      time.Time // when it was last announced
	bound     int       // instances of the pods bound here
}

// Info returns what the executor last reported, and whether it answered
// its last check.
func (e *Executor) Info() (*instances.Info, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.info, e.healthy
}

// ListenerSocket is the path of the replica's --listener-socket, where
// the node agent hands it the listening sockets it opened for a pod
// (package instances/handoff); "" when none is known, and then the
// executor opens them itself. A static replica's is the one configured
// for it, else the one it announces; an announced replica's, the one it
// announces. A path names a socket only where the node agent and the
// executor share a filesystem (one host, or a volume mounted at the same
// path in both containers); the descriptors sent over it keep the network
// namespace they were opened in.
func (e *Executor) ListenerSocket() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.socket
}

// Gone reports whether the pool gave the replica up.
func (e *Executor) Gone() bool {
	select {
	case <-e.gone:
		return true
	default:
		return false
	}
}

func (e *Executor) String() string {
	return fmt.Sprintf("%s (%s) at %s", e.ID, e.Flavour, e.Address)
}

// Config lists the static executors, where to discover others, and the
// routing.
type Config struct {
	// Executors by flavour name, each a gRPC address (static replicas).
	Executors map[string]string
	// ListenerSockets are the static replicas' listener sockets, by
	// flavour (optional; see Executor.ListenerSocket): absolute paths. A
	// static replica given none takes the one it announces, if it does.
	ListenerSockets map[string]string
	// NATS, when set, is where executors announce themselves for Node.
	NATS *nats.Conn
	Node string
	// Default is the flavour of pods that name no RuntimeClass.
	Default string
	// Handlers maps a RuntimeClass handler to a flavour.
	Handlers map[string]string
	// TLS is the client's mutual TLS towards every replica at a tcp://
	// address, static or announced alike (the zero TLS: plaintext, and then
	// an address beyond loopback is refused).
	TLS grpcutil.TLS
	// DialOptions, optional, are added to the dial of every replica of a
	// flavour (e.g. interceptors that count errors).
	DialOptions func(flavour string) []grpc.DialOption
	Log         *slog.Logger
}

// TTLPeriods is how many announcement periods an announced replica may
// stay silent before its health check decides whether it is gone.
const TTLPeriods = 3

// defaultPeriod is assumed for an announcement that names none.
const defaultPeriod = 5 * time.Second

// Pool holds the replicas.
type Pool struct {
	cfg Config
	sub *nats.Subscription

	mu      sync.Mutex
	execs   map[string]*Executor // by ID
	sink    Sink                 // set by Run
	runCtx  context.Context
	watches sync.WaitGroup
	changed chan struct{} // closed and replaced whenever a replica is added
	// undialled: announced executors (id and address) whose dial failed,
	// already logged.
	undialled map[string]struct{}
	// givenUp: announced replicas dropped while they may still run (silent
	// and not answering, or their address answered with another id), by
	// id; true while their leftover instances are being removed.
	givenUp map[string]bool
}

// New dials every static executor (lazily: none need be up yet) and, with
// NATS, starts listening for announcements and asks this node's executors
// to announce themselves.
func New(cfg Config) (*Pool, error) {
	if len(cfg.Executors) == 0 && cfg.NATS == nil {
		return nil, errors.New("executors: give at least one executor address, or NATS to discover them on")
	}
	if cfg.NATS != nil && cfg.Node == "" {
		return nil, errors.New("executors: discovery needs the node name")
	}
	if cfg.NATS == nil {
		if _, ok := cfg.Executors[cfg.Default]; !ok {
			return nil, fmt.Errorf("executors: default flavour %q is not among the executors", cfg.Default)
		}
		for h, f := range cfg.Handlers {
			if _, ok := cfg.Executors[f]; !ok {
				return nil, fmt.Errorf("executors: handler %q maps to unknown flavour %q", h, f)
			}
		}
	}
	for f, path := range cfg.ListenerSockets {
		if _, ok := cfg.Executors[f]; !ok {
			return nil, fmt.Errorf("executors: listener socket %q given for flavour %q, which has no static executor", path, f)
		}
		if !filepath.IsAbs(path) {
			return nil, fmt.Errorf("executors: listener socket %q of flavour %q: want an absolute path", path, f)
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	p := &Pool{cfg: cfg, execs: map[string]*Executor{}, changed: make(chan struct{})}
	for name, addr := range cfg.Executors {
		e, err := p.dial(name, name, addr, true)
		if err != nil {
			p.Close()
			return nil, err
		}
		e.socket = cfg.ListenerSockets[name]
		p.execs[name] = e
	}
	if cfg.NATS != nil {
		if err := p.discover(); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

func (p *Pool) dial(id, flavour, addr string, static bool) (*Executor, error) {
	var opts []grpc.DialOption
	if p.cfg.DialOptions != nil {
		opts = p.cfg.DialOptions(flavour)
	}
	conn, err := grpcutil.DialTLS(addr, p.cfg.TLS, opts...)
	if err != nil {
		return nil, fmt.Errorf("executor %s at %s: %w", id, addr, err)
	}
	return &Executor{ID: id, Flavour: flavour, Address: addr, Static: static, Runtime: proxy.New(conn), conn: conn, gone: make(chan struct{})}, nil
}

// Close stops listening for announcements and closes every connection.
func (p *Pool) Close() {
	if p.sub != nil {
		_ = p.sub.Unsubscribe()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.execs {
		e.conn.Close()
	}
}

// All returns every replica, ordered by ID.
func (p *Pool) All() []*Executor {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*Executor, 0, len(p.execs))
	for _, e := range p.execs {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Get returns a replica by ID.
func (p *Pool) Get(id string) (*Executor, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.execs[id]
	return e, ok
}

// replicas returns the replicas of a flavour, ordered by ID.
func (p *Pool) replicas(flavour string) []*Executor {
	var out []*Executor
	for _, e := range p.All() {
		if e.Flavour == flavour {
			out = append(out, e)
		}
	}
	return out
}

// ErrNoHandler: the pod's RuntimeClass names a handler no executor serves.
var ErrNoHandler = errors.New("runtime handler not served by this node")

// Flavour is the flavour of executor a pod runs on, from its RuntimeClass's
// handler ("" for a pod that names none). A handler is served when the
// configuration maps it to a flavour, or when a flavour of that name is in
// the pool now.
func (p *Pool) Flavour(pod *v1.Pod, handler string) (string, error) {
	if handler == "" {
		return p.cfg.Default, nil
	}
	if f, ok := p.cfg.Handlers[handler]; ok {
		return f, nil
	}
	if slices.Contains(p.flavours(), handler) {
		return handler, nil
	}
	return "", fmt.Errorf("runtimeClass %q has handler %q: %w; served handlers: %v",
		deref(pod.Spec.RuntimeClassName), handler, ErrNoHandler, p.handlerNames())
}

// ServingFlavour is the flavour a pod that declares ports runs on instead
// of flavour: flavour itself when a replica of it hands modules listening
// sockets (instances.Info.Listeners) or none has reported yet, else the
// first other flavour with a replica that does; ok is false when there is
// none.
func (p *Pool) ServingFlavour(flavour string) (string, bool) {
	serving := map[string]bool{}
	reported := map[string]bool{}
	for _, e := range p.All() {
		if info, _ := e.Info(); info != nil {
			reported[e.Flavour] = true
			serving[e.Flavour] = serving[e.Flavour] || info.Listeners
		}
	}
	if serving[flavour] || !reported[flavour] {
		return flavour, true
	}
	for _, f := range p.flavours() {
		if serving[f] {
			return f, true
		}
	}
	return flavour, false
}

// flavours lists the flavours with a replica now, sorted.
func (p *Pool) flavours() []string {
	var out []string
	for _, e := range p.All() {
		if !slices.Contains(out, e.Flavour) {
			out = append(out, e.Flavour)
		}
	}
	sort.Strings(out)
	return out
}

func (p *Pool) handlerNames() []string {
	var out []string
	for h := range p.cfg.Handlers {
		out = append(out, h)
	}
	for _, f := range p.flavours() {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// Unavailable lists, sorted, the flavours this node must serve (those of
// the static executors, the default, and every one with a replica) that
// have no healthy replica now, each with what is known of its replicas;
// empty when the node can run its pods.
func (p *Pool) Unavailable() []string {
	want := map[string][]string{p.cfg.Default: nil}
	up := map[string]bool{}
	for _, e := range p.All() {
		_, healthy := e.Info()
		if healthy {
			up[e.Flavour] = true
		}
		want[e.Flavour] = append(want[e.Flavour], e.ID+" at "+e.Address)
	}
	var out []string
	for f, reps := range want {
		if up[f] {
			continue
		}
		switch {
		case len(reps) == 0:
			out = append(out, f+" (no executor of this flavour has announced itself)")
		case len(reps) == 1 && reps[0] == f+" at "+p.cfg.Executors[f]:
			out = append(out, f+" at "+p.cfg.Executors[f])
		default:
			out = append(out, f+" ("+strings.Join(reps, ", ")+")")
		}
	}
	sort.Strings(out)
	return out
}

// WaitReady waits until every static executor answers its health check,
// and, with discovery, until the executors that answer the discovery
// request have announced themselves (no new one for a moment) and the
// default flavour has a replica.
func (p *Pool) WaitReady(ctx context.Context) error {
	for _, e := range p.All() {
		if !e.Static {
			continue
		}
		if err := grpcutil.WaitHealthy(ctx, e.conn); err != nil {
			return fmt.Errorf("executor %s at %s: %w", e.Flavour, e.Address, err)
		}
	}
	if p.cfg.NATS == nil {
		return nil
	}
	// Replicas answer the discovery request within milliseconds; wait
	// until none has appeared for a quiet spell, so that pods are placed
	// (and re-adopted) knowing every replica.
	const quiet, most = 300 * time.Millisecond, 3 * time.Second
	deadline := time.After(most)
	for settled := false; !settled; {
		p.mu.Lock()
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			settled = true
		case <-time.After(quiet):
			settled = true
		case <-ch:
		}
	}
	for len(p.replicas(p.cfg.Default)) == 0 {
		p.mu.Lock()
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return fmt.Errorf("no executor of the default flavour %q announced itself for node %s (start one with --node %s --flavour %s --nats URL, or give --executor %s=ADDRESS): %w",
				p.cfg.Default, p.cfg.Node, p.cfg.Node, p.cfg.Default, p.cfg.Default, ctx.Err())
		case <-ch:
		}
	}
	return nil
}

// Run follows every replica's instance events into sink, and gives up the
// announced replicas that are gone, until ctx ends. An announced replica
// is gone when it says it is leaving, when another executor took its
// address, or when it has not announced itself for TTLPeriods periods and
// does not answer its health check: a missed announcement alone is not
// death. One given up that later announces itself again first has what it
// still runs removed (its pods were told those instances were lost and
// started them elsewhere), then comes back as a new, empty replica.
func (p *Pool) Run(ctx context.Context, sink Sink) {
	p.mu.Lock()
	p.sink, p.runCtx = sink, ctx
	for _, e := range p.execs {
		p.startWatchLocked(e)
	}
	p.mu.Unlock()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			p.watches.Wait()
			return
		case <-t.C:
			p.expire(time.Now())
		}
	}
}

// startWatchLocked starts e's watch once Run has begun; p.mu is held.
func (p *Pool) startWatchLocked(e *Executor) {
	if p.runCtx == nil || e.stopWatch != nil {
		return
	}
	ctx, cancel := context.WithCancel(p.runCtx)
	e.stopWatch = cancel
	p.watches.Add(1)
	go func() {
		defer p.watches.Done()
		p.watch(ctx, e)
	}()
}

// drop gives a replica up: no new pod is placed on it, its watch stops,
// and the Sink hears that its instances are lost. It does nothing if the
// replica was already dropped. p.mu must not be held.
func (p *Pool) drop(e *Executor, reason string) {
	p.mu.Lock()
	if e.Gone() {
		p.mu.Unlock()
		return
	}
	close(e.gone)
	if p.execs[e.ID] == e {
		delete(p.execs, e.ID)
		if !e.Static {
			if p.givenUp == nil {
				p.givenUp = map[string]bool{}
			}
			p.givenUp[e.ID] = false
		}
	}
	stop, sink := e.stopWatch, p.sink
	p.mu.Unlock()
	if stop != nil {
		stop()
	}
	e.conn.Close()
	p.cfg.Log.Warn("executor replica gone", "executor", e.ID, "flavour", e.Flavour, "address", e.Address, "reason", reason)
	if sink != nil {
		sink.ExecutorLost(e.ID, reason)
	}
}

// watch follows e's instance events (Runtime.Watch), resuming from the
// last sequence seen, listing e's instances again when told it is behind
// (instances.ErrBehind), and noticing when an executor restarted: a static
// one's id changed, or it no longer knows the sequence watched from (a
// restart under the same id).
func (p *Pool) watch(ctx context.Context, e *Executor) {
	log := p.cfg.Log.With("executor", e.ID, "flavour", e.Flavour)
	var id string
	var after uint64
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := e.Runtime.Info(cctx)
		cancel()
		e.mu.Lock()
		e.healthy = err == nil
		if err == nil {
			e.info = &info
		}
		e.mu.Unlock()
		if err != nil {
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		if !e.Static && info.ExecutorID != e.ID {
			// Another executor answers at this address: the announced one
			// is gone, and the new one announces itself.
			p.drop(e, fmt.Sprintf("executor %s at %s was replaced by executor %s; its instances were lost", e.ID, e.Address, info.ExecutorID))
			return
		}
		if id != "" && info.ExecutorID != id {
			log.Warn("executor restarted; its instances are lost", "old", id, "new", info.ExecutorID)
			after = 0
			p.sinkOrNil().ExecutorLost(e.ID, fmt.Sprintf("executor %q stopped unexpectedly and was restarted; the instance was lost", e.ID))
		}
		id = info.ExecutorID
		if after == 0 {
			// A first watch starts from a listing, not from whatever
			// history the executor still keeps.
			if after, err = p.relist(ctx, e, after); err != nil {
				log.Warn("list instances failed", "err", err)
				sleep(ctx, 200*time.Millisecond)
				continue
			}
		}
		err = e.Runtime.Watch(ctx, after, "", func(in instances.Instance) error {
			after = max(after, in.Sequence)
			p.sinkOrNil().InstanceChanged(e.ID, in)
			return nil
		})
		if errors.Is(err, instances.ErrFailedPrecondition) {
			// A sequence this executor never gave: another process of it
			// answers under the same id (a fixed --id, or pid 1 in a
			// container), and what the old one ran is gone with it.
			log.Warn("executor restarted under the same id; its instances are lost", "after", after)
			p.sinkOrNil().ExecutorLost(e.ID, fmt.Sprintf("executor %q stopped unexpectedly and was restarted; the instance was lost", e.ID))
			after = 0
			continue
		}
		if errors.Is(err, instances.ErrBehind) {
			// Changes were missed: the state of every instance now stands
			// for them, and the watch goes on from the listing.
			log.Info("instance watch behind; listing instances again", "after", after)
			if after, err = p.relist(ctx, e, after); err == nil {
				continue
			}
		}
		if ctx.Err() == nil {
			log.Warn("instance watch broke; resuming", "after", after, "err", err)
		}
		e.mu.Lock()
		e.healthy = false
		e.mu.Unlock()
		sleep(ctx, 100*time.Millisecond)
	}
}

// relist hands every instance of e to the sink and returns the sequence to
// watch from; on error, after unchanged.
func (p *Pool) relist(ctx context.Context, e *Executor, after uint64) (uint64, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	list, seq, err := e.Runtime.List(cctx, nil)
	if err != nil {
		return after, err
	}
	sink := p.sinkOrNil()
	for _, in := range list {
		sink.InstanceChanged(e.ID, in)
	}
	return seq, nil
}

func (p *Pool) sinkOrNil() Sink {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sink == nil {
		return nopSink{}
	}
	return p.sink
}

type nopSink struct{}

func (nopSink) InstanceChanged(string, instances.Instance) {}
func (nopSink) ExecutorLost(string, string)                {}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
