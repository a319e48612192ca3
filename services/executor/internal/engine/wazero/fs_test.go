package wazero

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/experimental/sysfs"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

func TestConfinedResolve(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "a", "b"), 0o755))
	must(os.Symlink("a/b", filepath.Join(root, "ab")))
	must(os.Symlink("../..", filepath.Join(root, "a", "b", "up2")))
	must(os.Symlink("..", filepath.Join(root, "a", "up1")))
	must(os.Symlink("/etc", filepath.Join(root, "etc")))
	must(os.Symlink("loop", filepath.Join(root, "loop")))
	c := &confined{root: root}
	for _, tc := range []struct {
		path   string
		follow bool
		want   string
		errno  experimentalsys.Errno
	}{
		{"a/b/f", true, "a/b/f", 0},
		{"ab/f", true, "a/b/f", 0},
		{"ab", true, "a/b", 0},
		{"ab", false, "ab", 0},
		{"a/up1/ab", true, "a/b", 0},
		{"a/b/up2", true, ".", 0},
		{"a/b/up2/..", true, "", experimentalsys.EPERM},
		{"ab/up2/../x", true, "", experimentalsys.EPERM},
		{"etc/passwd", true, "", experimentalsys.EPERM},
		{"etc", false, "etc", 0},
		{"..", true, "", experimentalsys.EPERM},
		{"loop", true, "", experimentalsys.ELOOP},
		{"new/dir/file", true, "new/dir/file", 0},
	} {
		got, errno := c.resolve(tc.path, tc.follow)
		if got != tc.want || errno != tc.errno {
			t.Errorf("resolve(%q, %v) = %q, %v; want %q, %v", tc.path, tc.follow, got, errno, tc.want, tc.errno)
		}
	}
}

// An instance holds at most maxOpenFiles open across its mounts; a close
// gives a place back.
func TestOpenFilesCapped(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir()}
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "f"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	open := new(atomic.Int32)
	mounts := []*confined{
		{FS: sysfs.DirFS(dirs[0]), root: dirs[0], open: open},
		{FS: sysfs.DirFS(dirs[1]), root: dirs[1], open: open},
	}
	var files []experimentalsys.File
	t.Cleanup(func() {
		for _, f := range files {
			f.Close()
		}
	})
	for i := range maxOpenFiles {
		f, errno := mounts[i%2].OpenFile("f", experimentalsys.O_RDONLY, 0)
		if errno != 0 {
			t.Fatalf("open %d: %v", i, errno)
		}
		files = append(files, f)
	}
	if _, errno := mounts[0].OpenFile("f", experimentalsys.O_RDONLY, 0); errno != experimentalsys.EIO {
		t.Fatalf("open %d: errno %v, want EIO", maxOpenFiles+1, errno)
	}
	if _, errno := mounts[0].OpenFile("missing", experimentalsys.O_RDONLY, 0); errno != experimentalsys.EIO {
		t.Fatalf("an open past the cap of a missing file: %v", errno)
	}
	files[0].Close()
	files[0].Close() // a second close gives nothing back twice
	f, errno := mounts[1].OpenFile("f", experimentalsys.O_RDONLY, 0)
	if errno != 0 {
		t.Fatalf("open after a close: %v", errno)
	}
	files[0] = f
	if _, errno := mounts[1].OpenFile("f", experimentalsys.O_RDONLY, 0); errno != experimentalsys.EIO {
		t.Fatalf("the cap after a double close: %v", errno)
	}
	if n := open.Load(); n != maxOpenFiles {
		t.Fatalf("counted %d open, want %d", n, maxOpenFiles)
	}
}

// TestModuleOpenFilesCapped: the cap as a module meets it, through WASI.
func TestModuleOpenFilesCapped(t *testing.T) {
	enginetest.OpenFilesCapped(t, newEngine(t, t.TempDir(), nil))
}
