// Package handoff hands listening sockets to an executor for an instance
// it is about to create (instances.Spec.HandedListeners): the node agent,
// which may enter a pod's network namespace, opens them there; the
// executor, which may not (an unprivileged user, no setns), receives them
// over its listener socket (--listener-socket) and hands them to the
// module. It owns the protocol on that socket, both ends of it; it must
// not keep sockets for later (the executor's store does) nor open any.
//
// One connection carries one request: a 4-byte big-endian length, a JSON
// header {"id", "names"} and, in the same sendmsg, the sockets as
// SCM_RIGHTS in the order of names. The executor answers with a 4-byte
// length and a message: empty for ok, else what it refused.
//
// Usage, by the node agent:
//
//	l := ... // a *net.TCPListener opened inside the pod's namespace
//	f, _ := l.File()
//	err := handoff.Send(ctx, listenerSocket, id, []handoff.Handed{{Name: lis.FDName(), File: f}})
//	f.Close(); l.Close() // the executor holds its own copies
//	in, err := rt.Create(ctx, id, spec /* HandedListeners: true */, true)
package handoff

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MaxListeners bounds the sockets of one request.
const MaxListeners = 64

// maxHeader bounds a request's header: an id and MaxListeners names of at
// most 255 bytes each, quoted.
const maxHeader = 32 << 10

// defaultTimeout bounds a Send whose context has no deadline, and a
// request the executor reads.
const defaultTimeout = 10 * time.Second

// ErrRefused: the executor refused what was handed to it (its message
// says why); the sockets were not kept.
var ErrRefused = errors.New("listener handoff refused")

// Handed is one listening socket handed over.
type Handed struct {
	// Name is the listener's instances.Listener.FDName().
	Name string
	// File is a listening TCP socket. Send does not close it.
	File *os.File
}

type header struct {
	ID    string   `json:"id"`
	Names []string `json:"names"`
}

// Send hands the listening sockets for instance id to the executor serving
// socket (its --listener-socket), before Create is called with
// Spec.HandedListeners. A second Send for the same id replaces the first
// (whose sockets the executor closes). The executor keeps them for a short
// while only (two minutes) if no Create takes them. ctx's deadline bounds
// the whole exchange (10 s without one). Errors wrap ErrRefused when the
// executor answered no.
func Send(ctx context.Context, socket, id string, listeners []Handed) error {
	if id == "" || len(id) > 253 {
		return fmt.Errorf("hand listeners over: instance id must be 1 to 253 characters")
	}
	if len(listeners) == 0 || len(listeners) > MaxListeners {
		return fmt.Errorf("hand listeners for %s over: %d listeners; want 1 to %d", id, len(listeners), MaxListeners)
	}
	h := header{ID: id}
	seen := map[string]bool{}
	for _, l := range listeners {
		if l.Name == "" || l.File == nil || seen[l.Name] {
			return fmt.Errorf("hand listeners for %s over: each needs a name, unique, and a file (%q)", id, l.Name)
		}
		seen[l.Name] = true
		h.Names = append(h.Names, l.Name)
	}
	// Copies of the descriptors: File.Fd would put the socket, which the
	// executor shares, in blocking mode.
	fds := make([]int, 0, len(listeners))
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, l := range listeners {
		fd, err := dupOf(l.File)
		if err != nil {
			return fmt.Errorf("hand listener %q for %s over: %w", l.Name, id, err)
		}
		fds = append(fds, fd)
	}
	msg, err := frame(h)
	if err != nil {
		return err
	}

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultTimeout)
		defer cancel()
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("hand listeners for %s over: %w (is the executor started with --listener-socket %s?)", id, err, socket)
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	stop := context.AfterFunc(ctx, func() { uc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		uc.SetDeadline(dl)
	}
	n, oobn, err := uc.WriteMsgUnix(msg, unix.UnixRights(fds...), nil)
	if err == nil && n < len(msg) {
		_, err = uc.Write(msg[n:])
	}
	if err == nil && oobn == 0 {
		err = errors.New("the sockets were not sent")
	}
	if err != nil {
		return fmt.Errorf("hand listeners for %s over to %s: %w", id, socket, ctxErr(ctx, err))
	}
	answer, err := readFrame(uc, 4<<10)
	if err != nil {
		return fmt.Errorf("hand listeners for %s over to %s: no answer: %w", id, socket, ctxErr(ctx, err))
	}
	if len(answer) > 0 {
		return fmt.Errorf("%w: executor at %s: %s", ErrRefused, socket, answer)
	}
	return nil
}

// ctxErr is err, or the context's end that caused it.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	var ne net.Error
	if dl, ok := ctx.Deadline(); ok && errors.As(err, &ne) && ne.Timeout() && !time.Now().Before(dl) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}

