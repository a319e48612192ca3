package confine

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Check tries, from the calling (confined) process, what the confinement
// should refuse an escaped module, and one thing it must allow (a file
// written in writable, a directory of Config.ReadWrite). It writes one
// line per attempt, "name: ok" or "name: ERRNO", e.g. "mount: EPERM",
// and returns the results by name. With WASMLET_CONFINE_CHECK_DIAL set
// to host:port it also dials that address over TCP ("dial").
func Check(w io.Writer, writable string) map[string]string {
	out := map[string]string{}
	try := func(name string, err error) {
		res := "ok"
		var errno unix.Errno
		switch {
		case errors.As(err, &errno):
			res = unix.ErrnoName(errno)
		case err != nil:
			res = err.Error()
		}
		out[name] = res
		fmt.Fprintf(w, "%s: %s\n", name, res)
	}
	// Harmless where allowed: no such process, no such file system type
	// (ESRCH, ENODEV) unconfined; the filter answers before the kernel
	// looks.
	try("ptrace", errnoOf(unix.RawSyscall(unix.SYS_PTRACE, unix.PTRACE_ATTACH, noSuchPID, 0)))
	try("mount", unix.Mount("none", "/", "wasmlet-no-such-fs", unix.MS_RDONLY, ""))
	try("unshare-user", unix.Unshare(unix.CLONE_NEWUSER))
	try("kill", unix.Kill(noSuchPID, 0))
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE)
	if err == nil {
		unix.Close(fd)
	}
	try("socket-netlink", err)
	cmd := exec.Command("/bin/true")
	err = cmd.Run()
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	try("execve", err)
	try("read-etc-passwd", readErr("/etc/passwd"))
	try("read-own-binary", readErr("/proc/self/exe"))
	if addr := os.Getenv("WASMLET_CONFINE_CHECK_DIAL"); addr != "" {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			c.Close()
		}
		var se *os.SyscallError
		if errors.As(err, &se) {
			err = se.Err
		}
		try("dial", err)
	}
	p := filepath.Join(writable, ".confine-check")
	err = os.WriteFile(p, []byte("ok"), 0o600)
	if err == nil {
		err = os.Remove(p)
	}
	try("write-state-dir", unwrapPath(err))
	return out
}

// noSuchPID is above the largest pid_max (2^22).
const noSuchPID = 1<<22 + 1

func errnoOf(_, _ uintptr, e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func readErr(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return unwrapPath(err)
	}
	defer f.Close()
	_, err = f.Read(make([]byte, 1))
	return unwrapPath(err)
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
