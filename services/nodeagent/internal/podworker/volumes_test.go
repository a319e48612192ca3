package podworker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestHostPathStaysUnderAllowedRoots(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "link-out")); err != nil {
		t.Fatal(err)
	}
	s := &volumeSource{allowedRoots: []string{root}}
	if _, err := s.hostPath(filepath.Join(root, "data")); err != nil {
		t.Errorf("a directory under the root was refused: %v", err)
	}
	for _, bad := range []string{outside, filepath.Join(root, "..", filepath.Base(outside)), filepath.Join(root, "link-out"), "/etc"} {
		if p, err := s.hostPath(bad); err == nil {
			t.Errorf("hostPath %q was allowed as %q", bad, p)
		}
	}
	if _, err := (&volumeSource{}).hostPath(root); err == nil {
		t.Error("hostPath allowed with no roots configured")
	}
}

func TestWriteFilesRefusesEscapes(t *testing.T) {
	dir := t.TempDir()
	if err := writeFiles(dir, map[string]file{"a/b.txt": {data: []byte("x")}}, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "a", "b.txt")); err != nil || string(b) != "x" {
		t.Fatalf("read back %q, %v", b, err)
	}
	for _, bad := range []string{"../x", "/abs", ".."} {
		if err := writeFiles(dir, map[string]file{bad: {data: []byte("x")}}, 0o644); err == nil {
			t.Errorf("path %q was written", bad)
		}
	}
}

// A config map's refresh must not write through a link placed in the
// volume (the temporary file used to be created beside the target, in a
// directory a module could write).
func TestWriteFilesDoesNotFollowLinks(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "sub")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "target"), filepath.Join(dir, "key")); err != nil {
		t.Fatal(err)
	}
	if err := writeFiles(dir, map[string]file{"sub/key": {data: []byte("x")}}, 0o644); err == nil {
		t.Error("a file was written through a linked directory")
	}
	if err := writeFiles(dir, map[string]file{"key": {data: []byte("v")}}, 0o644); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("files appeared outside the volume: %v", ents)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "key")); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("key is not a regular file: %v", err)
	}
}

func TestAPIObjectVolumesAreReadOnly(t *testing.T) {
	pod := &v1.Pod{Spec: v1.PodSpec{Volumes: []v1.Volume{
		{Name: "cm", VolumeSource: v1.VolumeSource{ConfigMap: &v1.ConfigMapVolumeSource{}}},
		{Name: "sec", VolumeSource: v1.VolumeSource{Secret: &v1.SecretVolumeSource{}}},
		{Name: "down", VolumeSource: v1.VolumeSource{DownwardAPI: &v1.DownwardAPIVolumeSource{}}},
		{Name: "proj", VolumeSource: v1.VolumeSource{Projected: &v1.ProjectedVolumeSource{}}},
		{Name: "scratch", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{}}},
	}}}
	for name, want := range map[string]bool{"cm": true, "sec": true, "down": true, "proj": true, "scratch": false, "missing": false} {
		if got := readOnlyVolume(pod, name); got != want {
			t.Errorf("readOnlyVolume(%s) = %v, want %v", name, got, want)
		}
	}
}

// Secrets live in memory, as the kubelet keeps them, and go with the pod.
func TestSecretVolumesInMemory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	vols := filepath.Join(t.TempDir(), "volumes")
	dir := filepath.Join(vols, "token")
	s := &volumeSource{}
	if err := s.memoryBacked(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = RemoveVolumes(vols) })
	if !isMount(dir) {
		t.Fatal("the secret volume is not a mount")
	}
	if err := s.memoryBacked(dir); err != nil { // a refresh: kept, not stacked
		t.Fatal(err)
	}
	if err := writeFiles(dir, map[string]file{"token": {data: []byte("t")}}, 0o644); err != nil {
		t.Fatal(err)
	}
	mounts := func() string { b, _ := os.ReadFile("/proc/self/mountinfo"); return string(b) }
	if n := strings.Count(mounts(), " "+dir+" "); n != 1 {
		t.Fatalf("%s mounted %d times", dir, n)
	}
	if err := RemoveVolumes(vols); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(mounts(), " "+dir+" ") {
		t.Fatal("the tmpfs outlived its pod")
	}
	if _, err := os.Stat(vols); !os.IsNotExist(err) {
		t.Fatalf("volume dir left: %v", err)
	}
}

func TestItemModes(t *testing.T) {
	dir := t.TempDir()
	mode := int32(0o400)
	files, err := pick(map[string][]byte{"a": []byte("1"), "b": []byte("2")},
		[]v1.KeyToPath{{Key: "a", Path: "a"}, {Key: "b", Path: "sub/b", Mode: &mode}}, "secret s")
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFiles(dir, files, 0o644); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{"a": 0o644, "sub/b": 0o400} {
		if fi, err := os.Stat(filepath.Join(dir, p)); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v %v, want %v", p, fi.Mode().Perm(), err, want)
		}
	}
}
