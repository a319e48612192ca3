package podworker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// tmpfsSize caps one memory-backed volume; tmpfs takes memory only for
// what is written.
const tmpfsSize = "64m"

// memoryBacked makes dir a tmpfs mount, as the kubelet does for secret and
// projected volumes, so that secrets and tokens never reach a disk and
// vanish with the pod; a dir that already is a mount is kept. A node agent
// without the right to mount (not root) keeps the files on disk and logs
// it.
func (s *volumeSource) memoryBacked(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if isMount(dir) {
		return nil
	}
	err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755,size="+tmpfsSize)
	if errors.Is(err, unix.EPERM) {
		if s.log != nil && !s.refreshing {
			s.log.Warn("secret volume kept on disk: the node agent may not mount tmpfs (run it as root)", "dir", dir)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	return nil
}

// isMount reports whether dir is the root of a mount other than its
// parent's.
func isMount(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Lstat(dir, &st) != nil || unix.Lstat(filepath.Dir(dir), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// RemoveVolumes removes a pod's volume directory (its VolumeDir), first
// unmounting the memory-backed volumes in it, so that nothing of a gone pod
// is left on the node.
func RemoveVolumes(volumeDir string) error {
	ents, err := os.ReadDir(volumeDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, e := range ents {
		p := filepath.Join(volumeDir, e.Name())
		if e.IsDir() && isMount(p) {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmount %s: %w", p, err)
			}
		}
	}
	return os.RemoveAll(volumeDir)
}
