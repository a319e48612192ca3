package podlogs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/logmsg"
	"github.com/wasmlet/wasmlet/internal/natsutil/natsserver"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/internal/testharness/natstest"
)

// TestSeenRecordsSkipsCopies: a replayed copy is skipped, a record retried
// out of order is kept once, and a gap that never fills does not make the
// memory grow without bound.
func TestSeenRecordsSkipsCopies(t *testing.T) {
	s := seenRecords{}
	rec := func(inst string, seq uint64) *eventsv1.LogRecord {
		return &eventsv1.LogRecord{InstanceId: inst, Sequence: seq}
	}
	var kept []string
	for _, r := range []*eventsv1.LogRecord{
		rec("a", 1), rec("a", 2), rec("a", 4), rec("b", 1), rec("a", 3), // 3 retried late
		rec("a", 2), rec("a", 3), rec("a", 4), rec("b", 1), // a replay
		rec("a", 5), rec("a", 0), rec("a", 0), // unnumbered: always kept
	} {
		if s.first(r) {
			kept = append(kept, fmt.Sprintf("%s%d", r.InstanceId, r.Sequence))
		}
	}
	if got := fmt.Sprint(kept); got != "[a1 a2 a4 b1 a3 a5 a0 a0]" {
		t.Errorf("kept %s", got)
	}
	// Sequence 1 of c is lost for good: after maxAhead more, it is passed.
	for seq := uint64(2); seq <= maxAhead+10; seq++ {
		if !s.first(rec("c", seq)) {
			t.Fatalf("c%d dropped", seq)
		}
	}
	if st := s["c"]; len(st.ahead) > 1 || st.low != maxAhead+10 {
		t.Errorf("after a lost record: low %d, %d ahead; want low %d, none ahead", st.low, len(st.ahead), maxAhead+10)
	}
}

// TestFollowSurvivesNATSRestart: a follower keeps reading, in order and
// once each, across a restart of the NATS server on the same store.
func TestFollowSurvivesNATSRestart(t *testing.T) {
	store := t.TempDir()
	srv, js := natstest.JetStream(t, store)
	port := srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(func() { srv.Shutdown() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	publish := func(from, to int) {
		for i := from; i <= to; i++ {
			b, _ := proto.Marshal(&eventsv1.LogRecord{InstanceId: "i", Sequence: uint64(i), Line: []byte(fmt.Sprint(i))})
			for {
				pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
				_, err := js.Publish(pctx, subjects.Logs("n", "ns", "p", "c"), b)
				pcancel()
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("publish %d: %v", i, err)
				}
			}
		}
	}
	publish(1, 5)
	r := &Reader{JS: js, Node: "n"}
	rc, err := r.Open(ctx, "ns", "p", "c", "", Options{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	read := func(n int) []string {
		var got []string
		for len(got) < n && sc.Scan() {
			got = append(got, sc.Text())
		}
		return got
	}
	if got := fmt.Sprint(read(5)); got != "[1 2 3 4 5]" {
		t.Fatalf("before the restart: %s", got)
	}
	srv.Shutdown()
	srv.WaitForShutdown()
	time.Sleep(3 * time.Second)
	srv, err = natsserver.Start(natsserver.Config{StoreDir: store, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	publish(6, 10)
	if got := fmt.Sprint(read(5)); got != "[6 7 8 9 10]" {
		t.Fatalf("after the restart: %s (scan: %v)", got, sc.Err())
	}
}

// TestBatchesAndSingleRecords: a stream holding single records (older
// executors) and batches, one of them twice (a replay past the duplicate
// window), is read per line: all, tail, limitBytes, timestamps, follow.
func TestBatchesAndSingleRecords(t *testing.T) {
	_, js := natstest.JetStream(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	rec := func(inst string, seq int) *eventsv1.LogRecord {
		return &eventsv1.LogRecord{InstanceId: inst, Sequence: uint64(seq), Line: []byte(fmt.Sprint(seq)),
			Time: timestamppb.New(t0.Add(time.Duration(seq) * time.Second))}
	}
	subject := subjects.Logs("n", "ns", "p", "c")
	pub := func(m *nats.Msg) {
		t.Helper()
		m.Subject = subject
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	single := func(seq int) {
		b, _ := proto.Marshal(rec("i", seq))
		pub(&nats.Msg{Data: b})
	}
	batch := func(rs ...*eventsv1.LogRecord) {
		b, _ := proto.Marshal(&eventsv1.LogBatch{Records: rs})
		pub(&nats.Msg{Data: b, Header: nats.Header{logmsg.Header: []string{logmsg.Batch}}})
	}
	single(1)
	single(2)
	single(3)
	batch(rec("i", 4), rec("i", 5), rec("i", 6), rec("i", 7), rec("i", 8))
	batch(rec("i", 4), rec("i", 5), rec("i", 6), rec("i", 7), rec("i", 8)) // a replay
	batch(rec("i", 9), rec("j", 1), rec("i", 10))

	r := &Reader{JS: js, Node: "n"}
	read := func(opts Options) string {
		t.Helper()
		rc, err := r.Open(ctx, "ns", "p", "c", "i", opts)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read(Options{}); got != "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n" {
		t.Errorf("all: %q", got)
	}
	if got := read(Options{Tail: 4}); got != "7\n8\n9\n10\n" {
		t.Errorf("tail 4: %q", got)
	}
	if got := read(Options{Tail: 20}); got != "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n" {
		t.Errorf("tail 20: %q", got)
	}
	if got := read(Options{LimitBytes: 9}); got != "1\n2\n3\n4\n5" {
		t.Errorf("limitBytes 9: %q", got)
	}
	if got := read(Options{Since: t0.Add(7 * time.Second)}); got != "7\n8\n9\n10\n" {
		t.Errorf("since line 7's time: %q", got)
	}
	if got := read(Options{Tail: 1, Timestamps: true}); got != "2026-01-02T03:04:15Z 10\n" {
		t.Errorf("timestamps: %q", got)
	}

	rc, err := r.Open(ctx, "ns", "p", "c", "i", Options{Follow: true, Tail: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	next := func(n int) string {
		var got []string
		for len(got) < n && sc.Scan() {
			got = append(got, sc.Text())
		}
		return strings.Join(got, " ")
	}
	if got := next(2); got != "9 10" {
		t.Fatalf("follow, backlog: %q", got)
	}
	single(11)
	batch(rec("i", 10), rec("i", 12), rec("i", 13)) // 10 again: skipped
	if got := next(3); got != "11 12 13" {
		t.Fatalf("follow, new: %q", got)
	}
}

// kubectl logs while the node agent has no NATS connection is answered at
// once, saying why and that the lines are kept, rather than after the
// request's timeout with "context deadline exceeded".
func TestOpenWithoutNATSSaysSo(t *testing.T) {
	srv, js := natstest.JetStream(t, "")
	srv.Shutdown()
	deadline := time.Now().Add(10 * time.Second)
	for js.Conn().IsConnected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	r := &Reader{JS: js, Node: "n"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := r.Open(ctx, "ns", "p", "c", "i", Options{})
	if !errors.Is(err, ErrUnavailable) || time.Since(start) > time.Second {
		t.Fatalf("open without NATS: %v after %s; want ErrUnavailable at once", err, time.Since(start))
	}
}
