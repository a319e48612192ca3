package podlogs

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/logmsg"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/internal/testharness/natstest"
)

// publisher publishes batches of numbered lines of one instance, as an
// executor does.
type publisher struct {
	t   *testing.T
	ctx context.Context
	js  jetstream.JetStream
}

func (p publisher) lines(inst string, from, to int, line func(int) string) {
	p.t.Helper()
	var rs []*eventsv1.LogRecord
	for i := from; i <= to; i++ {
		rs = append(rs, &eventsv1.LogRecord{InstanceId: inst, Sequence: uint64(i), Line: []byte(line(i))})
	}
	b, _ := proto.Marshal(&eventsv1.LogBatch{Records: rs})
	m := &nats.Msg{Subject: subjects.Logs("n", "ns", "p", "c"), Data: b, Header: nats.Header{logmsg.Header: []string{logmsg.Batch}}}
	if _, err := p.js.PublishMsg(p.ctx, m); err != nil {
		p.t.Fatal(err)
	}
}

func (p publisher) each(inst string, from, to int) {
	p.t.Helper()
	for i := from; i <= to; i++ {
		p.lines(inst, i, i, func(i int) string { return fmt.Sprint(i) })
	}
}

// readAllWithin reads rc to its end, failing the test if it has not ended
// within d (a follow that never returns).
func readAllWithin(t *testing.T, rc io.Reader, d time.Duration) string {
	t.Helper()
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() { b, err := io.ReadAll(rc); done <- result{b, err} }()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("read: %v", r.err)
		}
		return string(r.b)
	case <-time.After(d):
		t.Fatalf("the stream did not end within %s", d)
		return ""
	}
}

