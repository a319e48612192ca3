// Package cpulimit holds the OS thread an instance runs on to a share of
// one core, with the kernel's CFS bandwidth control in a cgroup the
// executor is given. It owns the child cgroups it creates (one per limited
// instance, wasmlet-<tid>) under that cgroup, and nothing else.
//
// The kernel does it because neither engine can pause running wasm and
// resume it (wasmtime-go exposes no epoch-deadline callback and no async
// fuel; wazero's only interruption ends the instance), while an instance's
// wasm does run on one locked thread, which a cgroup can hold to a quota.
// An instance that moves between threads (wazero's, as they sleep) has
// each thread held in turn: released before it leaves one, Limit again on
// the next (package engine, Run).
// Both cgroup v1 (a cpu hierarchy directory) and v2 (the executor's own
// cgroup, threaded children) are handled; see New.
//
// Usage:
//
//	l, err := cpulimit.New("/sys/fs/cgroup/cpu/wasmlet")
//	runtime.LockOSThread() // on the goroutine that runs the wasm
//	release, err := l.Limit(250)
//	defer release()
package cpulimit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

const (
	period   = 10 * time.Millisecond
	minQuota = time.Millisecond
)

// Limiter makes per-thread CPU limits under one cgroup. Safe for
// concurrent use.
type Limiter struct {
	dir string
	v2  bool
}

// New returns a Limiter using the cgroup directory dir, which must exist
// and be writable. cgroup v1: dir is a directory in the cpu hierarchy;
// each child gets cpu.cfs_period_us and cpu.cfs_quota_us, and the thread
// goes to its tasks file. cgroup v2: dir must be the executor's own
// cgroup, with cpu in its cgroup.subtree_control; each child is made
// "threaded", gets cpu.max, and the thread goes to cgroup.threads.
func New(dir string) (*Limiter, error) {
	if dir == "" {
		return nil, errors.New("cpulimit: cgroup directory is required")
	}
	l := &Limiter{dir: dir}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.threads")); err == nil {
		l.v2 = true
	} else if _, err := os.Stat(filepath.Join(dir, "cpu.cfs_quota_us")); err != nil {
		return nil, fmt.Errorf("cpulimit: %s is not a cgroup of the cpu controller (no cgroup.threads, no cpu.cfs_quota_us); give a directory of the cpu hierarchy (v1) or the executor's own cgroup with cpu enabled for its children (v2)", dir)
	}
	// A probe child, so that a directory we cannot use fails here rather
	// than at the first limited instance.
	probe := filepath.Join(dir, fmt.Sprintf("wasmlet-probe-%d", os.Getpid()))
	if err := os.Mkdir(probe, 0o755); err != nil {
		return nil, fmt.Errorf("cpulimit: create a child cgroup in %s: %w; run the executor with write access to it", dir, err)
	}
	os.Remove(probe)
	return l, nil
}

// Slice returns the CFS period and quota for millis. The period is 10 ms,
// so that a throttled thread waits at most that for its next slice (a kill
// must land soon); the kernel's smallest quota is 1 ms, so below 100
// millicores the period grows instead (10m: 1 ms per 100 ms).
func Slice(millis int64) (p, quota time.Duration) {
	p = period
	quota = time.Duration(millis) * p / 1000
	if quota < minQuota {
		quota = minQuota
		p = minQuota * 1000 / time.Duration(millis)
	}
	return p, quota
}

// Limit holds the calling thread, which must be locked to its goroutine
// (runtime.LockOSThread), to millis thousandths of one core. release lifts
// the limit and removes the child cgroup; it may be called from any
// goroutine, more than once. A thread that exits leaves its cgroup.
func (l *Limiter) Limit(millis int64) (release func(), err error) {
	if millis <= 0 {
		return func() {}, nil
	}
	tid := syscall.Gettid()
	child := filepath.Join(l.dir, fmt.Sprintf("wasmlet-%d", tid))
	if err := os.Mkdir(child, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("cpulimit: create cgroup %s: %w", child, err)
	}
	p, q := Slice(millis)
	us := func(d time.Duration) string { return strconv.FormatInt(d.Microseconds(), 10) }
	var writes [][2]string
	if l.v2 {
		writes = [][2]string{{"cgroup.type", "threaded"}, {"cpu.max", us(q) + " " + us(p)}, {"cgroup.threads", strconv.Itoa(tid)}}
	} else {
		writes = [][2]string{{"cpu.cfs_period_us", us(p)}, {"cpu.cfs_quota_us", us(q)}, {"tasks", strconv.Itoa(tid)}}
	}
	for _, w := range writes {
		if err := os.WriteFile(filepath.Join(child, w[0]), []byte(w[1]), 0); err != nil {
			os.Remove(child)
			return nil, fmt.Errorf("cpulimit: limit thread %d to %dm: write %s: %w", tid, millis, w[0], err)
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			// Back to the parent; fails harmlessly if the thread has exited.
			tasks := "tasks"
			if l.v2 {
				tasks = "cgroup.threads"
			}
			os.WriteFile(filepath.Join(l.dir, tasks), []byte(strconv.Itoa(tid)), 0)
			os.Remove(child)
		})
	}, nil
}

// Dir is the cgroup directory the limiter makes its children in.
func (l *Limiter) Dir() string { return l.dir }
