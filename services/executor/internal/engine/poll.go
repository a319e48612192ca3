package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Poller is WASI preview 1's poll_oneoff for one instance, the same for
// every engine, which defines it over its runtime's own so that
//   - a kill ends a module asleep or waiting in it at once (Wake): a
//     runtime's interruption reaches running wasm only;
//   - a subscription on a socket (a listener or a connection the module
//     accepted) waits until the socket is ready, as poll(2) does: runtimes
//     report sockets always ready, so a Go guest's netpoll, which waits in
//     poll_oneoff, spun a core while its server was idle.
//
// What it does, as WASI preview 1 asks: clock subscriptions (realtime or
// monotonic, relative or absolute) wait for their time; fd_read and
// fd_write subscriptions on a socket the engine names (HostFD) wait for
// the socket to be readable or writable; on anything else (stdio, files)
// they are ready at once, as files always are (POSIX), with nbytes 0. It
// returns when one subscription is ready, with an event for each one that
// is. Process and thread CPU-time clocks are waited for as the monotonic
// clock.
//
// A wait of a Mobile guest's that blocks gives the instance's thread back
// for its time (Run.leave) once it has lasted stayFor, where a ppoll(2)
// would block its thread in the kernel: on clocks only, it waits on a Go
// timer and the wake channel; with sockets, on an epoll set of them and
// the wake eventfd, whose own fd Go's netpoller waits on (a nested epoll),
// with the clocks as its deadline. Neither holds a thread.
type Poller struct {
	// wake is an eventfd Wake signals and the waits in the kernel poll;
	// -1 until the first such wait makes it (wakeFD): a guest that leaves
	// its thread to sleep needs none, and 5,000 sleeping instances would
	// hold 5,000 descriptors more of the executor's limited few.
	wake     int
	wakeMu   sync.Mutex // wake's making and Wake's signal
	woken    atomic.Bool
	wakeOnce sync.Once
	wakec    chan struct{} // closed by Wake
	monoZero time.Time
	leave    func() (back func()) // set by Launch before the run; nil: stay
	ep       *os.File             // the epoll set of socket waits; nil: not made yet
	epErr    error                // why it could not be made
	stay     time.Duration        // stayFor; longer in tests, on a loaded machine
	// quick: the last wait on sockets ended within stay; the next waits
	// on the thread first (waitSockets).
	quick bool
}

// NewPoller returns the Poller of an instance whose monotonic clock
// (clock_time_get) reads 0 at monoZero: absolute monotonic deadlines are
// taken against it. Close it when the instance has ended.
func NewPoller(monoZero time.Time) (*Poller, error) {
	return &Poller{wake: -1, wakec: make(chan struct{}), monoZero: monoZero, stay: stayFor}, nil
}

// wakeFD is the wake eventfd, made at its first use, signalled already if
// Wake came first.
func (p *Poller) wakeFD() (int, error) {
	p.wakeMu.Lock()
	defer p.wakeMu.Unlock()
	if p.wake >= 0 {
		return p.wake, nil
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("eventfd: %w", err)
	}
	p.wake = fd
	if p.woken.Load() {
		signal(fd)
	}
	return fd, nil
}

func signal(eventfd int) {
	unix.Write(eventfd, []byte{1, 0, 0, 0, 0, 0, 0, 0}) // eventfd: add 1
}

// Wake ends a wait, now or to come, at once: the instance is being
// killed. Safe from any goroutine.
func (p *Poller) Wake() {
	p.woken.Store(true)
	p.wakeOnce.Do(func() { close(p.wakec) })
	p.wakeMu.Lock()
	if p.wake >= 0 {
		signal(p.wake)
	}
	p.wakeMu.Unlock()
}

// Woken reports whether Wake was called.
func (p *Poller) Woken() bool { return p.woken.Load() }

// Close frees the eventfd; no wait may be under way or come.
func (p *Poller) Close() {
	if p.ep != nil {
		p.ep.Close()
	}
	if p.wake >= 0 {
		unix.Close(p.wake)
	}
}

