package confine

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/user"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/landlock-lsm/go-landlock/landlock"
	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// envConfined marks the executor image started by Apply; its value is
// the encoded Status of what the first image applied.
const envConfined = "WASMLET_CONFINED"

// Apply confines the process as cfg says. The first call does not
// return unless it fails: it confines its thread and execve's the same
// binary with the same arguments. The call in that new image loads the
// seccomp filter on every thread and returns what confines the process.
// With nothing to confine it returns at once.
//
// Why the execve: Landlock and credentials are per thread, a Go process
// has many threads, and with cgo linked syscall.AllThreadsSyscall is
// refused; the new image starts with the one confined thread's state. The
// filter is loaded after the execve so that execve itself can be refused.
func Apply(cfg Config) (Status, error) {
	if text, ok := os.LookupEnv(envConfined); ok {
		os.Unsetenv(envConfined)
		return finish(cfg, text)
	}
	if !cfg.Seccomp && !cfg.Landlock && !cfg.IsolateNetwork && cfg.User == "" && cfg.Group == "" {
		return Status{UID: os.Getuid(), GID: os.Getgid()}, nil
	}
	uid, gid, err := lookupUser(cfg.User, cfg.Group)
	if err != nil {
		return Status{}, err
	}
	exe, err := os.Executable()
	if err != nil {
		return Status{}, fmt.Errorf("confine: own binary: %w", err)
	}
	for _, dir := range cfg.ReadWrite {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return Status{}, fmt.Errorf("confine: %w", err)
		}
	}
	for _, dir := range cfg.Own {
		if uid < 0 && gid < 0 {
			break
		}
		if err := chownTree(dir, uid, gid); err != nil {
			return Status{}, fmt.Errorf("confine: give %s to uid %d: %w", dir, uid, err)
		}
	}
	st := Status{NoNewPrivs: true, NetworkIsolated: cfg.IsolateNetwork, UID: os.Getuid(), GID: os.Getgid()}
	if uid >= 0 {
		st.UID = uid
	}
	if gid >= 0 {
		st.GID = gid
	}
	rulesetFD, flags := -1, uint32(0)
	if cfg.Landlock {
		abi, why := landlockABI()
		st.LandlockWhy = why
		if abi > 0 {
			rules, err := landlockRules(cfg, exe)
			if err != nil {
				return Status{}, err
			}
			if rulesetFD, flags, err = landlockConfig().NewRulesetFD(rules...); err != nil {
				return Status{}, fmt.Errorf("confine: Landlock ruleset: %w", err)
			}
			if rulesetFD >= 0 {
				st.LandlockABI = abi
			} else {
				st.LandlockWhy = "the kernel's Landlock lacks a right the rules need"
			}
		}
	} else {
		st.LandlockWhy = "not asked for (--confine=false)"
	}
	env := append(os.Environ(), envConfined+"="+st.encode())

	// From here on, everything happens on this thread, which execve
	// turns into the whole process; it is never unlocked, so that a
	// failure cannot hand a half-confined thread back to the scheduler.
	runtime.LockOSThread()
	pdeath, _ := unix.PrctlRetInt(unix.PR_GET_PDEATHSIG, 0, 0, 0, 0)
	if cfg.IsolateNetwork {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return Status{}, fmt.Errorf("confine: network namespace: %w", err)
		}
	}
	if gid >= 0 {
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
			return Status{}, fmt.Errorf("confine: drop supplementary groups: %w", e)
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
			return Status{}, fmt.Errorf("confine: gid %d: %w", gid, e)
		}
	}
	if uid >= 0 {
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
			return Status{}, fmt.Errorf("confine: uid %d: %w", uid, e)
		}
	}
	// A change of credentials clears the parent-death signal; the
	// supervisor relies on it when the node agent dies.
	if pdeath != 0 {
		_ = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(pdeath), 0, 0, 0)
		if os.Getppid() == 1 {
			os.Exit(1)
		}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return Status{}, fmt.Errorf("confine: no_new_privs: %w", err)
	}
	if rulesetFD >= 0 {
		if err := ll.LandlockRestrictSelf(rulesetFD, flags); err != nil {
			return Status{}, fmt.Errorf("confine: Landlock: %w", err)
		}
	}
	err = syscall.Exec(exe, os.Args, env)
	return Status{}, fmt.Errorf("confine: execve %s: %w", exe, err)
}

