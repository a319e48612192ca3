//go:build linux

// Package binpages lets a long-running service drop, once its start-up is
// over, the pages of its own binary that it has mapped (and so counts in
// its resident set) but no longer uses: package initialisers, flag
// parsing, TLS and client set-up, the first informer sync. Most of an
// idle wasmlet process's VmRSS was such clean file pages (RssFile), and
// more than it touched: the kernel maps a binary's page cache in large
// folios, up to 2 MiB at a time.
//
// Drop zaps the process's mappings of the read-only segments of its
// executable (MADV_DONTNEED) and marks them MADV_NOHUGEPAGE (no 2 MiB
// mappings) and MADV_RANDOM (no read-around), so that only what the
// process touches again is mapped back from the page cache (a minor fault,
// no disk read while the page cache holds the binary). DropAfter also
// returns the heap's start-up garbage to the OS (debug.FreeOSMemory). It only touches read-only mappings of the executable with
// no private (copied-on-write) pages, whose contents are the file's: what
// it drops is lost to nobody. It owns nothing and keeps no state.
//
// The kernel maps a touched page cache folio whole (6.18 with ext4 does),
// so what counts is how many folios the process touches, and work trails
// readiness (the first lease, status and announcements): hence Settle.
//
//	go binpages.DropAfter(ctx, binpages.Settle, log) // once ready
package binpages

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Settle is how long after readiness a service drops its start-up pages.
const Settle = 10 * time.Second

// DropAfter frees the heap's garbage and calls Drop once d has passed, unless ctx ends first, and logs
// what it dropped (at debug) or why it could not (at warn).
func DropAfter(ctx context.Context, d time.Duration, log *slog.Logger) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	debug.FreeOSMemory()
	n, err := Drop()
	if err != nil {
		log.Warn("could not drop the binary's start-up pages", "err", err)
		return
	}
	log.Debug("dropped the binary's start-up pages", "mappings", n)
}

// Drop zaps this process's mappings of its executable's read-only
// segments, as the package doc says, and returns how many mappings it
// zapped.
func Drop() (int, error) {
	var exe syscall.Stat_t
	if err := syscall.Stat("/proc/self/exe", &exe); err != nil {
		return 0, fmt.Errorf("stat /proc/self/exe: %w", err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	ms, err := readonlyMappings(f, exe.Dev, exe.Ino)
	if err != nil {
		return 0, fmt.Errorf("/proc/self/smaps: %w", err)
	}
	for _, m := range ms {
		for _, advice := range []uintptr{syscall.MADV_NOHUGEPAGE, syscall.MADV_RANDOM, syscall.MADV_DONTNEED} {
			if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, m.start, m.end-m.start, advice); e != 0 {
				return 0, fmt.Errorf("madvise %#x-%#x %d: %w", m.start, m.end, advice, e)
			}
		}
	}
	return len(ms), nil
}

type mapping struct{ start, end uintptr }

// readonlyMappings reads smaps r and returns the mappings of the file
// (dev, ino) that are private, not writable, and hold no anonymous
// (copied) pages.
func readonlyMappings(r io.Reader, dev, ino uint64) ([]mapping, error) {
	var out []mapping
	var cur *mapping
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && len(f[1]) == 4 {
			// A mapping's header: range perms offset dev inode [path].
			cur = nil
			m, ok := parseHeader(f, dev, ino)
			if ok {
				out = append(out, m)
				cur = &out[len(out)-1]
			}
			continue
		}
		if cur != nil && len(f) >= 2 && f[0] == "Anonymous:" && f[1] != "0" {
			out = out[:len(out)-1] // has private pages: leave it
			cur = nil
		}
	}
	return out, sc.Err()
}

func parseHeader(f []string, dev, ino uint64) (mapping, bool) {
	lo, hi, _ := strings.Cut(f[0], "-")
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	major, minor, _ := strings.Cut(f[3], ":")
	maj, err3 := strconv.ParseUint(major, 16, 32)
	min, err4 := strconv.ParseUint(minor, 16, 32)
	n, err5 := strconv.ParseUint(f[4], 10, 64)
	perms := f[1]
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil || err5 != nil ||
		n != ino || mkdev(maj, min) != dev || perms[0] != 'r' || perms[1] != '-' || perms[3] != 'p' {
		return mapping{}, false
	}
	return mapping{uintptr(start), uintptr(end)}, true
}

// mkdev is the kernel's encoding of a device number, as stat reports it.
func mkdev(major, minor uint64) uint64 {
	return (major&0xfff)<<8 | (major&^0xfff)<<32 | (minor & 0xff) | (minor&^0xff)<<12
}
