package logs

import (
	"bytes"
	"context"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sys/unix"

	"github.com/wasmlet/wasmlet/internal/logmsg"
)

// TestSplitterLongLineLinear: a line of many MiB in one write is emitted
// in MaxLine pieces without being copied (the Splitter copied the whole
// write into its buffer and shifted it down by max bytes per piece: memory
// as large as the write and time quadratic in it).
func TestSplitterLongLineLinear(t *testing.T) {
	const size = 32 << 20
	p := bytes.Repeat([]byte("x"), size)
	p[size-1] = '\n'
	pieces, bytesOut := 0, 0
	s := NewSplitter(0, func(l []byte, partial bool) {
		if len(l) > MaxLine {
			t.Fatalf("piece of %d bytes", len(l))
		}
		pieces++
		bytesOut += len(l)
	})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	t0 := time.Now()
	s.Write(p)
	s.Write(p[:size-1]) // and once more without a newline
	s.Flush()
	took := time.Since(t0)
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("2 x %d MiB in %v, %d bytes allocated", size>>20, took, alloc)
	if alloc > 2*MaxLine {
		t.Fatalf("the Splitter allocated %d bytes for a long line, want at most %d", alloc, 2*MaxLine)
	}
	if want := 2 * (size / MaxLine); pieces != want || bytesOut != 2*(size-1) {
		t.Fatalf("%d pieces of %d bytes, want %d of %d", pieces, bytesOut, want, 2*(size-1))
	}
}

// countingJS acknowledges every publish at once and keeps nothing of the
// message but what the test checks: the records' count and shape.
type countingJS struct {
	jetstream.JetStream
	mu        sync.Mutex
	records   int
	bytes     int
	longest   int
	unpartial int // records not marked partial
	err       error
}

func (c *countingJS) PublishMsgAsync(m *nats.Msg, _ ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	rs, err := logmsg.Decode(m.Header, m.Data)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.err = err
	}
	for _, r := range rs {
		c.records++
		c.bytes += len(r.GetLine())
		c.longest = max(c.longest, len(r.GetLine()))
		if !r.GetPartial() {
			c.unpartial++
		}
	}
	return ackedFuture{}, nil
}

type ackedFuture struct{ jetstream.PubAckFuture }

func (ackedFuture) Ok() <-chan *jetstream.PubAck {
	c := make(chan *jetstream.PubAck, 1)
	c <- &jetstream.PubAck{}
	return c
}

func (ackedFuture) Err() <-chan error { return make(chan error) }

// heap reads, without stopping the world, the Go heap's bytes in objects
// (live or garbage not yet collected) and its live bytes as of the last
// GC.
func heap() (objects, live uint64) {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}

// TestShipperHugeWriteBounded: one write of 256 MiB without a newline (a
// module's single fd_write; the bytes lie outside the Go heap, as a
// module's linear memory does) arrives as MaxLine pieces, all partial, and
// the Go heap grows by far less than the write while the Shipper handles
// it (it held every record of a write until the write was split: 256 MiB).
func TestShipperHugeWriteBounded(t *testing.T) {
	const size = 256 << 20
	p, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(p)
	for i := range p {
		p[i] = 'x'
	}
	js := &countingJS{}
	sh := NewShipper(ShipperConfig{InstanceID: "i1", Subject: "wasmlet.logs.n.ns.p.c", JetStream: js})
	runtime.GC()
	base, baseLive := heap()
	var done atomic.Bool
	t0 := time.Now()
	go func() {
		sh.Stdout().Write(p)
		done.Store(true)
	}()
	// Garbage collected at GOGC=100 lets the heap reach about twice
	// its live bytes; the bound on live bytes is the one that matters:
	// the outbox's MaxBytes (8 MiB), a chunk's records, and slack.
	const bound, liveBound = 64 << 20, 24 << 20
	var peak, peakLive uint64
	for !done.Load() {
		h, l := heap()
		if h > base {
			peak = max(peak, h-base)
		}
		if l > baseLive {
			peakLive = max(peakLive, l-baseLive)
		}
		if peak > bound || peakLive > liveBound {
			t.Fatalf("the heap grew by %d MiB (%d MiB live) while a %d MiB write was shipped, want under %d MiB (%d MiB live)",
				peak>>20, peakLive>>20, size>>20, bound>>20, liveBound>>20)
		}
		if time.Since(t0) > 2*time.Minute {
			t.Fatalf("a %d MiB write took over 2 minutes", size>>20)
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(t0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sh.Close(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d MiB in one write: shipped in %v, heap grew by at most %.1f MiB (%.1f MiB live)", size>>20, took, float64(peak)/(1<<20), float64(peakLive)/(1<<20))
	js.mu.Lock()
	defer js.mu.Unlock()
	if js.err != nil {
		t.Fatal(js.err)
	}
	if want := size / MaxLine; js.records != want || js.bytes != size || js.longest != MaxLine || js.unpartial != 0 {
		t.Fatalf("%d records (%d bytes, longest %d, %d not partial), want %d partial pieces of %d bytes",
			js.records, js.bytes, js.longest, js.unpartial, want, MaxLine)
	}
}
