package handed

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/instances/handoff"
)

// serve runs a Store on a fresh socket and returns the socket's path.
func serve(t *testing.T, s *Store) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "handed")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "l.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

// listener opens a loopback TCP listener and returns it with a copy of
// its socket as a file.
func listener(t *testing.T) (*net.TCPListener, *os.File) {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); f.Close() })
	return l, f
}

// handOver sends l's socket as name for id, then closes the sender's
// copies, as the node agent does: the socket lives on only in the store.
func handOver(t *testing.T, path, id, name string) (string, error) {
	t.Helper()
	l, f := listener(t)
	addr := l.Addr().String()
	err := handoff.Send(context.Background(), path, id, []handoff.Handed{{Name: name, File: f}})
	l.Close()
	f.Close()
	return addr, err
}

// open reports whether a TCP connection to addr is accepted by a socket
// (into its backlog).
func open(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func TestHandOverAndTake(t *testing.T) {
	s := New(Config{})
	path := serve(t, s)
	l1, f1 := listener(t)
	l2, f2 := listener(t)
	if err := handoff.Send(context.Background(), path, "i1", []handoff.Handed{{Name: "http", File: f1}, {Name: "admin", File: f2}}); err != nil {
		t.Fatal(err)
	}
	files, ok := s.Take("i1")
	if !ok || len(files) != 2 || files["http"] == nil || files["admin"] == nil {
		t.Fatalf("Take: %v %v", files, ok)
	}
	if _, ok := s.Take("i1"); ok {
		t.Error("taken twice")
	}
	// The files are the very sockets: accept on them what was dialled to
	// the sender's listeners.
	for name, l := range map[string]*net.TCPListener{"http": l1, "admin": l2} {
		got, err := net.FileListener(files[name])
		if err != nil {
			t.Fatal(err)
		}
		files[name].Close()
		if got.Addr().String() != l.Addr().String() {
			t.Errorf("%s: handed %s, got %s", name, l.Addr(), got.Addr())
		}
		l.Close() // the sender's copy goes; the socket stays open in the store's
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatalf("%s: dial after the sender closed its copy: %v", name, err)
		}
		got.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
		a, err := got.Accept()
		if err != nil {
			t.Fatalf("%s: accept on the handed socket: %v", name, err)
		}
		a.Close()
		c.Close()
		got.Close()
	}
}

func TestRefused(t *testing.T) {
	s := New(Config{})
	path := serve(t, s)
	_, good := listener(t)

	// A bound TCP socket that does not listen: a connection's.
	peer, _ := listener(t)
	conn, err := net.Dial("tcp", peer.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connFile, err := conn.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer connFile.Close()
	// A unix listener: listening, not TCP.
	ul, err := net.Listen("unix", filepath.Join(t.TempDir(), "u.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	unixFile, err := ul.(*net.UnixListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer unixFile.Close()
	// Not a socket at all.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()

	for name, f := range map[string]*os.File{"not listening": connFile, "not a TCP socket": unixFile, "not a socket": r} {
		err := handoff.Send(context.Background(), path, "bad", []handoff.Handed{{Name: "ok", File: good}, {Name: "bad", File: f}})
		if !errors.Is(err, handoff.ErrRefused) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v, want ErrRefused saying %q", name, err, name)
		}
	}
	if s.Len() != 0 {
		t.Errorf("%d instances held after refusals", s.Len())
	}

	// Refused before anything is sent.
	many := make([]handoff.Handed, handoff.MaxListeners+1)
	for i := range many {
		many[i] = handoff.Handed{Name: string(rune('a'+i%26)) + string(rune('a'+i/26)), File: good}
	}
	if err := handoff.Send(context.Background(), path, "many", many); err == nil {
		t.Error("65 listeners sent")
	}
	for _, bad := range [][]handoff.Handed{nil, {{Name: "", File: good}}, {{Name: "x"}}, {{Name: "x", File: good}, {Name: "x", File: good}}} {
		if err := handoff.Send(context.Background(), path, "i", bad); err == nil {
			t.Errorf("%v sent", bad)
		}
	}
	if err := handoff.Send(context.Background(), path, "", []handoff.Handed{{Name: "x", File: good}}); err == nil {
		t.Error("an empty id sent")
	}
	// No executor there.
	if err := handoff.Send(context.Background(), path+".none", "i", []handoff.Handed{{Name: "x", File: good}}); err == nil || !strings.Contains(err.Error(), "--listener-socket") {
		t.Errorf("no executor: %v", err)
	}
	// A deadline bounds a Send to an executor that never answers.
	mute, err := net.Listen("unix", filepath.Join(t.TempDir(), "mute.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if err := handoff.Send(ctx, mute.Addr().String(), "i", []handoff.Handed{{Name: "x", File: good}}); !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > 5*time.Second {
		t.Errorf("a mute executor: %v after %v", err, time.Since(t0))
	}
}

func TestReplaceClosesOld(t *testing.T) {
	s := New(Config{})
	path := serve(t, s)
	old, err := handOver(t, path, "i1", "http")
	if err != nil {
		t.Fatal(err)
	}
	if !open(old) {
		t.Fatal("a held socket refuses connections")
	}
	cur, err := handOver(t, path, "i1", "http")
	if err != nil {
		t.Fatal(err)
	}
	if open(old) {
		t.Error("the replaced socket still accepts connections: not closed")
	}
	files, ok := s.Take("i1")
	if !ok || len(files) != 1 {
		t.Fatalf("Take: %v %v", files, ok)
	}
	l, err := net.FileListener(files["http"])
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	files["http"].Close()
	if l.Addr().String() != cur {
		t.Errorf("took %s, want the replacement %s", l.Addr(), cur)
	}
}

func TestExpiryAndBound(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := New(Config{Max: 2, Expiry: time.Minute, Now: clock})
	path := serve(t, s)
	a, err := handOver(t, path, "a", "http")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := handOver(t, path, "b", "http"); err != nil {
		t.Fatal(err)
	}
	c, err := handOver(t, path, "c", "http")
	if !errors.Is(err, handoff.ErrRefused) || !strings.Contains(err.Error(), "maximum") {
		t.Errorf("a third instance over Max 2: %v", err)
	}
	if open(c) {
		t.Error("a refused socket was kept open")
	}
	if _, err := handOver(t, path, "b", "http"); err != nil { // a replacement is not a new instance
		t.Errorf("replace at Max: %v", err)
	}
	mu.Lock()
	now = now.Add(61 * time.Second)
	mu.Unlock()
	if _, ok := s.Take("a"); ok {
		t.Error("an expired hand-over was taken")
	}
	if open(a) {
		t.Error("an expired socket still accepts connections: not closed")
	}
	if s.Len() != 0 {
		t.Errorf("%d held after expiry", s.Len())
	}
}
