package beneath

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// volume makes root/vol holding a symlink "up" that climbs out of it and
// "abs" that points at outside, a directory beside the volume.
func volume(t *testing.T) (root, vol, outside string) {
	t.Helper()
	root = t.TempDir()
	vol = filepath.Join(root, "vol")
	outside = filepath.Join(root, "outside")
	for _, d := range []string{vol, outside, filepath.Join(vol, "sub", "deeper")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "hostname"), []byte("host"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../outside", filepath.Join(vol, "up")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(vol, "abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("deeper", filepath.Join(vol, "sub", "inner")); err != nil {
		t.Fatal(err)
	}
	return root, vol, outside
}

func TestOpenDirRefusesLinksAndClimbs(t *testing.T) {
	_, vol, _ := volume(t)
	for _, rel := range []string{"up", "abs", "up/.", "abs/x", "sub/inner", "..", "../outside", "sub/../../outside", "/etc"} {
		f, err := OpenDir(vol, rel)
		if err == nil {
			f.Close()
			t.Errorf("OpenDir(%q) succeeded", rel)
			continue
		}
		if !errors.Is(err, ErrEscape) {
			t.Errorf("OpenDir(%q) = %v, want ErrEscape", rel, err)
		}
	}
	for _, rel := range []string{".", "", "sub", "sub/deeper", "./sub//deeper/"} {
		f, err := OpenDir(vol, rel)
		if err != nil {
			t.Errorf("OpenDir(%q): %v", rel, err)
			continue
		}
		f.Close()
	}
	if _, err := OpenDir(vol, "missing"); err == nil || errors.Is(err, ErrEscape) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenDir(missing) = %v, want not-exist", err)
	}
}

// The kubelet's CVE-2017-1002101 shape: a module turns a subPath into a
// link climbing out of its volume; creating the subPath must not create
// anything outside.
func TestMkdirAllDoesNotFollow(t *testing.T) {
	_, vol, outside := volume(t)
	for _, rel := range []string{"up/new", "abs/new", "sub/inner/new"} {
		if err := MkdirAll(vol, rel, 0o750); !errors.Is(err, ErrEscape) {
			t.Errorf("MkdirAll(%q) = %v, want ErrEscape", rel, err)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "new")); err == nil {
		t.Fatal("a directory was created outside the volume")
	}
	if err := MkdirAll(vol, "a/b/c", 0o750); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(vol, "a/b/c")); err != nil || !fi.IsDir() {
		t.Fatalf("a/b/c: %v", err)
	}
	if err := MkdirAll(vol, "a/b/c", 0o750); err != nil {
		t.Fatalf("second MkdirAll: %v", err)
	}
}

func TestWriteFile(t *testing.T) {
	_, vol, outside := volume(t)
	if err := WriteFile(vol, "up/hostname", []byte("pwned"), 0o644); !errors.Is(err, ErrEscape) {
		t.Errorf("write through a link = %v, want ErrEscape", err)
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "hostname")); string(b) != "host" {
		t.Fatalf("the file outside was changed: %q", b)
	}
	// A link at the file's own name is replaced, not followed.
	if err := os.Symlink(filepath.Join(outside, "hostname"), filepath.Join(vol, "key")); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(vol, "key", []byte("v1"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "hostname")); string(b) != "host" {
		t.Fatalf("the link's target was written: %q", b)
	}
	fi, err := os.Lstat(filepath.Join(vol, "key"))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key: %v %v", fi.Mode(), err)
	}
	if err := WriteFile(vol, "d/e/f", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(vol, "d/e/f")); string(b) != "x" {
		t.Fatalf("d/e/f = %q", b)
	}
	ents, _ := os.ReadDir(vol)
	for _, e := range ents {
		if filepath.Ext(e.Name()) != "" && e.Name()[0] == '.' {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

func TestRel(t *testing.T) {
	roots := []string{"/var/lib/wasmlet/pods", "/srv/data/"}
	for _, tc := range []struct {
		p, root, rel string
		ok           bool
	}{
		{"/var/lib/wasmlet/pods/u/v", "/var/lib/wasmlet/pods", "u/v", true},
		{"/var/lib/wasmlet/pods", "/var/lib/wasmlet/pods", ".", true},
		{"/var/lib/wasmlet/podsx", "", "", false},
		{"/var/lib/wasmlet/pods/../etc", "", "", false},
		{"/srv/data/x/../y", "/srv/data", "y", true},
		{"/etc", "", "", false},
	} {
		root, rel, ok := Rel(tc.p, roots)
		if root != tc.root || rel != tc.rel || ok != tc.ok {
			t.Errorf("Rel(%q) = %q %q %v, want %q %q %v", tc.p, root, rel, ok, tc.root, tc.rel, tc.ok)
		}
	}
}
