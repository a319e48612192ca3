// Package beneath opens, creates and writes paths inside a directory without
// following any symbolic link on the way, and without leaving it through
// "..", so that a link a module placed in its volume cannot redirect a path
// the node agent or an executor opens on the pod's behalf (the class of the
// kubelet's subPath CVE-2017-1002101).
//
// It owns only path resolution: every lookup is a walk of openat(2) calls
// with O_NOFOLLOW from a descriptor of the root, one component at a time.
// The root itself is trusted (it comes from configuration) and may be a
// symlink; nothing below it may be.
//
//	d, err := beneath.OpenDir("/var/lib/wasmlet/pods", "uid/volumes/data/x")
//	err = beneath.MkdirAll(volumeDir, "a/b", 0o750)
//	err = beneath.WriteFile(volumeDir, "config/app.yaml", data, 0o644)
package beneath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrEscape is a path that would leave its root or pass through a symlink.
var ErrEscape = errors.New("path leaves its directory or passes through a symbolic link")

// Rel returns p relative to the first of roots that holds it (lexically,
// after cleaning both), with that root.
func Rel(p string, roots []string) (root, rel string, ok bool) {
	p = filepath.Clean(p)
	for _, r := range roots {
		r = filepath.Clean(r)
		if p == r {
			return r, ".", true
		}
		if strings.HasPrefix(p, r+string(filepath.Separator)) || r == "/" {
			rel, err := filepath.Rel(r, p)
			if err == nil {
				return r, rel, true
			}
		}
	}
	return "", "", false
}

// split cleans rel and returns its components; it refuses absolute paths
// and any component that climbs.
func split(rel string) ([]string, error) {
	if filepath.IsAbs(rel) {
		return nil, fmt.Errorf("%q: %w: want a relative path", rel, ErrEscape)
	}
	var out []string
	for _, c := range strings.Split(filepath.ToSlash(rel), "/") {
		switch c {
		case "", ".":
		case "..":
			return nil, fmt.Errorf("%q: %w", rel, ErrEscape)
		default:
			out = append(out, c)
		}
	}
	return out, nil
}

// walk opens the directory rel beneath root; with mkdir it creates missing
// components with perm. The caller closes the descriptor.
func walk(root, rel string, mkdir bool, perm os.FileMode) (int, error) {
	comps, err := split(rel)
	if err != nil {
		return -1, err
	}
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: root, Err: err}
	}
	for i, c := range comps {
		next, err := unix.Openat(fd, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && mkdir {
			if err = unix.Mkdirat(fd, c, uint32(perm.Perm())); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = unix.Openat(fd, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			}
		}
		unix.Close(fd)
		if err != nil {
			p := filepath.Join(append([]string{root}, comps[:i+1]...)...)
			if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
				if isLink(p) {
					return -1, fmt.Errorf("%s: %w", p, ErrEscape)
				}
			}
			return -1, &os.PathError{Op: "open", Path: p, Err: err}
		}
		fd = next
	}
	return fd, nil
}

func isLink(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode()&os.ModeSymlink != 0
}

// OpenDir opens the directory rel beneath root for reading, following no
// symlink below root. Errors wrap ErrEscape for a link or a climb.
func OpenDir(root, rel string) (*os.File, error) {
	comps, err := split(rel)
	if err != nil {
		return nil, err
	}
	name := filepath.Join(append([]string{root}, comps...)...)
	if len(comps) == 0 {
		fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: root, Err: err}
		}
		return os.NewFile(uintptr(fd), name), nil
	}
	parent, err := walk(root, filepath.Join(comps[:len(comps)-1]...), false, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(parent)
	fd, err := unix.Openat(parent, comps[len(comps)-1], unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if isLink(name) {
			return nil, fmt.Errorf("%s: %w", name, ErrEscape)
		}
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// MkdirAll creates the directory rel beneath root and any missing parents
// with perm, following no symlink below root.
func MkdirAll(root, rel string, perm os.FileMode) error {
	fd, err := walk(root, rel, true, perm)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

var tmpSeq atomic.Uint64

// WriteFile replaces the file rel beneath root with data, mode perm
// (umask not applied), creating missing parent directories with 0750. It
// writes a new file beside it and renames it into place, so a reader sees
// the old or the new content; neither the parents nor the file may be
// symlinks (a symlink at rel is replaced, not followed).
func WriteFile(root, rel string, data []byte, perm os.FileMode) error {
	comps, err := split(rel)
	if err != nil {
		return err
	}
	if len(comps) == 0 {
		return fmt.Errorf("%q: want a file name", rel)
	}
	dir, err := walk(root, filepath.Join(comps[:len(comps)-1]...), true, 0o750)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	base := comps[len(comps)-1]
	tmp := "." + base + ".tmp" + strconv.FormatUint(tmpSeq.Add(1), 36)
	fd, err := unix.Openat(dir, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return &os.PathError{Op: "create", Path: filepath.Join(root, rel), Err: err}
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm.Perm())
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dir, tmp, dir, base)
	}
	if err != nil {
		_ = unix.Unlinkat(dir, tmp, 0)
		return &os.PathError{Op: "write", Path: filepath.Join(root, rel), Err: err}
	}
	return nil
}
