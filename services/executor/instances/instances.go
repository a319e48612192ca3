// Package instances is the executor's domain API: module instances, their
// specs and states, the errors every implementation returns, and Runtime,
// the interface the node agent holds. The executor's in-process manager
// implements Runtime; so does the gRPC proxy (package proxy), which turns
// status codes back into this package's errors, so a caller never knows
// which one it holds and never imports the generated executor.v1 code.
//
// It owns the vocabulary only. It must not speak of pods, restart policies
// or log subjects' meaning (the node agent's), nor run anything.
//
// instancestest holds the conformance suite every Runtime must pass and a
// Fake for the node agent's lifecycle unit tests.
//
// Usage:
//
//	var rt instances.Runtime = proxy.New(conn) // or the executor's manager
//	in, err := rt.Create(ctx, "pod-uid-app-0", spec, true)
//	if errors.Is(err, instances.ErrAlreadyExists) { in, err = rt.Get(ctx, "pod-uid-app-0") }
//	err = rt.Watch(ctx, seq, "", func(in instances.Instance) error { ...; return nil })
//	if errors.Is(err, instances.ErrBehind) { list, seq, err = rt.List(ctx, selector) }
package instances

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"
)

// Errors every Runtime returns, wrapped with detail; test with errors.Is.
var (
	ErrNotFound           = errors.New("instance not found")
	ErrAlreadyExists      = errors.New("instance already exists")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrPermissionDenied   = errors.New("permission denied")
	// ErrUnavailable: the executor cannot be reached (its instances may
	// still run; a caller retries, and treats them as lost only when the
	// executor is known to be gone).
	ErrUnavailable = errors.New("executor unavailable")
	// ErrBehind: a watcher asked for events the executor no longer keeps.
	// It must List (which gives the sequence to watch from) and watch
	// again; nothing is replayed in its place.
	ErrBehind = errors.New("watcher is behind: list again")
	// ErrUnsupported: the executor cannot run what the spec asks for
	// (listeners, on an engine that cannot hand a module a socket); another
	// executor may (see Info.Listeners).
	ErrUnsupported = errors.New("unsupported by this executor")
)

// Reasons of a FAILED instance that a caller may act on (the others are
// for people: read Message).
const (
	// ReasonPortInUse: a listener's port was taken where it was to be
	// opened; Message names the listener, port and address.
	ReasonPortInUse = "PortInUse"
	// ReasonListenFailed: a listener could not be opened for another
	// reason (the network namespace could not be entered, the address is
	// not in it, a privileged port without the right to bind it, handed
	// listeners that were not handed over).
	ReasonListenFailed = "ListenFailed"
)

// State is where an instance is in its lifecycle. The declared
// transitions are Created → Running → Exited|Killed, Created →
// Failed|Killed, and (not yet recorded) → Created|Failed.
type State int

// The states.
const (
	StateUnspecified State = iota
	StateCreated
	StateRunning
	StateExited // the module returned or called proc_exit; see ExitCode
	StateKilled // Stop, Delete with force, or an engine limit ended it
	StateFailed // it never ran: its module could not be fetched, compiled or linked
)

func (s State) String() string {
	switch s {
	case StateCreated:
		return "CREATED"
	case StateRunning:
		return "RUNNING"
	case StateExited:
		return "EXITED"
	case StateKilled:
		return "KILLED"
	case StateFailed:
		return "FAILED"
	}
	return "UNSPECIFIED"
}

// Terminal reports whether no transition leaves s.
func (s State) Terminal() bool {
	return s == StateExited || s == StateKilled || s == StateFailed
}

// Module names what an instance runs.
type Module struct {
	Digest    string // "sha256:<hex>", required
	Reference string // for messages only
}

// EnvVar is one environment variable.
type EnvVar struct{ Name, Value string }

// Preopen is a host directory the module sees at GuestPath. HostPath must
// lie under one of the executor's mount roots.
type Preopen struct {
	HostPath, GuestPath string
	ReadOnly            bool
}

// Protocol is a listener's transport.
type Protocol string

// Protocols. Only TCP is accepted: WASI preview 1 accepts stream
// connections and nothing else.
const (
	ProtocolTCP Protocol = "TCP"
	ProtocolUDP Protocol = "UDP"
)

// Listener is a listening socket the executor opens for the module before
// it starts (a pod's containerPort). The module finds it through the
// systemd socket-activation variables added to its environment:
// LISTEN_FDS=<number of listeners>, LISTEN_FDNAMES=<their names, colon-
// separated, in Spec order> and LISTEN_FDS_START=<the first one's fd>;
// the others follow it (3 + the number of preopens: WASI preopened
// directories come first).
type Listener struct {
	// Name is the socket's name in LISTEN_FDNAMES: letters, digits, '-',
	// '_' and '.'; empty: "port-<Port>".
	Name string
	// Port is 1 to 65535.
	Port int32
	// Protocol is ProtocolTCP; empty means it.
	Protocol Protocol
}

