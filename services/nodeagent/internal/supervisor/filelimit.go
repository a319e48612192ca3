package supervisor

import (
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// FileLimit is the open-file limit (RLIMIT_NOFILE) the supervisor asks for
// its executor, as containerd's unit asks for its shims (LimitNOFILE):
// every running instance holds a few descriptors (its output pipes, at
// least), so the 1,024 of a distribution's default, or a login session's
// hard limit, caps a node at a few thousand pods.
const FileLimit = 1 << 20

// raiseFileLimit raises this process's RLIMIT_NOFILE, which the executor
// inherits, to FileLimit, or to the kernel's fs.nr_open where that is lower.
// Without the privilege to raise the hard limit (not root), the soft limit
// is raised to the hard one: Go does that for its own process but restores
// the soft limit for the processes it starts. It returns the limit now in
// force.
func raiseFileLimit(log *slog.Logger) uint64 {
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		log.Warn("read the open-file limit", "err", err)
		return 0
	}
	want := uint64(FileLimit)
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n < want {
			want = n
		}
	}
	if old.Max >= want {
		lim := syscall.Rlimit{Cur: want, Max: old.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
			return want
		}
	}
	lim := syscall.Rlimit{Cur: want, Max: want} // a higher hard limit: root only
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		return want
	}
	lim = syscall.Rlimit{Cur: old.Max, Max: old.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("raise the open-file limit", "err", err)
		return old.Cur
	}
	log.Info("the executor's open-file limit is the hard limit, which only root may raise; it bounds how many instances the executor can hold", "limit", old.Max, "wanted", want)
	return old.Max
}
