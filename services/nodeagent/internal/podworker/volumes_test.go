package podworker

import (
	"os"
	"path/filepath"
	"testing"
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
	if err := writeFiles(dir, map[string][]byte{"a/b.txt": []byte("x")}, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "a", "b.txt")); err != nil || string(b) != "x" {
		t.Fatalf("read back %q, %v", b, err)
	}
	for _, bad := range []string{"../x", "/abs", ".."} {
		if err := writeFiles(dir, map[string][]byte{bad: []byte("x")}, 0o644); err == nil {
			t.Errorf("path %q was written", bad)
		}
	}
}
