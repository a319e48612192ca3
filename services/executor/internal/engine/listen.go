package engine

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listener is a TCP listener an engine opens for a module before it starts
// and hands it as a preopened socket (WASI preview 1 sock_accept).
type Listener struct {
	// Name is the socket's name in LISTEN_FDNAMES.
	Name string
	// Host is the IP address to bind; empty: every address of the network
	// namespace.
	Host string
	Port int
	// File, when set, is a listening TCP socket opened by someone else (a
	// node agent, in a pod's network namespace) and handed over: the
	// engine hands the module this very socket and opens none, and Host,
	// Port and Spec.NetNS only name it in messages. The engine makes its
	// own copy (net.FileListener); the caller still closes File.
	File *os.File
}

// Addr is l's address as net.Listen takes it.
func (l Listener) Addr() string {
	return net.JoinHostPort(l.Host, strconv.Itoa(l.Port))
}

// Errors of opening listeners, wrapped with detail.
var (
	// ErrPortInUse: a listener's port is taken at its address.
	ErrPortInUse = errors.New("port in use")
	// ErrListen: a listener could not be opened for another reason.
	ErrListen = errors.New("listen")
	// ErrUnsupported: the engine cannot give the module what the spec asks
	// for (listeners, on an engine with no socket preopen).
	ErrUnsupported = errors.New("unsupported")
)

// The systemd socket-activation variables an instance with listeners gets
// (sd_listen_fds(3)), and LISTEN_FDS_START, which systemd does not set: its
// fds start at 3, but a WASI engine numbers preopened directories first.
const (
	EnvListenFDs      = "LISTEN_FDS"
	EnvListenFDNames  = "LISTEN_FDNAMES"
	EnvListenFDsStart = "LISTEN_FDS_START"
)

// ListenEnv is the environment that tells a module which fd is which of
// ls, the first of which is fd first and the others after it in order.
// LISTEN_PID is not set: a WASI module has no process id to compare.
func ListenEnv(ls []Listener, first int) []EnvVar {
	if len(ls) == 0 {
		return nil
	}
	names := make([]string, len(ls))
	for i, l := range ls {
		names[i] = l.Name
	}
	return []EnvVar{
		{Name: EnvListenFDs, Value: strconv.Itoa(len(ls))},
		{Name: EnvListenFDNames, Value: strings.Join(names, ":")},
		{Name: EnvListenFDsStart, Value: strconv.Itoa(first)},
	}
}

// InNetNS runs fn on an OS thread of its own that has entered the network
// namespace at path, and returns its error; sockets fn makes belong to that
// namespace for their whole life. The thread is never given back to the Go
// runtime, which ends it with the goroutine: nothing else runs in the
// namespace. With path empty, fn runs on the calling goroutine. Entering a
// namespace needs CAP_SYS_ADMIN and setns(2) (errors wrap ErrListen).
func InNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	ns, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: open network namespace %s: %v; %s", ErrListen, path, err, netnsNeeds)
	}
	defer ns.Close()
	done := make(chan error, 1)
	go func() {
		// No UnlockOSThread: the thread leaves with the goroutine.
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("%w: enter network namespace %s: %v; %s", ErrListen, path, err, netnsNeeds)
			return
		}
		done <- fn()
	}()
	return <-done
}

// netnsNeeds is what an executor needs to open sockets in a network
// namespace: its confinement (Landlock's file rules, the seccomp filter
// without setns) and an unprivileged user allow neither step.
const netnsNeeds = "opening listeners in a network namespace needs an executor that may read the namespace's file and enter it (root with CAP_SYS_ADMIN, started with --confine=false)"

// ListenError says, wrapping ErrPortInUse or ErrListen, what kept one of
// ls from being opened (err, from opening them) in netns ("" for the
// executor's own namespace).
func ListenError(ls []Listener, netns string, err error) error {
	if errors.Is(err, ErrListen) || errors.Is(err, ErrPortInUse) {
		return err
	}
	where := "in the executor's network namespace"
	if netns != "" {
		where = "in network namespace " + netns
	}
	what := "a listener"
	var op *net.OpError
	if errors.As(err, &op) {
		if a, ok := op.Addr.(*net.TCPAddr); ok {
			what = fmt.Sprintf("listener on TCP port %d", a.Port)
			for _, l := range ls {
				if l.Port == a.Port {
					what = fmt.Sprintf("listener %q on TCP port %d at %s", l.Name, l.Port, hostWords(l.Host))
				}
			}
		}
	}
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%w: %s %s: the port is already in use; free it, or give the container another port", ErrPortInUse, what, where)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("%w: %s %s: the address is not one of the namespace's (%v)", ErrListen, what, where, FirstLine(err.Error()))
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%w: %s %s: binding a port below 1024 needs CAP_NET_BIND_SERVICE or a lower net.ipv4.ip_unprivileged_port_start in that namespace (%v)", ErrListen, what, where, FirstLine(err.Error()))
	}
	return fmt.Errorf("%w: %s %s: %v", ErrListen, what, where, FirstLine(err.Error()))
}

func hostWords(h string) string {
	if h == "" {
		return "every address"
	}
	return h
}
