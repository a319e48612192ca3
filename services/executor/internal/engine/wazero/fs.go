package wazero

import (
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"

	wz "github.com/tetratelabs/wazero"
	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/experimental/sysfs"
	wsys "github.com/tetratelabs/wazero/sys"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// maxLinks bounds the symlinks one lookup follows, as Linux does.
const maxLinks = 40

// confined is a preopened host directory whose symlinks cannot lead out of
// it. wazero's own directory mount opens root+path with the host's path
// lookup, which follows a symlink wherever it points (a volume holding
// "x -> /etc/passwd" would expose the host); wasmtime (cap-std) refuses.
// confined resolves every symlink of a path itself, inside the root, and
// hands the inner file system a path without symlinks. A symlink with an
// absolute target, or one that climbs above the root, fails with EPERM,
// as under wasmtime.
//
// The check and the use are two lookups: a path changed in between (by
// another instance sharing the volume) can still be raced. Only Linux's
// openat2(RESOLVE_BENEATH) closes that, which wazero does not use.
type confined struct {
	experimentalsys.FS
	root string
	// open counts the files the instance holds open through all its
	// mounts, at most maxOpenFiles.
	open *atomic.Int32
}

// maxOpenFiles bounds the files one instance holds open. wazero has no
// EMFILE: an open past it fails EIO.
const maxOpenFiles = engine.MaxOpenFiles

// countedFile gives its place back in confined.open when closed.
type countedFile struct {
	experimentalsys.File
	open   *atomic.Int32
	closed atomic.Bool
}

func (f *countedFile) Close() experimentalsys.Errno {
	if f.closed.CompareAndSwap(false, true) {
		f.open.Add(-1)
	}
	return f.File.Close()
}

// mountDir mounts host dir at guest into fsc, confined, read-only if ro;
// open counts the instance's open files across its mounts.
func mountDir(fsc wz.FSConfig, dir, guest string, ro bool, open *atomic.Int32) wz.FSConfig {
	var f experimentalsys.FS = &confined{FS: sysfs.DirFS(dir), root: dir, open: open}
	if ro {
		f = &sysfs.ReadFS{FS: f}
	}
	return fsc.(sysfs.FSConfig).WithSysFSMount(f, guest)
}

// resolve returns p with its symlinks resolved inside the root; the last
// component is resolved only if followLast.
func (c *confined) resolve(p string, followLast bool) (string, experimentalsys.Errno) {
	queue := strings.Split(strings.TrimPrefix(p, "/"), "/")
	var done []string
	links := 0
	for len(queue) > 0 {
		comp := queue[0]
		queue = queue[1:]
		switch comp {
		case "", ".":
			continue
		case "..":
			if len(done) == 0 {
				return "", experimentalsys.EPERM
			}
			done = done[:len(done)-1]
			continue
		}
		if len(queue) == 0 && !followLast {
			done = append(done, comp)
			break
		}
		host := filepath.Join(c.root, filepath.FromSlash(path.Join(append(done, comp)...)))
		fi, err := os.Lstat(host)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			// Not a symlink, or absent (to be created, or ENOENT later).
			done = append(done, comp)
			continue
		}
		if links++; links > maxLinks {
			return "", experimentalsys.ELOOP
		}
		target, err := os.Readlink(host)
		if err != nil {
			return "", experimentalsys.UnwrapOSError(err)
		}
		if filepath.IsAbs(target) {
			return "", experimentalsys.EPERM
		}
		queue = append(strings.Split(filepath.ToSlash(target), "/"), queue...)
	}
	if len(done) == 0 {
		return ".", 0
	}
	return path.Join(done...), 0
}

func (c *confined) OpenFile(p string, flag experimentalsys.Oflag, perm fs.FileMode) (experimentalsys.File, experimentalsys.Errno) {
	r, errno := c.resolve(p, flag&experimentalsys.O_NOFOLLOW == 0)
	if errno != 0 {
		return nil, errno
	}
	if c.open.Add(1) > maxOpenFiles {
		c.open.Add(-1)
		return nil, experimentalsys.EIO
	}
	f, errno := c.FS.OpenFile(r, flag, perm)
	if errno != 0 {
		c.open.Add(-1)
		return nil, errno
	}
	return &countedFile{File: f, open: c.open}, 0
}

func (c *confined) Lstat(p string) (wsys.Stat_t, experimentalsys.Errno) {
	r, errno := c.resolve(p, false)
	if errno != 0 {
		return wsys.Stat_t{}, errno
	}
	return c.FS.Lstat(r)
}

func (c *confined) Stat(p string) (wsys.Stat_t, experimentalsys.Errno) {
	r, errno := c.resolve(p, true)
	if errno != 0 {
		return wsys.Stat_t{}, errno
	}
	return c.FS.Stat(r)
}

func (c *confined) Mkdir(p string, perm fs.FileMode) experimentalsys.Errno {
	r, errno := c.resolve(p, false)
	if errno != 0 {
		return errno
	}
	return c.FS.Mkdir(r, perm)
}

func (c *confined) Chmod(p string, perm fs.FileMode) experimentalsys.Errno {
	r, errno := c.resolve(p, true)
	if errno != 0 {
		return errno
	}
	return c.FS.Chmod(r, perm)
}

func (c *confined) Rename(from, to string) experimentalsys.Errno {
	rf, errno := c.resolve(from, false)
	if errno != 0 {
		return errno
	}
	rt, errno := c.resolve(to, false)
	if errno != 0 {
		return errno
	}
	return c.FS.Rename(rf, rt)
}

func (c *confined) Rmdir(p string) experimentalsys.Errno {
	r, errno := c.resolve(p, false)
	if errno != 0 {
		return errno
	}
	return c.FS.Rmdir(r)
}

func (c *confined) Unlink(p string) experimentalsys.Errno {
	r, errno := c.resolve(p, false)
	if errno != 0 {
		return errno
	}
	return c.FS.Unlink(r)
}

func (c *confined) Link(oldPath, newPath string) experimentalsys.Errno {
	ro, errno := c.resolve(oldPath, false)
	if errno != 0 {
		return errno
	}
	rn, errno := c.resolve(newPath, false)
	if errno != 0 {
		return errno
	}
	return c.FS.Link(ro, rn)
}

// Symlink creates linkName; its target is kept as given and checked when
// a lookup follows it.
func (c *confined) Symlink(oldPath, linkName string) experimentalsys.Errno {
	r, errno := c.resolve(linkName, false)
	if errno != 0 {
		return errno
	}
	return c.FS.Symlink(oldPath, r)
}

func (c *confined) Readlink(p string) (string, experimentalsys.Errno) {
	r, errno := c.resolve(p, false)
	if errno != 0 {
		return "", errno
	}
	return c.FS.Readlink(r)
}

func (c *confined) Utimens(p string, atim, mtim int64) experimentalsys.Errno {
	r, errno := c.resolve(p, true)
	if errno != 0 {
		return errno
	}
	return c.FS.Utimens(r, atim, mtim)
}