// finish runs in the image that Apply started: what the first image did
// is checked where the kernel shows it, and the seccomp filter loaded.
func finish(cfg Config, text string) (Status, error) {
	st, err := decode(text)
	if err != nil {
		return Status{}, fmt.Errorf("confine: %s=%q: %w", envConfined, text, err)
	}
	if os.Getuid() != st.UID || os.Getgid() != st.GID {
		return Status{}, fmt.Errorf("confine: running as uid %d gid %d, want %d %d", os.Getuid(), os.Getgid(), st.UID, st.GID)
	}
	nnp, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
	if err != nil || (nnp == 1) != st.NoNewPrivs {
		return Status{}, fmt.Errorf("confine: no_new_privs is %d, %s says %v", nnp, envConfined, st.NoNewPrivs)
	}
	if cfg.Seccomp {
		if err := loadSeccomp(); err != nil {
			return Status{}, err
		}
		st.Seccomp = true
	}
	return st, nil
}

// landlockABI returns the kernel's Landlock ABI version, or 0 and why
// there is none.
func landlockABI() (int, string) {
	v, err := ll.LandlockGetABIVersion()
	switch {
	case err == nil && v > 0:
		return v, ""
	case errors.Is(err, unix.ENOSYS):
		return 0, "the kernel was built without Landlock (CONFIG_SECURITY_LANDLOCK)"
	case errors.Is(err, unix.EOPNOTSUPP):
		return 0, `the kernel has Landlock but did not enable it at boot (add "landlock" to the lsm= boot parameter)`
	case err != nil:
		return 0, fmt.Sprintf("the kernel's Landlock cannot be queried: %v", err)
	}
	return 0, "the kernel reports Landlock ABI 0"
}

// landlockConfig handles every file system right and IPC scope known to
// go-landlock, downgraded to what the kernel has; network rights are
// not handled: the executor dials NATS and the registry cache over TCP.
func landlockConfig() landlock.Config {
	return landlock.Config{
		HandledAccessFS: landlock.V11.HandledAccessFS,
		Scoped:          landlock.V11.Scoped,
	}.BestEffort()
}

// Paths every executor reads: the dynamic loader's cache, time zones, CA
// certificates and name resolution (NATS over TLS, host names), what the
// Go runtime and wasmtime read about the machine (huge pages, CPUs,
// cgroup limits, the listen backlog), its own /proc entries, and random
// devices. Found in the strace of the confined executor (EACCES).
var (
	systemDirs = []string{
		"/usr/share/zoneinfo", "/etc/ssl/certs", "/usr/share/ca-certificates", "/etc/ca-certificates", "/etc/pki",
		"/sys/kernel/mm/transparent_hugepage", "/sys/kernel/mm/hugepages", "/sys/devices/system/cpu", "/sys/fs/cgroup",
		"/proc/self",
	}
	systemFiles = []string{
		"/etc/ld.so.cache", "/etc/localtime", "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf",
		"/etc/host.conf", "/etc/gai.conf", "/etc/services",
		"/dev/urandom", "/dev/random", "/proc/sys/kernel/hostname", "/proc/meminfo", "/proc/cpuinfo",
		"/proc/sys/vm/overcommit_memory", "/proc/sys/net/core/somaxconn",
	}
)