// HostFD names the host socket behind a module's fd, for an fd
// subscription; ok false: not a socket the engine knows, ready at once.
type HostFD func(fd uint32) (host int, ok bool)

// WASI errnos poll_oneoff returns.
const (
	ErrnoBadf  = 8
	ErrnoFault = 21
	ErrnoIntr  = 27
	ErrnoInval = 28
)

// PollOneoff is poll_oneoff over mem, the module's linear memory: nsubs
// subscriptions at in, events written at out, their number at nevents.
// It returns the WASI errno, and killed when Wake ended the wait (the
// engine then stops the module; no events are written).
func (p *Poller) PollOneoff(mem []byte, in, out, nsubs, nevents uint32, host HostFD) (errno uint16, killed bool) {
	const (
		subSize, eventSize          = 48, 32
		tagClock, tagRead, tagWrite = 0, 1, 2
		hangup                      = 1 // eventrwflags.fd_readwrite_hangup
	)
	inside := func(ptr uint32, n uint64) bool { return uint64(ptr)+n <= uint64(len(mem)) }
	if nsubs == 0 {
		return ErrnoInval, false
	}
	if !inside(in, uint64(nsubs)*subSize) || !inside(out, uint64(nsubs)*eventSize) || !inside(nevents, 4) {
		return ErrnoFault, false
	}
	type clock struct {
		userdata uint64
		at       time.Time
	}
	type fdsub struct {
		userdata uint64
		tag      uint8
		host     int // -1: not a socket, ready at once
	}
	var clocks []clock
	var fds []fdsub
	now := time.Now()
	// pfds[0] is the wake eventfd's, set once a wait needs it.
	pfds := []unix.PollFd{{Fd: -1, Events: unix.POLLIN}}
	at := now // ready at once, unless all are sockets or clocks to wait for
	immediate := false
	for k := range uint64(nsubs) {
		s := mem[uint64(in)+k*subSize:]
		userdata := binary.LittleEndian.Uint64(s[0:])
		switch tag := s[8]; tag {
		case tagClock:
			id := binary.LittleEndian.Uint32(s[16:])
			timeout := time.Duration(min(binary.LittleEndian.Uint64(s[24:]), math.MaxInt64))
			abs := binary.LittleEndian.Uint16(s[40:])&1 != 0
			var t time.Time
			switch {
			case !abs:
				t = now.Add(timeout)
			case id == 0: // realtime
				t = time.Unix(0, int64(timeout))
			default:
				t = p.monoZero.Add(timeout)
			}
			clocks = append(clocks, clock{userdata, t})
		case tagRead, tagWrite:
			f := fdsub{userdata: userdata, tag: tag, host: -1}
			if host != nil {
				if h, ok := host(binary.LittleEndian.Uint32(s[16:])); ok {
					f.host = h
					ev := int16(unix.POLLIN)
					if tag == tagWrite {
						ev = unix.POLLOUT
					}
					pfds = append(pfds, unix.PollFd{Fd: int32(h), Events: ev})
				}
			}
			if f.host < 0 {
				immediate = true
			}
			fds = append(fds, f)
		default:
			return ErrnoInval, false
		}
	}
	wait := time.Duration(-1) // until a socket is ready
	if !immediate && len(clocks) > 0 {
		at = clocks[0].at
		for _, cl := range clocks[1:] {
			if cl.at.Before(at) {
				at = cl.at
			}
		}
	}
	if immediate || len(clocks) > 0 {
		wait = max(time.Until(at), 0)
	}
	for {
		if p.wait(pfds, wait) {
			return 0, true
		}
		n := uint32(0)
		event := func(userdata uint64, tag uint8, flags uint16) {
			e := mem[uint64(out)+uint64(n)*eventSize:][:eventSize]
			clear(e)
			binary.LittleEndian.PutUint64(e[0:], userdata)
			e[10] = tag
			binary.LittleEndian.PutUint16(e[24:], flags)
			n++
		}
		j := 1 // pfds[j] is the next socket's
		for _, f := range fds {
			if f.host < 0 {
				event(f.userdata, f.tag, 0)
				continue
			}
			re := pfds[j].Revents
			j++
			switch {
			case re&unix.POLLNVAL != 0:
				e := mem[uint64(out)+uint64(n)*eventSize:]
				event(f.userdata, f.tag, 0)
				binary.LittleEndian.PutUint16(e[8:], ErrnoBadf)
			case re&unix.POLLHUP != 0:
				event(f.userdata, f.tag, hangup)
			case re != 0:
				event(f.userdata, f.tag, 0)
			}
		}
		now := time.Now()
		for _, cl := range clocks {
			if !cl.at.After(now) {
				event(cl.userdata, tagClock, 0)
			}
		}
		if n > 0 {
			binary.LittleEndian.PutUint32(mem[nevents:], n)
			return 0, false
		}
		// Woken early (a signal), or a socket's readiness went: wait on.
		if wait >= 0 {
			wait = max(time.Until(at), 0)
		}
	}
}