// HandlerMode is how an executor runs a module per request (Spec.Handler).
type HandlerMode string

// HandlerWAGI: the executor serves HTTP on the spec's listeners and runs
// the module's _start once per request, WAGI style: the request in its
// environment (the CGI variables REQUEST_METHOD, PATH_INFO, QUERY_STRING,
// CONTENT_TYPE, CONTENT_LENGTH, SERVER_NAME, SERVER_PORT, REMOTE_ADDR,
// X_FULL_URL, HTTP_<HEADER>, ..., after the spec's Env) and its body on
// stdin; stdout is the response in CGI form (headers, Status and Location
// among them, a blank line, the body); stderr goes to the log. Runs come
// from instances instantiated ahead of requests; each has the spec's
// memory and CPU limits. A trap, a non-zero exit or a malformed response
// answers 500 and logs why; requests beyond the runs in flight wait, then
// get 503. The instance is Running while it serves; a stop with a grace
// period drains it (no new connections; Exited, Completed, once the
// requests in flight are answered), a kill stops it at once.
const HandlerWAGI HandlerMode = "wagi"

// ValidateListeners refuses, with ErrInvalidArgument, listeners that an
// executor could not open or a module could not tell apart, and a handler
// mode it does not know or without a listener to serve.
func ValidateListeners(spec Spec) error {
	switch spec.Handler {
	case "":
	case HandlerWAGI:
		if len(spec.Listeners) == 0 {
			return fmt.Errorf("%w: handler mode %s without listeners: list the port(s) to serve HTTP on", ErrInvalidArgument, spec.Handler)
		}
	default:
		return fmt.Errorf("%w: handler mode %q: want %q or none", ErrInvalidArgument, spec.Handler, HandlerWAGI)
	}
	if spec.HandedListeners && len(spec.Listeners) == 0 {
		return fmt.Errorf("%w: handed listeners without listeners: list the listeners handed over", ErrInvalidArgument)
	}
	if spec.NetworkNamespace != "" && !filepath.IsAbs(spec.NetworkNamespace) {
		return fmt.Errorf("%w: network namespace %q: want an absolute path (/var/run/netns/<name>, /proc/<pid>/ns/net)", ErrInvalidArgument, spec.NetworkNamespace)
	}
	if a := spec.ListenAddress; a != "" {
		if _, err := netip.ParseAddr(a); err != nil {
			return fmt.Errorf("%w: listen address %q: want an IP address (%v)", ErrInvalidArgument, a, err)
		}
	}
	names, ports := map[string]bool{}, map[int32]bool{}
	for _, l := range spec.Listeners {
		switch l.Protocol {
		case "", ProtocolTCP:
		case ProtocolUDP:
			return fmt.Errorf("%w: listener %q on UDP port %d: WASI preview 1 accepts stream connections only; serve TCP", ErrInvalidArgument, l.Name, l.Port)
		default:
			return fmt.Errorf("%w: listener %q: protocol %q; want TCP", ErrInvalidArgument, l.Name, l.Protocol)
		}
		if l.Port < 1 || l.Port > 65535 {
			return fmt.Errorf("%w: listener %q: port %d is not 1 to 65535", ErrInvalidArgument, l.Name, l.Port)
		}
		if ports[l.Port] {
			return fmt.Errorf("%w: listener %q: port %d is listed twice", ErrInvalidArgument, l.Name, l.Port)
		}
		ports[l.Port] = true
		name := l.FDName()
		if len(name) > 255 || strings.IndexFunc(name, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
		}) >= 0 {
			return fmt.Errorf("%w: listener name %q: want at most 255 letters, digits, '-', '_' and '.' (it is a LISTEN_FDNAMES entry)", ErrInvalidArgument, name)
		}
		if names[name] {
			return fmt.Errorf("%w: listener name %q is used twice", ErrInvalidArgument, name)
		}
		names[name] = true
	}
	return nil
}

// FDName is l's name in LISTEN_FDNAMES: Name, or "port-<Port>".
func (l Listener) FDName() string {
	if l.Name == "" {
		return fmt.Sprintf("port-%d", l.Port)
	}
	return l.Name
}