// landlockRules: full rights in cfg.ReadWrite; read in cfg.ReadOnly and
// the system's paths; read and execute on the executor's binary and the
// libraries it has mapped (the execve loads them again); /dev/null.
func landlockRules(cfg Config, exe string) ([]landlock.Rule, error) {
	mapped, err := mappedFiles()
	if err != nil {
		return nil, err
	}
	roDirs, roFiles := splitByKind(append(slices.Clone(cfg.ReadOnly), systemDirs...))
	roFiles = append(roFiles, systemFiles...)
	rules := []landlock.Rule{
		landlock.ROFiles(append(mapped, exe)...),
		landlock.RODirs(roDirs...).IgnoreIfMissing(),
		landlock.ROFiles(roFiles...).IgnoreIfMissing(),
		landlock.RWFiles("/dev/null"),
		landlock.PathAccess(ll.AccessFSResolveUnix, cfg.Connect...).IgnoreIfMissing(),
	}
	if len(cfg.ReadWrite) > 0 {
		// Refer: a module may rename a file from one directory of a
		// volume to another.
		rules = append(rules, landlock.RWDirs(cfg.ReadWrite...).WithRefer())
	}
	return rules, nil
}

// splitByKind sorts paths into directories and other files (Landlock
// refuses directory rights on a file); missing paths are dropped.
func splitByKind(paths []string) (dirs, files []string) {
	for _, p := range paths {
		fi, err := os.Stat(p)
		switch {
		case err != nil:
		case fi.IsDir():
			dirs = append(dirs, p)
		default:
			files = append(files, p)
		}
	}
	return dirs, files
}

// mappedFiles lists the files mapped into this process (the binary, the
// dynamic loader, libc...), from /proc/self/maps.
func mappedFiles() ([]string, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, fmt.Errorf("confine: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 6 && strings.HasPrefix(fields[5], "/") && !slices.Contains(out, fields[5]) {
			if _, err := os.Stat(fields[5]); err == nil {
				out = append(out, fields[5])
			}
		}
	}
	return out, sc.Err()
}

// lookupUser resolves user and group (names or numbers); -1 for what is
// not given. It runs before the confinement, which hides /etc/passwd. A
// number needs no entry in /etc/passwd or /etc/group (as a container's
// USER 65532 needs none); a numeric user without an entry has its own
// number as group unless group is given.
func lookupUser(name, group string) (uid, gid int, err error) {
	uid, gid = -1, -1
	if name != "" {
		if u, err := user.Lookup(name); err == nil {
			uid, _ = strconv.Atoi(u.Uid)
			gid, _ = strconv.Atoi(u.Gid)
		} else if u, err := user.LookupId(name); err == nil {
			uid, _ = strconv.Atoi(u.Uid)
			gid, _ = strconv.Atoi(u.Gid)
		} else if n, ok := numericID(name); ok {
			uid, gid = n, n
		} else {
			return 0, 0, fmt.Errorf("confine: user %s: %w", name, err)
		}
	}
	if group != "" {
		if g, err := user.LookupGroup(group); err == nil {
			gid, _ = strconv.Atoi(g.Gid)
		} else if g, err := user.LookupGroupId(group); err == nil {
			gid, _ = strconv.Atoi(g.Gid)
		} else if n, ok := numericID(group); ok {
			gid = n
		} else {
			return 0, 0, fmt.Errorf("confine: group %s: %w", group, err)
		}
	}
	return uid, gid, nil
}

// numericID is s as a user or group id: decimal, below 2^32-1 (which the
// kernel reads as "no change").
func numericID(s string) (int, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, false
	}
	return int(n), true
}

// chownTree gives dir and everything beneath it to uid and gid, so that
// a state dir written by an earlier root executor stays usable.
func chownTree(dir string, uid, gid int) error {
	if uid < 0 {
		uid = os.Getuid()
	}
	if gid < 0 {
		gid = os.Getgid()
	}
	return walkNoFollow(dir, func(path string) error { return os.Lchown(path, uid, gid) })
}

func walkNoFollow(path string, fn func(string) error) error {
	if err := fn(path); err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	if err != nil || !fi.IsDir() {
		return err
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := walkNoFollow(path+"/"+e.Name(), fn); err != nil {
			return err
		}
	}
	return nil
}