// Sleep blocks the thread for d, or until Wake, and reports whether Wake
// ended it.
func (p *Poller) Sleep(d time.Duration) bool {
	return p.poll([]unix.PollFd{{Fd: -1, Events: unix.POLLIN}}, max(d, 0))
}

// stayFor is how long a guest that may leave its thread waits on it
// first: a wait that ends sooner does not leave. Leaving costs a hand-over
// of the instance between threads each way and, under a CPU limit, the
// thread's move out of its cgroup and another's into a new one, whose
// quota starts afresh: a module that computed and slept a millisecond in
// turn escaped its limit (TestLimitAcrossSleeps); a socket ready within
// it wakes the thread directly rather than through Go's netpoller. Below
// the CPU limit's period (cpulimit, 10 ms); an idle server leaves its
// thread this long after its last request.
const stayFor = 2 * time.Millisecond

// wait is poll, or, for a guest that may leave its thread, a wait that
// holds none once it has lasted stayFor.
func (p *Poller) wait(fds []unix.PollFd, d time.Duration) bool {
	switch {
	case d == 0 || p.leave == nil:
		return p.poll(fds, d)
	case len(fds) > 1:
		return p.waitSockets(fds, d)
	case p.woken.Load():
		return true
	case d <= p.stay && d > 0:
		// On a Go timer rather than in the kernel: no eventfd, which a
		// sleeping instance need not hold (Poller.wake).
		return p.await(d)
	}
	back := p.leave()
	defer back()
	return p.await(d)
}

// await waits for d (d < 0: no bound) or Wake, on a Go timer and the wake
// channel, and reports whether Wake ended it.
func (p *Poller) await(d time.Duration) bool {
	if d < 0 {
		<-p.wakec
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return false
	case <-p.wakec:
		return true
	}
}

