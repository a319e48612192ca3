package wazero

import (
	"os"
	"path/filepath"
	"testing"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
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
