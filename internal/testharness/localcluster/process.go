package localcluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

// Component names: the binaries' names, and the names of their log and pid files.
const (
	etcdName      = "etcd"
	apiserverProc = "kube-apiserver"
	schedulerProc = "kube-scheduler"
	cmProc        = "kube-controller-manager"
)

// stopOrder stops clients before the servers they talk to, so that nothing logs a
// storm of connection errors or blocks its own shutdown on a vanished server.
func stopOrder() [][]string {
	return [][]string{{schedulerProc, cmProc}, {apiserverProc}, {etcdName}}
}

// components lists every component once.
func components() []string { return []string{etcdName, apiserverProc, schedulerProc, cmProc} }

const (
	stopGrace = 10 * time.Second
	killWait  = 5 * time.Second
	tailLines = 30
)

// process is one started component.
type process struct {
	name      string
	pid       int
	logPath   string
	logOffset int64         // where this run's output starts in logPath
	exited    chan struct{} // closed once the child has been reaped
	waitErr   error         // set before exited is closed
}

// startProcess starts bin detached from the caller: in its own session (so that a
// terminal's Ctrl-C or the caller's exit does not reach it), with output appended to
// logs/<name>.log and its PID in pids/<name>.pid. The environment is minimal because
// etcd reads every ETCD_* variable and the Kubernetes components read KUBECONFIG.
// With dieWithParent the kernel kills it when the calling thread's process dies
// (tests: a test binary killed on timeout must not leave a control plane behind).
// It inherits extra as fds 3, 4, … (a locked file it holds for its lifetime,
// say); the caller may close its own copies once it has started.
func startProcess(dir, name, bin string, args, env []string, dieWithParent bool, extra ...*os.File) (*process, error) {
	for _, sub := range []string{"logs", "pids"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, err
		}
	}
	logPath := filepath.Join(dir, "logs", name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s: starting %s %s\n", time.Now().UTC().Format(time.RFC3339), bin, strings.Join(args, " "))
	offset, err := logf.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if dieWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	p := &process{name: name, pid: cmd.Process.Pid, logPath: logPath, logOffset: offset, exited: make(chan struct{})}
	// Reap the child while this process lives, so that a stopped component does
	// not linger as a zombie that still looks alive to Stop.
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	if err := testpki.WriteFile(pidPath(dir, name), []byte(strconv.Itoa(p.pid)+"\n"), 0o644); err != nil {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		return nil, err
	}
	return p, nil
}

func cleanEnv() []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, k := range []string{"HOME", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// failure describes a component that exited or never became healthy, with the end
// of what it logged during this run.
func (p *process) failure(what string) error {
	return fmt.Errorf("%s %s; last lines of %s:\n%s", p.name, what, p.logPath, tail(p.logPath, p.logOffset, tailLines))
}

// tail returns the last n lines written to path after offset.
func tail(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(log unreadable: " + err.Error() + ")"
	}
	defer f.Close()
	const maxTail = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size()-offset > maxTail {
		offset = st.Size() - maxTail
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return "(log unreadable: " + err.Error() + ")"
	}
	b, _ := io.ReadAll(f)
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

func pidPath(dir, name string) string { return filepath.Join(dir, "pids", name+".pid") }

// readPID returns the PID recorded for name, or 0 when there is none.
func readPID(dir, name string) (int, error) {
	b, err := os.ReadFile(pidPath(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("%s: not a PID: %q", pidPath(dir, name), b)
	}
	return pid, nil
}

// runningPID returns the PID of name when its pid file names a live process that is
// still that component (a PID may have been reused since), else 0.
func runningPID(dir, name string) (int, error) {
	pid, err := readPID(dir, name)
	if err != nil || pid == 0 {
		return 0, err
	}
	if !alive(pid) || !isComponent(pid, name) {
		return 0, nil
	}
	return pid, nil
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// The state follows the parenthesised command name, which may contain spaces.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z'
	}
	return true
}

// isComponent reports whether pid runs the binary called name. Without /proc it
// cannot tell and trusts the pid file.
func isComponent(pid int, name string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return true
	}
	argv0, _, _ := bytes.Cut(b, []byte{0})
	return filepath.Base(string(argv0)) == name
}

// stopDir stops every component recorded under dir's pids/, in stopOrder, each
// group concurrently: SIGTERM to the process group, up to stopGrace to exit, then
// SIGKILL. It removes the pid files of the processes it saw exit.
func stopDir(dir string) error {
	var errs []error
	for _, group := range stopOrder() {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, name := range group {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := stopOne(dir, name); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	return errors.Join(errs...)
}

func stopOne(dir, name string) error {
	pid, err := runningPID(dir, name)
	if err != nil {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	if pid != 0 {
		if !signalWait(pid, syscall.SIGTERM, stopGrace) && !signalWait(pid, syscall.SIGKILL, killWait) {
			return fmt.Errorf("stop %s: PID %d survived SIGKILL; kill it by hand", name, pid)
		}
	}
	if err := os.Remove(pidPath(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	return nil
}

// signalWait signals pid's process group (the component and anything it started)
// and reports whether pid exited within d.
func signalWait(pid int, sig syscall.Signal, d time.Duration) bool {
	if err := syscall.Kill(-pid, sig); err != nil {
		_ = syscall.Kill(pid, sig)
	}
	deadline := time.Now().Add(d)
	for alive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(25 * time.Millisecond)
	}
	return true
}
