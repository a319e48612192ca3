package wasmtime

import (
	"encoding/binary"
	"math"
	"time"

	wt "github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"
)

// pollOneoff is WASI's poll_oneoff, defined over the one DefineWasi
// provides so that a kill ends a module asleep in it at once. Epoch
// interruption reaches wasm code only: a module asleep in wasmtime's own
// poll_oneoff (a Go time.Sleep, a C sleep) kept its thread, store and
// Engine until its sleep returned, however long after the kill.
//
// What it does, as WASI preview 1 asks and wasmtime's does for the files a
// module here can have (stdio, preopened files; no sockets): clock
// subscriptions (realtime or monotonic, relative or absolute) wait for
// their time; fd_read and fd_write subscriptions are ready at once, as
// files always are (POSIX), with nbytes 0. It returns when one
// subscription is ready, with an event for each one that is; a kill ends
// the wait with a trap, which the instance reports as Killed.
//
// The monotonic clock a module reads (clock_time_get) counts from the
// creation of its WASI context; setup records that moment (wasiStart),
// against which absolute monotonic deadlines are taken, within
// microseconds. Process and thread CPU-time clocks are waited for as the
// monotonic clock.
func (i *instance) pollOneoff(c *wt.Caller, in, out, nsubs, nevents int32) (int32, *wt.Trap) {
	const (
		subSize, eventSize          = 48, 32
		tagClock, tagRead, tagWrite = 0, 1, 2
		errnoFault, errnoInval      = 21, 28
	)
	ext := c.GetExport("memory")
	if ext == nil || ext.Memory() == nil {
		return errnoFault, nil
	}
	mem := ext.Memory().UnsafeData(c)
	inside := func(ptr, n int64) bool { return ptr >= 0 && n >= 0 && ptr+n <= int64(len(mem)) }
	if nsubs <= 0 {
		return errnoInval, nil
	}
	if !inside(int64(in), int64(nsubs)*subSize) || !inside(int64(out), int64(nsubs)*eventSize) || !inside(int64(nevents), 4) {
		return errnoFault, nil
	}
	type clock struct {
		userdata uint64
		at       time.Time
	}
	var clocks []clock
	var fds [][2]uint64 // userdata, tag
	now := time.Now()
	for k := range int64(nsubs) {
		s := mem[int64(in)+k*subSize:]
		userdata := binary.LittleEndian.Uint64(s[0:])
		switch tag := s[8]; tag {
		case tagClock:
			id := binary.LittleEndian.Uint32(s[16:])
			timeout := time.Duration(min(binary.LittleEndian.Uint64(s[24:]), math.MaxInt64))
			abs := binary.LittleEndian.Uint16(s[40:])&1 != 0
			var at time.Time
			switch {
			case !abs:
				at = now.Add(timeout)
			case id == 0: // realtime
				at = time.Unix(0, int64(timeout))
			default:
				at = i.wasiStart.Add(timeout)
			}
			clocks = append(clocks, clock{userdata, at})
		case tagRead, tagWrite:
			fds = append(fds, [2]uint64{userdata, uint64(tag)})
		default:
			return errnoInval, nil
		}
	}
	if len(fds) == 0 {
		first := clocks[0].at
		for _, cl := range clocks[1:] {
			if cl.at.Before(first) {
				first = cl.at
			}
		}
		if d := time.Until(first); d > 0 && i.sleep(d) {
			return 0, wt.NewTrap("killed while asleep in poll_oneoff")
		}
	}
	n := int64(0)
	event := func(userdata uint64, tag uint8) {
		e := mem[int64(out)+n*eventSize:][:eventSize]
		clear(e)
		binary.LittleEndian.PutUint64(e[0:], userdata)
		e[10] = tag
		n++
	}
	for _, fd := range fds {
		event(fd[0], uint8(fd[1]))
	}
	now = time.Now()
	for _, cl := range clocks {
		if !cl.at.After(now) {
			event(cl.userdata, tagClock)
		}
	}
	binary.LittleEndian.PutUint32(mem[nevents:], uint32(n))
	return 0, nil
}

// sleep blocks the thread for d, or until Kill, and reports whether Kill
// ended it. The thread waits in ppoll on the instance's eventfd (killFd),
// which the kernel wakes as it does wasmtime's own sleep: cheaper than a
// Go timer and channel, woken through the Go scheduler.
// BenchmarkEngine/Sleep and BenchmarkNativeSleep compare it with
// wasmtime's own.
func (i *instance) sleep(d time.Duration) bool {
	deadline := time.Now().Add(d)
	fds := []unix.PollFd{{Fd: int32(i.killFd), Events: unix.POLLIN}}
	for {
		ts := unix.NsecToTimespec(int64(d))
		n, err := unix.Ppoll(fds, &ts, nil)
		switch {
		case n > 0:
			return true
		case err == nil:
			return false // the time is up
		case err != unix.EINTR:
			// Not expected of an eventfd the instance holds open; the
			// sleep still lasts its time.
			time.Sleep(time.Until(deadline))
			return i.interrupted.Load()
		}
		if d = time.Until(deadline); d <= 0 {
			return false
		}
	}
}
