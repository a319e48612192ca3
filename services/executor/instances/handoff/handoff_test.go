package handoff

import (
	"encoding/binary"
	"encoding/json"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// pair is a connected pair of unix stream sockets: the sender's end and
// the executor's.
func pair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// listenerFD is a copy of a fresh loopback listener's descriptor.
func listenerFD(t *testing.T) (int, string) {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := dupOf(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, l.Addr().String()
}

func request(t *testing.T, id string, names ...string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"id": id, "names": names})
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

// open reports whether something accepts connections at addr.
func open(addr string) bool {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// TestReceiveSplitHeader: the sockets ride with the first bytes; the rest
// of the header may come in later reads.
func TestReceiveSplitHeader(t *testing.T) {
	send, recv := pair(t)
	fd, addr := listenerFD(t)
	h := request(t, "i1", "http")
	if _, _, err := send.WriteMsgUnix(h[:6], unix.UnixRights(fd), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := send.Write(h[6:]); err != nil {
		t.Fatal(err)
	}
	r, err := Receive(recv)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.ID != "i1" || len(r.Listeners) != 1 || r.Listeners[0].Name != "http" {
		t.Fatalf("received %+v", r)
	}
	l, err := net.FileListener(r.Listeners[0].File)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Addr().String() != addr {
		t.Errorf("received %s, sent %s", l.Addr(), addr)
	}
}

// TestReceiveRefusesAndCloses: a request that is wrong in any way is
// refused and every descriptor it brought is closed.
func TestReceiveRefusesAndCloses(t *testing.T) {
	for name, c := range map[string]struct {
		names []string
		n     int // sockets sent
		want  string
	}{
		"fewer names":  {[]string{"a"}, 2, "1 names for 2 sockets"},
		"more names":   {[]string{"a", "b"}, 1, "2 names for 1 sockets"},
		"no sockets":   {nil, 0, "no sockets"},
		"name twice":   {[]string{"a", "a"}, 2, "given twice"},
		"empty name":   {[]string{""}, 1, "empty"},
		"too many":     {nil, MaxListeners + 1, "more than 64"},
		"many, in two": {nil, -1, "more than 64"},
	} {
		t.Run(name, func(t *testing.T) {
			send, recv := pair(t)
			n := c.n
			if n < 0 {
				n = MaxListeners + 1
			}
			var fds []int
			var addrs []string
			for range n {
				fd, addr := listenerFD(t)
				fds, addrs = append(fds, fd), append(addrs, addr)
			}
			names := c.names
			if names == nil && n > 0 {
				for i := range n {
					names = append(names, "l"+string(rune('a'+i%26))+string(rune('a'+i/26)))
				}
			}
			h := request(t, "i1", names...)
			if c.n < 0 { // two sendmsgs of half the sockets each
				if _, _, err := send.WriteMsgUnix(h[:2], unix.UnixRights(fds[:n/2]...), nil); err != nil {
					t.Fatal(err)
				}
				if _, _, err := send.WriteMsgUnix(h[2:], unix.UnixRights(fds[n/2:]...), nil); err != nil {
					t.Fatal(err)
				}
			} else {
				var oob []byte
				if n > 0 {
					oob = unix.UnixRights(fds...)
				}
				if _, _, err := send.WriteMsgUnix(h, oob, nil); err != nil {
					t.Fatal(err)
				}
			}
			// The sender's copies go, so that only the receiver's hold the sockets.
			for _, fd := range fds {
				unix.Close(fd)
			}
			_, err := Receive(recv)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Receive: %v, want %q", err, c.want)
			}
			for _, a := range addrs {
				if open(a) {
					t.Fatalf("a socket of a refused request is still open (%s)", a)
				}
			}
		})
	}
}

// TestReceiveBadHeader: a header too long, not JSON, without an id, or
// cut short.
func TestReceiveBadHeader(t *testing.T) {
	for name, msg := range map[string][]byte{
		"too long": binary.BigEndian.AppendUint32(nil, maxHeader+1),
		"not json": append(binary.BigEndian.AppendUint32(nil, 3), "abc"...),
		"no id":    request(t, "", "a"),
		"cut":      request(t, "i1", "a")[:8],
	} {
		t.Run(name, func(t *testing.T) {
			send, recv := pair(t)
			fd, addr := listenerFD(t)
			if _, _, err := send.WriteMsgUnix(msg, unix.UnixRights(fd), nil); err != nil {
				t.Fatal(err)
			}
			unix.Close(fd)
			send.CloseWrite()
			if _, err := Receive(recv); err == nil {
				t.Fatal("accepted")
			}
			if open(addr) {
				t.Error("the socket of a refused request is still open")
			}
		})
	}
}

// TestAnswer: ok is an empty message; a refusal arrives as ErrRefused
// with its words (through Send's reading of it).
func TestAnswer(t *testing.T) {
	send, recv := pair(t)
	if err := Answer(recv, nil); err != nil {
		t.Fatal(err)
	}
	if err := Answer(recv, syscall.EINVAL); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"", syscall.EINVAL.Error()} {
		b, err := readFrame(send, 4<<10)
		if err != nil || string(b) != want {
			t.Errorf("answer %q %v, want %q", b, err, want)
		}
	}
}
