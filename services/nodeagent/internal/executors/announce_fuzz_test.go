package executors

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
)

// fuzzPool is a pool for node-1 as discovery leaves it: a static
// executor, an announced replica (exec-a, sequence 10), and a replica
// given up whose instances are being removed (exec-gone). Nothing is
// dialled until a call: the sockets need not exist.
func fuzzPool(t *testing.T) *Pool {
	t.Helper()
	p := &Pool{
		cfg:     Config{Node: "node-1", Default: "wasmtime", Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
		execs:   map[string]*Executor{},
		changed: make(chan struct{}),
		givenUp: map[string]bool{"exec-gone": true},
	}
	for _, r := range []struct {
		id, flavour, addr string
		static            bool
	}{
		{"wasmtime", "wasmtime", "unix:///nonexistent/static.sock", true},
		{"exec-a", "wazero", "unix:///nonexistent/exec-a.sock", false},
	} {
		e, err := p.dial(r.id, r.flavour, r.addr, r.static)
		if err != nil {
			t.Fatal(err)
		}
		if !r.static {
			e.ann = &eventsv1.ExecutorAnnouncement{ExecutorId: r.id, Flavour: r.flavour, Node: "node-1", Address: r.addr, Sequence: 10}
			e.seen = time.Unix(1, 0)
		}
		p.execs[r.id] = e
	}
	t.Cleanup(p.Close)
	return p
}

// FuzzAnnouncement hands the node agent's discovery arbitrary bytes as an
// announcement, decoded as discover's subscription does: nothing panics;
// an announcement with bad fields (another node, no executor id, flavour
// or address, an address the pool would not dial) changes nothing; one
// that is taken is what the replica now holds; the static executor is
// never dropped. Seeds: f.Add below and testdata/fuzz/FuzzAnnouncement
// (known-id-undialable-address: a replica was given up, its instances
// declared lost, on the word of an announcement the pool then could not
// dial).
//
//	go test -run '^$' -fuzz FuzzAnnouncement -fuzztime 60s -parallel 1 ./services/nodeagent/internal/executors/
func FuzzAnnouncement(f *testing.F) {
	for _, a := range []*eventsv1.ExecutorAnnouncement{
		{ExecutorId: "exec-b", Flavour: "wazero", Node: "node-1", Address: "unix:///nonexistent/exec-b.sock", Sequence: 1, Healthy: true, MaxInstances: 10, Period: durationpb.New(time.Second)},
		{ExecutorId: "exec-a", Flavour: "wazero", Node: "node-1", Address: "unix:///nonexistent/exec-a.sock", Sequence: 11},
		{ExecutorId: "exec-a", Flavour: "wazero", Node: "node-1", Address: "unix:///nonexistent/exec-a.sock", Sequence: 3},
		{ExecutorId: "exec-a", Flavour: "wazero", Node: "node-1", Address: "unix:///nonexistent/exec-a.sock", Leaving: true, Sequence: 12},
		{ExecutorId: "exec-c", Flavour: "wazero", Node: "node-1", Address: "unix:///nonexistent/exec-a.sock", Sequence: 1},
		{ExecutorId: "exec-gone", Flavour: "wazero", Node: "node-1", Address: "unix:///nonexistent/gone.sock", Leaving: true},
		{ExecutorId: "wasmtime", Flavour: "wasmtime", Node: "node-1", Address: "unix:///nonexistent/other.sock"},
		{ExecutorId: "exec-d", Flavour: "wasmtime", Node: "node-1", Address: "unix:///nonexistent/static.sock"},
		{ExecutorId: "exec-e", Flavour: "wazero", Node: "node-1", Address: "tcp://10.0.0.1:7000"},
		{ExecutorId: "exec-f", Flavour: "wazero", Node: "node-1", Address: "tcp://127.0.0.1:7000", Period: &durationpb.Duration{Seconds: -1 << 62, Nanos: -1}},
		{ExecutorId: "exec-g", Flavour: "wazero", Node: "node-1", Address: "http://x"},
		{ExecutorId: "exec-h", Flavour: "wazero", Node: "node-2", Address: "unix:///nonexistent/h.sock"},
		{Flavour: "wazero", Node: "node-1", Address: "unix:///nonexistent/i.sock"},
		{ExecutorId: "exec-j", Node: "node-1", Address: "unix:///nonexistent/j.sock"},
		{ExecutorId: "exec-k", Flavour: "wazero", Node: "node-1"},
	} {
		b, err := proto.Marshal(a)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x0a, 0xff, 0x01})       // a length beyond the message
	f.Add([]byte{0x0a, 0x02, 0xc3, 0x28}) // a string field of invalid UTF-8
	f.Add([]byte("not protobuf at all"))
	now := time.Unix(100, 0)
	f.Fuzz(func(t *testing.T, data []byte) {
		p := fuzzPool(t)
		var ann eventsv1.ExecutorAnnouncement
		if err := proto.Unmarshal(data, &ann); err != nil {
			return // discover logs it and waits for the next one
		}
		before := map[string]*Executor{}
		for id, e := range p.execs {
			before[id] = e
		}
		known := before["exec-a"].ann
		p.announced(&ann, now)

		bad := ann.GetNode() != "node-1" || ann.GetExecutorId() == "" || ann.GetFlavour() == "" || ann.GetAddress() == ""
		if conn, err := grpcutil.DialTLS(ann.GetAddress(), grpcutil.TLS{}); err != nil {
			bad = true // not unix:// or tcp://host:port, plain TCP beyond loopback, no URL
		} else {
			conn.Close()
		}
		if bad && len(p.execs) != len(before) {
			t.Fatalf("%v: refused, yet the pool went from %v to %v", &ann, before, p.execs)
		}
		for id, e := range p.execs {
			if bad && (before[id] != e || id == "exec-a" && e.ann != known) {
				t.Fatalf("%v: refused, yet replica %s changed", &ann, id)
			}
			if e.Static {
				continue
			}
			e.mu.Lock()
			a := e.ann
			e.mu.Unlock()
			if id != e.ID || e.ID == "" || e.Flavour == "" || e.Address == "" || a.GetNode() != "node-1" || a.GetExecutorId() != e.ID || a.GetAddress() != e.Address {
				t.Fatalf("%v: the pool holds replica %q as %s, announced as %v", &ann, id, e, a)
			}
			if network, target, _ := grpcutil.Split(e.Address); network == "tcp" && !grpcutil.IsLoopback(target) {
				t.Fatalf("%v: replica %s is plain TCP beyond loopback", &ann, e)
			}
		}
		if st := p.execs["wasmtime"]; st == nil || st != before["wasmtime"] {
			t.Fatalf("%v: the static executor was dropped or replaced", &ann)
		}
		if !bad && !ann.GetLeaving() && ann.GetExecutorId() != "wasmtime" && ann.GetAddress() != "unix:///nonexistent/static.sock" {
			if _, gone := p.givenUp[ann.GetExecutorId()]; !gone {
				e := p.execs[ann.GetExecutorId()]
				if e == nil || e.ann != &ann || e.seen != now {
					t.Fatalf("%v: taken, yet the pool holds %v", &ann, e)
				}
			}
		}
	})
}
