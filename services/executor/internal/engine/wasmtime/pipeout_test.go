package wasmtime

import (
	"bytes"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// openWriter opens a write end of end's pipe by its name, as wasmtime
// does for a run's stdout.
func openWriter(t testing.TB, end *pipeEnd) int {
	t.Helper()
	w, err := unix.Open(end.path, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestPipeReuse: a run's stdout pipe goes back to the pool only once it
// was read to its end with no writer left, and the next run's output is
// its own; a pipe whose writer outlives the run is drained to its end
// and closed, not reused.
// readAtEnd has runs' pipes read at their end, never by a drainer, for
// the rest of the test: only such a pipe is reused, and a run on a busy
// machine may outlast drainAfter.
func readAtEnd(t *testing.T) {
	old := drainAfter
	drainAfter = time.Hour
	t.Cleanup(func() { drainAfter = old })
}

func TestPipeReuse(t *testing.T) {
	readAtEnd(t)
	var pool pipePool
	end, err := pool.get()
	if err != nil {
		t.Fatal(err)
	}
	w := openWriter(t, end)
	unix.Write(w, []byte("first run"))
	unix.Close(w)
	var out1 enginetest.Buffer
	newPipeOutput(&pool, end, &out1).wait()
	if out1.String() != "first run" || len(pool.free) != 1 || pool.free[0] != end {
		t.Fatalf("first run: read %q, %d pipes kept (want its own, 1)", out1.String(), len(pool.free))
	}

	again, err := pool.get()
	if err != nil || again != end {
		t.Fatalf("the second run did not get the pipe back (%v)", err)
	}
	w = openWriter(t, again)
	unix.Write(w, []byte("second run"))
	// The writer stays open past the run's end: wait reads on until it
	// goes, and the pipe is not kept.
	var out2 enginetest.Buffer
	p := newPipeOutput(&pool, again, &out2)
	waited := make(chan struct{})
	go func() { p.wait(); close(waited) }()
	select {
	case <-waited:
		t.Fatal("wait returned with a writer still open")
	case <-time.After(50 * time.Millisecond):
	}
	unix.Write(w, []byte(", late"))
	unix.Close(w)
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("wait did not return once the last writer was closed")
	}
	if out2.String() != "second run, late" {
		t.Fatalf("second run read %q", out2.String())
	}
	if len(pool.free) != 0 {
		t.Fatalf("a pipe whose writer outlived its run was kept")
	}
	if _, err := unix.FcntlInt(uintptr(again.fd), unix.F_GETFD, 0); err == nil {
		t.Fatalf("the pipe's read end %d is still open", again.fd)
	}
}

// BenchmarkPipeReuse is a run's stdout plumbing (a writer opened by name,
// a small write, the read to the end): a pipe of the pool against a new
// pipe per run.
func BenchmarkPipeReuse(b *testing.B) {
	msg := []byte("Content-Type: text/plain\n\nHello\n")
	buf := make([]byte, 64<<10)
	b.Run("pooled", func(b *testing.B) {
		var pool pipePool
		for range b.N {
			end, err := pool.get()
			if err != nil {
				b.Fatal(err)
			}
			w := openWriter(b, end)
			unix.Write(w, msg)
			unix.Close(w)
			newPipeOutput(&pool, end, &bytes.Buffer{}).wait()
		}
	})
	b.Run("new", func(b *testing.B) {
		for range b.N {
			var fds [2]int
			if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
				b.Fatal(err)
			}
			w := openWriter(b, &pipeEnd{path: "/proc/self/fd/" + strconv.Itoa(fds[1])})
			unix.Close(fds[1])
			unix.Write(w, msg)
			unix.Close(w)
			for {
				if n, _ := unix.Read(fds[0], buf); n <= 0 {
					break
				}
			}
			unix.Close(fds[0])
		}
	})
}
