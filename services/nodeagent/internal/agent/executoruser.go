package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
)

// DefaultExecutorUser is the user a root node agent runs its supervised
// executor as: the distroless images' "nonroot", which needs no entry in
// /etc/passwd.
const DefaultExecutorUser = "65532:65532"

// executorUser is the unprivileged user and group of the supervised
// executor.
type executorUser struct{ uid, gid int }

// parseExecutorUser reads UID[:GID] (numbers; GID defaults to UID). ""
// and "root" (or uid 0) mean none: the executor stays root.
func parseExecutorUser(s string) (*executorUser, error) {
	if s == "" || s == "root" {
		return nil, nil
	}
	us, gs, hasGroup := strings.Cut(s, ":")
	uid, err := strconv.ParseUint(us, 10, 31)
	if err != nil {
		return nil, fmt.Errorf("--executor-user %q: want UID[:GID] as numbers (e.g. %s), or root", s, DefaultExecutorUser)
	}
	gid := uid
	if hasGroup {
		if gid, err = strconv.ParseUint(gs, 10, 31); err != nil {
			return nil, fmt.Errorf("--executor-user %q: want UID[:GID] as numbers (e.g. %s), or root", s, DefaultExecutorUser)
		}
	}
	if uid == 0 {
		return nil, nil
	}
	if gid == 0 {
		return nil, fmt.Errorf("--executor-user %q: the group must not be root's (0), which would share the node agent's files with the executor; give another GID", s)
	}
	return &executorUser{uid: int(uid), gid: int(gid)}, nil
}

func (u *executorUser) String() string { return fmt.Sprintf("%d:%d", u.uid, u.gid) }

// executorPaths are the directories the node agent makes for its
// supervised executor.
type executorPaths struct {
	stateDir  string // the node agent's
	socketDir string // the executor's socket's, its own
	podsDir   string // the pods' volumes (its mount root)
}

func newExecutorPaths(stateDir string) executorPaths {
	return executorPaths{
		stateDir:  stateDir,
		socketDir: filepath.Join(stateDir, "sockets", "executor"),
		podsDir:   filepath.Join(stateDir, "pods"),
	}
}

// prepare makes the executor's directories before it starts. With u nil
// (the executor stays root) they are root's, 0700. With u, the executor's
// user reaches exactly what it needs and nothing is world-writable:
//
//   - the state dir and sockets/ are root's, group u 0710: it may pass
//     through, not list; the rest of the state dir (NATS, the registry
//     cache, keys) stays root's 0700.
//   - sockets/executor/ (its socket's directory) is u's, 0700, made afresh.
//   - pods/ is root's, group u, setgid 02710: what the node agent makes
//     below it (each pod's volumes) takes group u, and the pod worker
//     makes an emptyDir group-writable and files group-readable there
//     (podworker), as the kubelet does for a pod's fsGroup.
//   - its own state dir (executor/) it takes over itself (--run-as-user).
//
// It refuses, with what to do, a state dir or executor binary that u
// cannot reach, rather than let the executor fail at every restart.
func (p executorPaths) prepare(u *executorUser, bin string) error {
	if u == nil {
		for _, d := range []string{filepath.Dir(p.socketDir), p.socketDir} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return err
			}
		}
		if os.Geteuid() != 0 {
			return nil
		}
		// What an earlier unprivileged executor was given, taken back.
		for _, d := range []string{p.stateDir, filepath.Dir(p.socketDir), p.socketDir, p.podsDir} {
			if err := os.Chmod(d, 0o700); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		return nil
	}
	if err := os.MkdirAll(p.stateDir, 0o700); err != nil {
		return err
	}
	if err := reachable(filepath.Dir(p.stateDir), u); err != nil {
		return fmt.Errorf("--state-dir %s: %w; or give --executor-user=root", p.stateDir, err)
	}
	if err := executable(bin, u); err != nil {
		return fmt.Errorf("executor binary %s: %w; or give --executor-user=root", bin, err)
	}
	if err := p.share(u); err != nil {
		return err
	}
	// Its socket's directory, afresh: a socket an earlier executor left
	// (perhaps as root) would stop it from listening.
	if err := os.RemoveAll(p.socketDir); err != nil {
		return err
	}
	if err := os.Mkdir(p.socketDir, 0o700); err != nil {
		return err
	}
	return os.Lchown(p.socketDir, u.uid, u.gid)
}