// waitSockets is poll away from the thread (see Poller), after up to
// p.stay on it for a server that has just served, or on it if the epoll
// set cannot be had.
func (p *Poller) waitSockets(fds []unix.PollFd, d time.Duration) bool {
	// A server that has just served waits on its thread first (stayFor);
	// one that has not (its first wait, or after an idle spell) gives its
	// thread back at once.
	stay := time.Duration(0)
	if p.quick {
		stay = p.stay
		if d >= 0 {
			stay = min(d, p.stay)
		}
	}
	t0 := time.Now()
	if p.poll(fds, stay) {
		return true
	}
	for _, f := range fds[1:] {
		if f.Revents != 0 {
			p.quick = true
			return false // ready
		}
	}
	if d >= 0 {
		if d -= time.Since(t0); d <= 0 {
			return false // the time is up
		}
	}
	defer func() { p.quick = time.Since(t0) < p.stay }()
	ep, err := p.epoll()
	if err != nil {
		return p.poll(fds, d)
	}
	// POLLIN and POLLOUT are EPOLLIN and EPOLLOUT; hang-ups and errors
	// are reported without asking. A module may wait on one socket twice.
	events := map[int32]uint32{}
	for _, f := range fds[1:] {
		events[f.Fd] |= uint32(f.Events)
	}
	var added []int
	defer func() {
		for _, fd := range added {
			unix.EpollCtl(int(ep.Fd()), unix.EPOLL_CTL_DEL, fd, nil)
		}
	}()
	for fd, ev := range events {
		if err := unix.EpollCtl(int(ep.Fd()), unix.EPOLL_CTL_ADD, int(fd), &unix.EpollEvent{Events: ev, Fd: fd}); err != nil {
			return p.poll(fds, d) // a closed fd: ppoll reports it
		}
		added = append(added, int(fd))
	}
	var deadline time.Time
	if d > 0 {
		deadline = time.Now().Add(d)
	}
	rc, err := ep.SyscallConn()
	if err == nil {
		err = ep.SetReadDeadline(deadline) // fails if the netpoller does not have it
	}
	if err != nil {
		p.epErr = err
		return p.poll(fds, d)
	}
	back := p.leave()
	var buf [1]unix.EpollEvent
	err = rc.Read(func(fd uintptr) bool {
		n, _ := unix.EpollWait(int(fd), buf[:], 0)
		return n > 0
	})
	back()
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		p.epErr = err // the next waits are ppoll's
	}
	return p.poll(fds, 0)
}

// epoll is the epoll set of socket waits, with the wake eventfd in it,
// registered with Go's netpoller; made at the first wait on a socket.
func (p *Poller) epoll() (*os.File, error) {
	if p.ep != nil || p.epErr != nil {
		return p.ep, p.epErr
	}
	wake, err := p.wakeFD()
	if err != nil {
		p.epErr = err
		return nil, err
	}
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		p.epErr = err
		return nil, err
	}
	if err := unix.EpollCtl(fd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(fd)
		p.epErr = err
		return nil, err
	}
	unix.SetNonblock(fd, true) // so that os.NewFile hands it to the netpoller
	p.ep = os.NewFile(uintptr(fd), "epoll")
	return p.ep, nil
}

// poll waits in ppoll(2) for fds[0], the eventfd, or another of fds to be
// ready, for at most d (d < 0: no bound), retrying on EINTR, and reports
// whether Wake ended it. The thread waits in the kernel, as a runtime's
// own sleep does: cheaper than a Go timer and channel. fds[0] is set to
// the eventfd, made now if this is the instance's first wait that blocks;
// a look (d 0) needs none.
func (p *Poller) poll(fds []unix.PollFd, d time.Duration) bool {
	if p.woken.Load() {
		return true
	}
	if d != 0 {
		fd, err := p.wakeFD()
		if err != nil {
			// Out of descriptors: wait on, woken by the channel, with
			// the thread blocked in the Go runtime instead.
			return p.await(d)
		}
		fds[0].Fd = int32(fd)
	}
	deadline := time.Now().Add(d)
	for {
		for i := range fds {
			fds[i].Revents = 0
		}
		var ts *unix.Timespec
		if d >= 0 {
			t := unix.NsecToTimespec(int64(d))
			ts = &t
		}
		n, err := unix.Ppoll(fds, ts, nil)
		switch {
		case n > 0:
			return fds[0].Revents != 0 || p.woken.Load()
		case err == nil:
			return false // the time is up
		case err != unix.EINTR:
			// Not expected of fds the instance holds open; the wait
			// still lasts its time.
			if d >= 0 {
				time.Sleep(time.Until(deadline))
			} else {
				time.Sleep(10 * time.Millisecond) // not a spin
			}
			return p.woken.Load()
		}
		if d >= 0 {
			if d = time.Until(deadline); d <= 0 {
				return false
			}
		}
	}
}
