package confine

import (
	"fmt"
	"os"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/sys/unix"
)

// allowed are the system calls the executor makes, both engines, in the
// order the filter tests them (the busiest first: each call walks the
// list until it matches).
//
// Measured, not guessed: strace -f of the executors of
// TestConfinedExecutor, unconfined, with fresh state dirs (compile, run,
// sleep, kill, the registry cache), on both engines:
//
//	WASMLET_CONFINE_STRACE=/tmp/st WASMLET_CONFINE_TEST_FLAGS=--confine=false \
//	    go test -run TestConfinedExecutor ./services/executor/internal/confine
//
// then checked confined, with strace (EPERM, EACCES) and with EnvAudit over
// the executor's own process tests. Denied calls fail with EPERM, not a
// kill: an executor holds every pod of its flavour, and a call the
// measurement missed then becomes one failed call, not a node-wide
// restart. clone3 fails with ENOSYS so that glibc falls back to clone,
// whose flags the filter can see (namespaces are refused). Beside the
// measured calls: the calls
// that WASI host calls map to and the measurement may not have made
// (marked WASI), plus a few of the Go runtime's and wasmtime's rare
// paths (marked).
var allowed = []string{
	// Threads, scheduling, signals, memory, time.
	"futex", "nanosleep", "read", "write", "mprotect", "sched_yield", "epoll_pwait", "getpid", "rt_sigreturn",
	"mmap", "munmap", "madvise", "mremap", "brk", "rt_sigaction", "rt_sigprocmask", "sigaltstack", "fcntl",
	"close", "gettid", "set_robust_list", "rseq", "set_tid_address", "arch_prctl", "sched_getaffinity",
	"getrandom", "eventfd2", "pipe2", "epoll_ctl", "epoll_create1", "epoll_wait", "ppoll", "clock_gettime",
	"prlimit64", "uname", "getuid", "getgid", "geteuid", "getegid", "exit", "exit_group",
	"restart_syscall",                         // the kernel's, after a signal interrupts a sleep
	"poll", "clock_nanosleep", "clock_getres", // WASI poll_oneoff, clock_res_get
	"membarrier",                                                 // wasmtime: instruction cache flush on arm64
	"setitimer", "timer_create", "timer_settime", "timer_delete", // Go's CPU profiler (WASMLET_CPU_PROFILE_DIR)

	// Files: the state dir (modules, artifacts, log spool), cgroup files
	// for CPU limits, /proc/self for metrics, the pods' preopens.
	"openat", "openat2", "newfstatat", "fstat", "statx", "pread64", "pwrite64", "lseek", "getdents64",
	"unlinkat", "mkdirat", "renameat", "readlinkat", "fsync", "fchmodat", "statfs", "getcwd",
	"readv", "writev", "preadv", "pwritev", "fdatasync", "ftruncate", "fallocate", "fadvise64", "utimensat",
	"renameat2", "linkat", "symlinkat", "fstatfs", "fchmod", "dup", "dup3", // WASI fd_*, path_*
	"copy_file_range", "sendfile", "splice", // Go's io.Copy between files

	// Sockets: gRPC (unix or TCP), NATS, the registry cache, metrics;
	// WASI sock_accept, sock_recv, sock_send, sock_shutdown.
	"getsockopt", "setsockopt", "accept4", "getsockname", "getpeername", "connect", "bind", "listen",
	"sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown",
}

// ioctls: isatty (TCGETS, measured: Rust's standard library on stderr;
// WASI fd_fdstat_get), FIONREAD and FIONBIO. No other request reaches a
// driver.
var ioctls = []uint64{unix.TCGETS, unix.TIOCGWINSZ, unix.TIOCINQ, fionbio}

// fionbio is FIONBIO (asm-generic, as on amd64 and arm64), which x/sys
// does not name.
const fionbio = 0x5421

