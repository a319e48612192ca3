package instance

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/wasmlet/wasmlet/internal/beneath"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// validate refuses what a spec may not ask for, before anything is fetched.
func validate(id string, spec instances.Spec, roots []string) error {
	if id == "" || len(id) > 253 {
		return fmt.Errorf("%w: instance id must be 1 to 253 characters", instances.ErrInvalidArgument)
	}
	if strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("%w: instance id %q must not contain '/' or NUL", instances.ErrInvalidArgument, id)
	}
	digest := spec.Module.Digest
	hexd, ok := strings.CutPrefix(digest, "sha256:")
	if _, err := hex.DecodeString(hexd); !ok || len(hexd) != 64 || err != nil || strings.ToLower(hexd) != hexd {
		return fmt.Errorf("%w: module digest %q: want sha256:<64 lowercase hex digits>", instances.ErrInvalidArgument, digest)
	}
	if spec.MemoryLimitBytes < 0 {
		return fmt.Errorf("%w: memory limit %d is negative", instances.ErrInvalidArgument, spec.MemoryLimitBytes)
	}
	if spec.CPULimitMillis < 0 {
		return fmt.Errorf("%w: CPU limit %dm is negative", instances.ErrInvalidArgument, spec.CPULimitMillis)
	}
	if err := instances.ValidateListeners(spec); err != nil {
		return err
	}
	for _, p := range spec.Preopens {
		if !filepath.IsAbs(p.HostPath) || p.GuestPath == "" {
			return fmt.Errorf("%w: preopen %q -> %q: the host path must be absolute and the guest path set", instances.ErrInvalidArgument, p.HostPath, p.GuestPath)
		}
		if _, _, ok := beneath.Rel(p.HostPath, roots); !ok {
			return fmt.Errorf("%w: preopen %q: the host path is outside this executor's mount roots %v (start it with --mount-root for the node agent's pod directory and allowed hostPath roots)", instances.ErrPermissionDenied, p.HostPath, roots)
		}
	}
	return nil
}

// listeners are spec's listeners as the engine opens them: on
// ListenAddress, else every address of the network namespace, else
// loopback only.
func listeners(spec instances.Spec) []engine.Listener {
	host := spec.ListenAddress
	if host == "" && spec.NetworkNamespace == "" {
		host = "127.0.0.1"
	}
	var out []engine.Listener
	for _, l := range spec.Listeners {
		out = append(out, engine.Listener{Name: l.FDName(), Host: host, Port: int(l.Port)})
	}
	return out
}

// openPreopens opens each preopen's directory beneath its mount root
// without following a symlink (a module may have replaced a directory of a
// shared volume by a link since the node agent made it), and returns the
// preopens with their host paths as /proc/self/fd paths of the opened
// directories, so that the engine opens exactly what was checked.
func (m *Manager) openPreopens(ps []instances.Preopen) ([]engine.Preopen, []*os.File, error) {
	out := make([]engine.Preopen, len(ps))
	var dirs []*os.File
	for i, p := range ps {
		root, rel, ok := beneath.Rel(p.HostPath, m.cfg.MountRoots)
		if !ok { // validated at create; the roots do not change
			closeAll(dirs)
			return nil, nil, fmt.Errorf("%w: preopen %q is outside the mount roots", instances.ErrPermissionDenied, p.HostPath)
		}
		d, err := beneath.OpenDir(root, rel)
		if err != nil {
			closeAll(dirs)
			if errors.Is(err, beneath.ErrEscape) {
				return nil, nil, fmt.Errorf("preopen %s at %s refused: %v; a mounted path must be a directory reached without symbolic links", p.HostPath, p.GuestPath, err)
			}
			return nil, nil, fmt.Errorf("preopen %s at %s: host path is not a directory (%v); create it or fix the path", p.HostPath, p.GuestPath, err)
		}
		dirs = append(dirs, d)
		out[i] = engine.Preopen{HostPath: fmt.Sprintf("/proc/self/fd/%d", d.Fd()), GuestPath: p.GuestPath, ReadOnly: p.ReadOnly}
	}
	return out, dirs, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func matches(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
