package podworker

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// TestVolumesSharedWithExecutorGroup: below a pods' directory that the
// node agent made setgid to an unprivileged executor's group (package
// agent), an emptyDir and the subPath directories made in it are
// group-writable, files of the other volumes group-readable whatever
// their mode (a secret's 0400 too), a secret's tmpfs takes the group, and
// nothing is world-writable.
func TestVolumesSharedWithExecutorGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another group")
	}
	const gid = 65532
	pods := filepath.Join(t.TempDir(), "pods")
	if err := os.Mkdir(pods, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(pods, 0, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pods, 0o710|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	vols := filepath.Join(pods, "uid", "volumes")
	t.Cleanup(func() { _ = RemoveVolumes(vols) })
	s := &volumeSource{}
	check := func(path string, want os.FileMode) {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			t.Fatal(err)
		}
		if st.Gid != gid || os.FileMode(st.Mode&0o777) != want.Perm() || (want&os.ModeSetgid != 0) != (st.Mode&syscall.S_ISGID != 0) {
			t.Errorf("%s: gid %d mode %#o; want gid %d mode %v", path, st.Gid, st.Mode&0o7777, gid, want)
		}
	}

	work, err := s.prepare(context.Background(), filepath.Join(vols, "work"), v1.Volume{Name: "work", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{}}})
	if err != nil {
		t.Fatal(err)
	}
	check(work, 0o770|os.ModeSetgid)
	sub, err := subPath(work, "a/b")
	if err != nil {
		t.Fatal(err)
	}
	check(filepath.Join(work, "a"), 0o770|os.ModeSetgid)
	check(sub, 0o770|os.ModeSetgid)

	mode := int32(0o400)
	files, err := pick(map[string][]byte{"a": []byte("1"), "b": []byte("2")},
		[]v1.KeyToPath{{Key: "a", Path: "a"}, {Key: "b", Path: "sub/b", Mode: &mode}}, "secret s")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(vols, "cfg")
	if err := writeFiles(cfg, files, 0o644); err != nil {
		t.Fatal(err)
	}
	check(cfg, 0o750|os.ModeSetgid)
	check(filepath.Join(cfg, "sub"), 0o750|os.ModeSetgid)
	check(filepath.Join(cfg, "a"), 0o644)
	check(filepath.Join(cfg, "sub", "b"), 0o440)

	sec := filepath.Join(vols, "sec")
	if err := s.memoryBacked(sec); err != nil {
		t.Fatal(err)
	}
	if !isMount(sec) {
		t.Skip("no tmpfs here")
	}
	if err := shareMount(sec); err != nil {
		t.Fatal(err)
	}
	if err := writeFiles(sec, files, 0o400); err != nil {
		t.Fatal(err)
	}
	check(sec, 0o750|os.ModeSetgid)
	check(filepath.Join(sec, "a"), 0o440)
}

// TestVolumesNotSharedByDefault: without the setgid pods' directory (an
// executor that runs as the node agent's user) modes are as asked.
func TestVolumesNotSharedByDefault(t *testing.T) {
	vols := filepath.Join(t.TempDir(), "volumes")
	work, err := (&volumeSource{}).prepare(context.Background(), filepath.Join(vols, "work"), v1.Volume{Name: "work", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{}}})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(work); err != nil || fi.Mode().Perm()&0o070 == 0o070 || fi.Mode()&os.ModeSetgid != 0 {
		t.Errorf("emptyDir mode %v, %v; want it not shared", fi.Mode(), err)
	}
}