// share gives u's group what every executor of that user needs of the
// node agent's state dir: passage through it and sockets/, and the pods'
// directory (see prepare). A separately run executor started as u
// (--executor) needs no more; its socket and state dir are its own.
func (p executorPaths) share(u *executorUser) error {
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{
		{p.stateDir, 0o710},
		{filepath.Dir(p.socketDir), 0o710},
		{p.podsDir, 0o710 | os.ModeSetgid},
	} {
		if err := os.MkdirAll(d.path, 0o700); err != nil {
			return err
		}
		if err := os.Lchown(d.path, 0, u.gid); err != nil {
			return fmt.Errorf("give %s to group %d: %w", d.path, u.gid, err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return err
		}
	}
	return nil
}

// shareSocket lets u connect to the unix socket at path (the in-process
// registry cache's): root's, group u, 0660. Connecting needs write
// permission on the socket; its directory (sockets/, 0710) lets u pass
// but not replace it.
func shareSocket(path string, u *executorUser) error {
	if u == nil {
		return nil
	}
	if err := os.Lchown(path, 0, u.gid); err != nil {
		return fmt.Errorf("give %s to group %d: %w", path, u.gid, err)
	}
	return os.Chmod(path, 0o660)
}

// reachable says why u cannot pass through dir and every directory above
// it, or nil.
func reachable(dir string, u *executorUser) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return err
	}
	for d := abs; ; d = filepath.Dir(d) {
		if err := may(d, u, 0o1); err != nil {
			return fmt.Errorf("the executor's user %s cannot pass through %w (chmod o+x %s, or choose a path below directories it may pass)", u, err, d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// executable says why u cannot run bin, or nil: the executor executes
// itself again once it has become u.
func executable(bin string, u *executorUser) error {
	real, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return err
	}
	if err := may(real, u, 0o1); err != nil {
		return fmt.Errorf("the executor's user %s cannot execute %w (it runs itself again once it has become that user)", u, err)
	}
	if err := reachable(filepath.Dir(real), u); err != nil {
		return err
	}
	return nil
}

// may says why u lacks the permission bits want (0o1 execute/search, 0o2
// write, 0o4 read) on path as its owner, group or other, or nil.
func may(path string, u *executorUser, want uint32) error {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return err
	}
	var bits uint32
	switch {
	case int(st.Uid) == u.uid:
		bits = st.Mode >> 6
	case int(st.Gid) == u.gid:
		bits = st.Mode >> 3
	default:
		bits = st.Mode
	}
	if bits&want != want {
		return fmt.Errorf("%s (mode %#o, uid %d, gid %d)", path, st.Mode&0o7777, st.Uid, st.Gid)
	}
	return nil
}

// checkExecutorFiles refuses, with what to do, files given for the
// supervised executor that its user u could not use: they are the
// operator's, and the node agent does not hand them over.
func checkExecutorFiles(cfg Config, u *executorUser) error {
	type given struct {
		flag, path string
		want       uint32
	}
	var all []given
	if f := cfg.ExecutorArtifactKeyFile; f != "" {
		all = append(all, given{"--executor-artifact-key-file", f, 0o4})
	}
	if d := cfg.CPUCgroup; d != "" {
		all = append(all, given{"--cpu-cgroup", d, 0o3})
	}
	network, target, _ := grpcutil.Split(cfg.RegistryCache)
	if _, err := os.Stat(target); network == "unix" && err == nil {
		// A separately run cache's socket (connecting needs write).
		all = append(all, given{"--registry-cache", target, 0o2})
	}
	if network == "tcp" && cfg.GRPCTLS.Enabled() {
		all = append(all, given{"--grpc-tls-cert", cfg.GRPCTLS.CertFile, 0o4},
			given{"--grpc-tls-key", cfg.GRPCTLS.KeyFile, 0o4}, given{"--grpc-tls-ca", cfg.GRPCTLS.CAFile, 0o4})
	}
	for _, g := range all {
		err := may(g.path, u, g.want)
		if err == nil {
			err = reachable(filepath.Dir(g.path), u)
		}
		if err != nil {
			return fmt.Errorf("%s %s: the supervised executor runs as %s and cannot use it: %v; give it to that user (chown %d %s; a cgroup is delegated so, as systemd's Delegate= does), or give --executor-user=root", g.flag, g.path, u, err, u.uid, g.path)
		}
	}
	return nil
}