// prctls: thread names (Rust's threads in wasmtime) and names of
// anonymous mappings (the Go runtime).
var prctls = []uint64{unix.PR_SET_NAME, unix.PR_GET_NAME, unix.PR_SET_VMA}

// EnvAudit, set in the executor's environment, lets the calls the
// filter would refuse through and has the kernel log them (dmesg,
// "audit: type=1326 ... syscall=N"): to find what a new kernel, libc or
// engine needs before the allow-list refuses it. Not for production.
const EnvAudit = "WASMLET_SECCOMP_AUDIT"

// clone flags that make namespaces: an escaped module must not build
// itself a user namespace (and the root there) to reach more of the
// kernel.
const namespaceFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
	unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

// policy: the allow-list; clone without namespace flags; sockets of the
// unix and IP families only (no netlink, packet, vsock...); the ioctls
// and prctls above; clone3 fails
// with ENOSYS (its flags are out of the filter's sight) so that glibc
// falls back to clone; everything else fails with EPERM.
func policy() (seccomp.Policy, error) {
	var conditional []seccomp.NameWithConditions
	for _, family := range []uint64{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6} {
		conditional = append(conditional, seccomp.NameWithConditions{Name: "socket", Conditions: seccomp.ArgumentConditions{
			{Argument: 0, Operation: seccomp.Equal, Value: family},
		}})
	}
	// Signals to its own threads only (the Go runtime preempts
	// goroutines with them): not to other processes of its user.
	ownThreads := seccomp.NameWithConditions{Name: "tgkill", Conditions: seccomp.ArgumentConditions{
		{Argument: 0, Operation: seccomp.Equal, Value: uint64(os.Getpid())},
	}}
	for _, req := range ioctls {
		conditional = append(conditional, seccomp.NameWithConditions{Name: "ioctl", Conditions: seccomp.ArgumentConditions{
			{Argument: 1, Operation: seccomp.Equal, Value: req},
		}})
	}
	for _, option := range prctls {
		conditional = append(conditional, seccomp.NameWithConditions{Name: "prctl", Conditions: seccomp.ArgumentConditions{
			{Argument: 0, Operation: seccomp.Equal, Value: option},
		}})
	}
	deny := seccomp.ActionErrno
	if os.Getenv(EnvAudit) != "" {
		deny = seccomp.ActionLog
	}
	names, err := onThisArch(allowed)
	if err != nil {
		return seccomp.Policy{}, err
	}
	return seccomp.Policy{
		DefaultAction: deny,
		Syscalls: []seccomp.SyscallGroup{
			{Action: seccomp.ActionAllow, Names: names},
			{Action: seccomp.ActionAllow, NamesWithCondtions: append(conditional, ownThreads, seccomp.NameWithConditions{
				Name: "clone", Conditions: seccomp.ArgumentConditions{
					{Argument: 0, Operation: seccomp.BitsNotSet, Value: namespaceFlags},
				},
			})},
			// ActionErrno is EPERM; the errno is the action's low bits.
			{Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS), Names: []string{"clone3"}},
		},
	}, nil
}

// onThisArch keeps the names this architecture has: arm64 has only the
// newer of some pairs (ppoll, not poll; renameat2, not renameat).
func onThisArch(names []string) ([]string, error) {
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, fmt.Errorf("confine: seccomp: %w", err)
	}
	var out []string
	for _, n := range names {
		if _, ok := info.SyscallNames[n]; ok {
			out = append(out, n)
		}
	}
	return out, nil
}

// loadSeccomp loads the policy on every thread of the process (TSYNC);
// threads made later inherit it.
func loadSeccomp() error {
	p, err := policy()
	if err != nil {
		return err
	}
	if err := seccomp.LoadFilter(seccomp.Filter{NoNewPrivs: true, Flag: seccomp.FilterFlagTSync, Policy: p}); err != nil {
		return fmt.Errorf("confine: seccomp: %w", err)
	}
	return nil
}