// dupOf is a close-on-exec copy of f's descriptor.
func dupOf(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(h uintptr) { fd, derr = unix.FcntlInt(h, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}

func frame(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...), nil
}

// readFrame reads a length and that many bytes, at most limit.
func readFrame(r io.Reader, limit int) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > uint32(limit) {
		return nil, fmt.Errorf("a frame of %d bytes; at most %d", size, limit)
	}
	b := make([]byte, size)
	_, err := io.ReadFull(r, b)
	return b, err
}

// Request is what one Send handed over.
type Request struct {
	ID        string
	Listeners []Handed
}

// Close closes the request's sockets.
func (r Request) Close() {
	for _, l := range r.Listeners {
		l.File.Close()
	}
}

// Receive reads one request from c, a connection accepted on the
// executor's listener socket, within 10 s. Every socket must be a
// listening TCP socket, one per name; on any error every descriptor
// received is closed.
func Receive(c *net.UnixConn) (Request, error) {
	c.SetReadDeadline(time.Now().Add(defaultTimeout))
	var fds []int
	fail := func(err error) (Request, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return Request{}, err
	}
	// The descriptors ride with the first bytes; a header split across
	// reads is read on, and descriptors are taken from every read.
	buf := make([]byte, 0, 4+maxHeader)
	oob := make([]byte, unix.CmsgSpace(4*(MaxListeners+1)))
	for {
		want := 4
		if len(buf) >= 4 {
			size := binary.BigEndian.Uint32(buf[:4])
			if size > maxHeader {
				return fail(fmt.Errorf("a header of %d bytes; at most %d", size, maxHeader))
			}
			want = 4 + int(size)
		}
		if len(buf) >= want {
			if len(buf) > want {
				return fail(errors.New("bytes after the header"))
			}
			break
		}
		n, oobn, flags, _, err := c.ReadMsgUnix(buf[len(buf):want], oob)
		got, perr := parseRights(oob[:oobn])
		fds = append(fds, got...)
		switch {
		case perr != nil:
			return fail(perr)
		case flags&unix.MSG_CTRUNC != 0 || len(fds) > MaxListeners:
			return fail(fmt.Errorf("more than %d sockets", MaxListeners))
		case err != nil:
			return fail(fmt.Errorf("read the request: %w", err))
		case n == 0:
			return fail(io.ErrUnexpectedEOF)
		}
		buf = buf[:len(buf)+n]
	}
	var h header
	if err := json.Unmarshal(buf[4:], &h); err != nil {
		return fail(fmt.Errorf("header: %w", err))
	}
	switch {
	case h.ID == "" || len(h.ID) > 253:
		return fail(errors.New("the instance id must be 1 to 253 characters"))
	case len(h.Names) != len(fds):
		return fail(fmt.Errorf("%d names for %d sockets", len(h.Names), len(fds)))
	case len(fds) == 0:
		return fail(errors.New("no sockets"))
	}
	seen := map[string]bool{}
	for i, fd := range fds {
		name := h.Names[i]
		if name == "" || len(name) > 255 || seen[name] {
			return fail(fmt.Errorf("listener name %q: empty, too long or given twice", name))
		}
		seen[name] = true
		if err := checkListening(fd); err != nil {
			return fail(fmt.Errorf("listener %q: %w", name, err))
		}
	}
	r := Request{ID: h.ID}
	for i, fd := range fds {
		r.Listeners = append(r.Listeners, Handed{Name: h.Names[i], File: os.NewFile(uintptr(fd), h.Names[i])})
	}
	return r, nil
}

// parseRights gives the descriptors of the SCM_RIGHTS messages in oob.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var fds []int
	var bad error
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			bad = fmt.Errorf("control message: %w", err)
			continue
		}
		fds = append(fds, got...)
	}
	if bad != nil {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, bad
	}
	return fds, nil
}

// checkListening refuses a descriptor that is not a listening TCP socket
// (IPv4 or IPv6; MPTCP, which Go's net.Listen makes where the kernel has
// it, is TCP to its peers).
func checkListening(fd int) error {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		if errors.Is(err, syscall.ENOTSOCK) {
			return errors.New("not a socket")
		}
		return fmt.Errorf("socket type: %w", err)
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("socket domain: %w", err)
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return fmt.Errorf("socket protocol: %w", err)
	}
	if typ != unix.SOCK_STREAM || domain != unix.AF_INET && domain != unix.AF_INET6 || proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_MPTCP {
		return errors.New("not a TCP socket")
	}
	listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return fmt.Errorf("socket state: %w", err)
	}
	if listening != 1 {
		return errors.New("not listening (call listen before handing it over)")
	}
	return nil
}

// Answer tells the sender of a request how it went: nil is ok.
func Answer(c *net.UnixConn, err error) error {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	c.SetWriteDeadline(time.Now().Add(defaultTimeout))
	_, werr := c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(msg))), msg...))
	return werr
}