// TestFollowEndsWhenInstanceEnds: a follow ends after the instance's last
// record once its end is known, whether it ended while followed, before the
// follow began, or (--previous) while a newer instance keeps writing.
func TestFollowEndsWhenInstanceEnds(t *testing.T) {
	_, js := natstest.JetStream(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pub := publisher{t, ctx, js}
	r := &Reader{JS: js, Node: "n"}

	// Ended while followed.
	pub.each("i", 1, 3)
	ended := make(chan struct{})
	rc, err := r.Open(ctx, "ns", "p", "c", "i", Options{Follow: true, Ended: ended})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	br := bufio.NewReader(rc)
	for want := 1; want <= 3; want++ {
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("%d\n", want) {
			t.Fatalf("line %d: %q %v", want, line, err)
		}
	}
	pub.each("i", 4, 5) // the executor publishes the last records before it records the end
	close(ended)
	pub.each("j", 1, 2) // the next instance, after the end
	if got := readAllWithin(t, br, 15*time.Second); got != "4\n5\n" {
		t.Errorf("after the end: %q, want 4 and 5", got)
	}

	// Ended before the follow began (kubectl logs -f on a completed pod).
	rc2, err := r.Open(ctx, "ns", "p", "c", "i", Options{Follow: true, Ended: ended, Tail: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer rc2.Close()
	if got := readAllWithin(t, rc2, 15*time.Second); got != "4\n5\n" {
		t.Errorf("ended before: %q, want 4 and 5", got)
	}

	// --previous while the current instance keeps writing.
	stop := make(chan struct{})
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		for i := 3; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			b, _ := proto.Marshal(&eventsv1.LogBatch{Records: []*eventsv1.LogRecord{{InstanceId: "j", Sequence: uint64(i), Line: []byte("j")}}})
			js.PublishMsg(ctx, &nats.Msg{Subject: subjects.Logs("n", "ns", "p", "c"), Data: b, Header: nats.Header{logmsg.Header: []string{logmsg.Batch}}})
		}
	}()
	defer func() { close(stop); <-writing }()
	rc3, err := r.Open(ctx, "ns", "p", "c", "i", Options{Follow: true, Ended: ended})
	if err != nil {
		t.Fatal(err)
	}
	defer rc3.Close()
	if got := readAllWithin(t, rc3, 15*time.Second); got != "1\n2\n3\n4\n5\n" {
		t.Errorf("previous: %q", got)
	}
}

// TestHugeTail: a tail far beyond the backlog (kubectl logs
// --tail=4611686018427387904, which crashed the node agent) shows every
// line; a tail that does not fit in the reader's ring is read again and
// is still exact.
func TestHugeTail(t *testing.T) {
	_, js := natstest.JetStream(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pub := publisher{t, ctx, js}
	for i := 0; i < 10; i++ {
		pub.lines("i", 10*i+1, 10*i+10, func(i int) string { return fmt.Sprintf("%03d %s", i, strings.Repeat("x", 100)) })
	}
	read := func(r *Reader, opts Options) []string {
		t.Helper()
		rc, err := r.Open(ctx, "ns", "p", "c", "i", opts)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		var got []string
		for _, l := range strings.Split(strings.TrimSuffix(readAllWithin(t, rc, 15*time.Second), "\n"), "\n") {
			got = append(got, strings.Fields(l)[0])
		}
		return got
	}
	want := func(from, to int) string {
		var s []string
		for i := from; i <= to; i++ {
			s = append(s, fmt.Sprintf("%03d", i))
		}
		return fmt.Sprint(s)
	}
	for _, tail := range []int{4611686018427387904, 1<<63 - 1, 1 << 62, 101} {
		if got := fmt.Sprint(read(&Reader{JS: js, Node: "n"}, Options{Tail: tail})); got != want(1, 100) {
			t.Errorf("tail %d: %s", tail, got)
		}
	}
	small := &Reader{JS: js, Node: "n", TailBytes: 1000} // about 4 records
	for _, tail := range []int{3, 37, 99, 100, 1 << 62} {
		if got := fmt.Sprint(read(small, Options{Tail: tail})); got != want(max(1, 101-min(tail, 100)), 100) {
			t.Errorf("tail %d beyond the ring: %s", tail, got)
		}
	}
	if got := fmt.Sprint(read(small, Options{Tail: 37, LimitBytes: 1<<63 - 1})); got != want(64, 100) {
		t.Errorf("tail 37, limitBytes max: %s", got)
	}
}

// TestBacklogIsStreamed: without a tail, a reader whose client does not
// read holds a bounded part of the backlog, not all of it decoded.
func TestBacklogIsStreamed(t *testing.T) {
	_, js := natstest.JetStream(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const messages = 3000
	line := strings.Repeat("y", 500)
	var acks []jetstream.PubAckFuture
	for i := 1; i <= messages; i++ {
		b, _ := proto.Marshal(&eventsv1.LogBatch{Records: []*eventsv1.LogRecord{{InstanceId: "i", Sequence: uint64(i), Line: []byte(line)}}})
		f, err := js.PublishMsgAsync(&nats.Msg{Subject: subjects.Logs("n", "ns", "p", "c"), Data: b, Header: nats.Header{logmsg.Header: []string{logmsg.Batch}}})
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, f)
	}
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		}
	}
	r := &Reader{JS: js, Node: "n"}
	rc, err := r.Open(ctx, "ns", "p", "c", "i", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	time.Sleep(time.Second) // the client reads nothing meanwhile
	st, err := js.Stream(ctx, subjects.LogsStream)
	if err != nil {
		t.Fatal(err)
	}
	var delivered uint64
	for info := range st.ListConsumers(ctx).Info() {
		delivered = max(delivered, info.Delivered.Stream)
	}
	// The pull window (512 messages, refilled at half) and 64 KiB of output.
	if delivered == 0 || delivered > 1200 {
		t.Errorf("%d of %d messages delivered to a reader whose client read nothing", delivered, messages)
	}
	got := readAllWithin(t, rc, 30*time.Second)
	if n := strings.Count(got, "\n"); n != messages {
		t.Errorf("%d lines read, want %d", n, messages)
	}
}
