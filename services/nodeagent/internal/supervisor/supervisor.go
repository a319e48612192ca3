// Package supervisor starts the node agent's own executor as a child process
// and restarts it, with back-off, when it dies, with a listener socket
// (ListenerSocket) on which the node agent hands it pods' listeners. It
// owns the child process and nothing else: what the child's death means for pods is for the
// executor watcher to find out (the executor's id changes). It raises the
// node agent's open-file limit, which the child inherits (FileLimit).
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Config describes the child.
type Config struct {
	Binary string   // path of the executor binary
	Args   []string // its flags
	Env    []string // extra environment (KEY=VALUE), e.g. the NATS token
	Output io.Writer
	Log    *slog.Logger

	// The executor confines itself by default (no_new_privs, seccomp,
	// Landlock); these say how, as its flags.
	Confinement Confinement

	// ListenerSocket is the executor's --listener-socket, on which the node
	// agent hands it listening sockets opened in pods' network namespaces
	// (package instances/handoff); empty: the --listener-socket of Args, or
	// else listeners.sock in the --state-dir of Args, when they name one
	// and the path fits a unix socket.
	ListenerSocket string
}

// ListenerSocketName is the listener socket's name in the executor's state
// dir, by default.
const ListenerSocketName = "listeners.sock"

// maxSocketPath is the longest path a unix socket may have on Linux.
const maxSocketPath = 107

// Confinement is how the child confines itself (see the executor's
// internal/confine).
type Confinement struct {
	// Off turns it off (--confine=false), for a host where it breaks
	// the executor; a module escaping its engine then has the node
	// agent's user and file system.
	Off bool
	// RunAsUser and RunAsGroup (names or ids) are the unprivileged user
	// the executor drops to (--run-as-user, --run-as-group). It must be
	// able to use its socket's directory and the pods' directories.
	RunAsUser, RunAsGroup string
	// ReadWrite are directories beyond its state dir, its socket's and
	// its mount root that it must write under Landlock (--landlock-rw),
	// e.g. roots of hostPath volumes.
	ReadWrite []string
}

// flags are the executor's flags for c.
func (c Confinement) flags() []string {
	var out []string
	if c.Off {
		out = append(out, "--confine=false")
	}
	if c.RunAsUser != "" {
		out = append(out, "--run-as-user", c.RunAsUser)
	}
	if c.RunAsGroup != "" {
		out = append(out, "--run-as-group", c.RunAsGroup)
	}
	for _, d := range c.ReadWrite {
		out = append(out, "--landlock-rw", d)
	}
	return out
}

// Supervisor keeps one child process running until Run's context ends.
type Supervisor struct {
	cfg Config
}

// New validates cfg.
func New(cfg Config) (*Supervisor, error) {
	if cfg.Binary == "" {
		return nil, errors.New("supervisor: Binary is required")
	}
	for _, d := range cfg.Confinement.ReadWrite {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("supervisor: Confinement.ReadWrite %q is not an absolute path", d)
		}
	}
	if _, err := os.Stat(cfg.Binary); err != nil {
		return nil, fmt.Errorf("executor binary: %w (build it with `make build`, or pass --executor-binary)", err)
	}
	if inArgs := flagValue(cfg.Args, "listener-socket"); inArgs != "" {
		if cfg.ListenerSocket != "" && cfg.ListenerSocket != inArgs {
			return nil, fmt.Errorf("supervisor: ListenerSocket %q and --listener-socket %q in Args differ", cfg.ListenerSocket, inArgs)
		}
		cfg.ListenerSocket = inArgs
	}
	if cfg.ListenerSocket == "" {
		if dir := flagValue(cfg.Args, "state-dir"); dir != "" {
			if p := filepath.Join(dir, ListenerSocketName); filepath.IsAbs(p) && len(p) <= maxSocketPath {
				cfg.ListenerSocket = p
			}
		}
	} else if !filepath.IsAbs(cfg.ListenerSocket) || len(cfg.ListenerSocket) > maxSocketPath {
		return nil, fmt.Errorf("supervisor: ListenerSocket %q: want an absolute path of at most %d bytes", cfg.ListenerSocket, maxSocketPath)
	}
	if cfg.Output == nil {
		cfg.Output = os.Stderr
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Supervisor{cfg: cfg}, nil
}

// ListenerSocket is the executor's --listener-socket ("" for none): where
// the node agent hands it listeners (handoff.Send) for instances created
// with Spec.HandedListeners.
func (s *Supervisor) ListenerSocket() string { return s.cfg.ListenerSocket }

// args are the child's flags.
func (s *Supervisor) args() []string {
	args := append(slices.Clone(s.cfg.Args), s.cfg.Confinement.flags()...)
	if s.cfg.ListenerSocket != "" && flagValue(s.cfg.Args, "listener-socket") == "" {
		args = append(args, "--listener-socket", s.cfg.ListenerSocket)
	}
	return args
}

// flagValue is the value of the last --name (or -name) in args, "" if
// none.
func flagValue(args []string, name string) string {
	v := ""
	for i, a := range args {
		a = strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if a == name && i+1 < len(args) {
			v = args[i+1]
		} else if val, ok := strings.CutPrefix(a, name+"="); ok {
			v = val
		}
	}
	return v
}

// Run starts the child and restarts it whenever it exits, until ctx ends;
// then it sends SIGTERM, waits up to 10 s, and kills it.
func (s *Supervisor) Run(ctx context.Context) error {
	raiseFileLimit(s.cfg.Log)
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		err := s.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		s.cfg.Log.Error("executor exited; restarting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func (s *Supervisor) runOnce(ctx context.Context) error {
	cmd := exec.Command(s.cfg.Binary, s.args()...)
	cmd.Env = append(os.Environ(), s.cfg.Env...)
	cmd.Stdout, cmd.Stderr = s.cfg.Output, s.cfg.Output
	// Its own process group, so that a terminal's ^C reaches the node agent
	// only and the node agent decides how the executor stops.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start executor: %w", err)
	}
	s.cfg.Log.Info("executor started", "pid", cmd.Process.Pid)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		return fmt.Errorf("executor pid %d: %w", cmd.Process.Pid, err)
	case <-ctx.Done():
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	return nil
}