// Spec is what an instance runs. It is not modified once the instance is
// created; callers must not modify one they were given.
type Spec struct {
	Module   Module
	Args     []string
	Env      []EnvVar
	Preopens []Preopen
	// MemoryLimitBytes bounds linear memory and tables; 0: the executor's default.
	MemoryLimitBytes int64
	// CPULimitMillis is a share of one core in millicores; 0: no limit.
	CPULimitMillis int64
	// LogSubject receives the output; empty discards it.
	LogSubject string
	// Labels select instances in List, Stats and a watcher's own filter.
	Labels map[string]string
	// Listeners are opened before the module starts and closed when it
	// ends. A port taken fails the instance with ReasonPortInUse.
	Listeners []Listener
	// NetworkNamespace is the path of the network namespace the listeners
	// are opened in (/var/run/netns/<name>, /proc/<pid>/ns/net); empty:
	// the executor's own.
	NetworkNamespace string
	// ListenAddress is the IP address the listeners bind; empty: every
	// address of NetworkNamespace, or 127.0.0.1 without one (an executor
	// never listens beyond loopback unless told).
	ListenAddress string
	// HandedListeners: the listeners were handed to the executor (package
	// handoff) for this instance before Create, one per Listener by its
	// FDName; the executor opens none, and NetworkNamespace and
	// ListenAddress are ignored. Create takes them; any not handed over
	// (or expired) fails the instance with ReasonListenFailed. An executor
	// without a listener socket refuses it (ErrUnsupported; see
	// Info.ListenerHandoff). Needs Listeners.
	HandedListeners bool
	// Handler, when set, runs the module per request (HandlerWAGI) on the
	// listeners, which the executor then serves itself (the module is
	// handed none, so an engine without socket preopens can run it); empty:
	// the module serves them. An executor that cannot refuses it
	// (ErrUnsupported; see Info.HandlerModes). Needs Listeners.
	Handler HandlerMode
}

// Instance is a snapshot of one instance.
type Instance struct {
	ID       string
	Spec     Spec
	State    State
	ExitCode int32
	// Reason is short and CamelCase (e.g. "Completed", "OOMKilled",
	// "ModuleInvalid"); Message says what happened in words.
	Reason, Message string

	// Zero until reached.
	CreatedAt, StartedAt, FinishedAt time.Time
	// Sequence of the event that produced this snapshot.
	Sequence uint64
}

// Stats is one instance's resource use at Time.
type Stats struct {
	ID          string
	State       State
	Labels      map[string]string
	Time        time.Time
	MemoryBytes int64
	CPU         time.Duration
	CPUMeasured bool
}

// Info describes an executor.
type Info struct {
	ExecutorID        string
	Engine, Version   string
	OS, Arch          string
	MaxInstances      int
	Instances         int
	CPULimitsEnforced bool
	CPULimitsWords    string
	Confinement       Confinement
	// Listeners: the engine hands Spec.Listeners to modules; without it a
	// spec with listeners is refused with ErrUnsupported.
	Listeners bool
	// ListenerHandoff: the executor takes listeners handed over on its
	// listener socket (Spec.HandedListeners, package handoff).
	ListenerHandoff bool
	// HandlerModes are the Spec.Handler modes the executor runs; it
	// refuses the others with ErrUnsupported.
	HandlerModes []HandlerMode
}

// Confinement is what walls the executor process stands behind.
type Confinement struct {
	NoNewPrivs            bool
	Seccomp               bool
	LandlockABI           int
	LandlockMissingReason string
	UID, GID              uint32
	NetworkIsolated       bool
	Description           string
}

// Runtime runs module instances. Implementations are safe for concurrent
// use. Every method may be called more than once with the same arguments;
// a context's end abandons the call, not the instance.
type Runtime interface {
	// Info describes the executor.
	Info(ctx context.Context) (Info, error)
	// Create records a new instance (ErrAlreadyExists if id is taken,
	// ErrResourceExhausted when full) and, with start, starts it. A module
	// that cannot be fetched or prepared is not an error of Create: the
	// instance is returned FAILED with the reason.
	Create(ctx context.Context, id string, spec Spec, start bool) (Instance, error)
	// Start runs a CREATED instance (ErrFailedPrecondition otherwise).
	Start(ctx context.Context, id string) (Instance, error)
	// Stop waits up to grace for the instance to end by itself, then
	// kills it, and returns its final state. Stopping an ended instance
	// returns it as it is.
	Stop(ctx context.Context, id string, grace time.Duration) (Instance, error)
	// Delete forgets an ended instance; with force it kills one still
	// running first. ErrNotFound if there is none.
	Delete(ctx context.Context, id string, force bool) error
	// Get returns one instance, ErrNotFound if there is none.
	Get(ctx context.Context, id string) (Instance, error)
	// List returns the instances whose labels include selector (all for
	// an empty one), and the sequence to watch from so as to miss nothing
	// that happened after the list.
	List(ctx context.Context, selector map[string]string) ([]Instance, uint64, error)
	// Watch calls fn, in order, with every state change after sequence
	// after (for id only, unless id is ""), until ctx ends or fn returns
	// an error; it returns that error, ctx's, or ErrBehind when the
	// changes after after are no longer kept. after 0 starts from the
	// oldest change kept (never ErrBehind); after beyond the newest
	// sequence is ErrFailedPrecondition: it came from another executor
	// process, whose instances are gone.
	Watch(ctx context.Context, after uint64, id string, fn func(Instance) error) error
	// Stats returns the resource use of the instances whose labels
	// include selector.
	Stats(ctx context.Context, selector map[string]string) ([]Stats, error)
}
