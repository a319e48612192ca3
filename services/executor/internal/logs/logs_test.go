package logs

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/logmsg"
	"github.com/wasmlet/wasmlet/internal/natsutil/natsserver"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/internal/testharness/natstest"
	"github.com/wasmlet/wasmlet/services/executor/internal/outbox"
	"github.com/wasmlet/wasmlet/services/executor/internal/spool"
)

type rec struct {
	line    string
	partial bool
}

func TestSplitter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		max    int
		want   []rec
	}{
		{"one line", []string{"a\n"}, 0, []rec{{"a", false}}},
		{"empty lines", []string{"\n\n"}, 0, []rec{{"", false}, {"", false}}},
		{"split across writes", []string{"he", "llo\nwor", "ld\n"}, 0, []rec{{"hello", false}, {"world", false}}},
		{"partial last line", []string{"a\nb"}, 0, []rec{{"a", false}, {"b", true}}},
		{"no output", nil, 0, nil},
		{"invalid utf-8 and CR kept", []string{"\xff\xfe ok\r\n"}, 0, []rec{{"\xff\xfe ok\r", false}}},
		{"long line cut", []string{"abcdefg\n"}, 3, []rec{{"abc", true}, {"def", true}, {"g", false}}},
		{"exactly max", []string{"abc\n"}, 3, []rec{{"abc", false}}},
		{"exactly max across writes", []string{"abc", "\n"}, 3, []rec{{"abc", false}}},
		{"twice max", []string{"abcdef\n"}, 3, []rec{{"abc", true}, {"def", false}}},
		{"long partial tail", []string{"abcde"}, 3, []rec{{"abc", true}, {"de", true}}},
		{"long line in pieces", []string{"ab", "cd", "ef", "g\nh\n"}, 3, []rec{{"abc", true}, {"def", true}, {"g", false}, {"h", false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []rec
			s := NewSplitter(tc.max, func(l []byte, p bool) { got = append(got, rec{string(l), p}) })
			for _, w := range tc.writes {
				if n, err := s.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("write: %d %v", n, err)
				}
			}
			s.Flush()
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %+q, want %+q", fmt.Sprint(got), fmt.Sprint(tc.want))
			}
		})
	}
}

func TestDefaultMaxLine(t *testing.T) {
	var got []rec
	s := NewSplitter(0, func(l []byte, p bool) { got = append(got, rec{string(l), p}) })
	s.Write([]byte(strings.Repeat("x", MaxLine+1) + "\n"))
	if len(got) != 2 || len(got[0].line) != MaxLine || !got[0].partial || got[1].line != "x" || got[1].partial {
		t.Fatalf("got %d records", len(got))
	}
}

func startNATS(t *testing.T) (*natsserver.Server, jetstream.JetStream) {
	t.Helper()
	return natstest.JetStream(t, "")
}

func TestShipperPublishesToJetStream(t *testing.T) {
	_, js := startNATS(t)
	subject := subjects.Logs("node1", "default", "pod.a", "main")
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	sh := NewShipper(ShipperConfig{InstanceID: "i1", Subject: subject, JetStream: js, MaxLine: 8, Now: func() time.Time { return now }})
	const n = 500
	for i := 1; i <= n; i++ {
		fmt.Fprintf(sh.Stdout(), "line %d\n", i)
	}
	sh.Stderr().Write([]byte("err\xff line that is long"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sh.Close(ctx); err != nil {
		t.Fatal(err)
	}
	st := sh.Stats()
	// "line 100" and above are 8 bytes: still one record each.
	wantRecords := uint64(n + 3)
	if st.Records != wantRecords || st.Published != wantRecords || st.Dropped != 0 || st.Failed != 0 {
		t.Fatalf("stats %+v, want %d published", st, wantRecords)
	}

	cons, err := js.OrderedConsumer(ctx, subjects.LogsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var got []*eventsv1.LogRecord
	for len(got) < int(wantRecords) {
		batch, err := cons.Fetch(int(wantRecords)-len(got), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for m := range batch.Messages() {
			k++
			rs, err := logmsg.Decode(m.Headers(), m.Data())
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, rs...)
		}
		if k == 0 {
			t.Fatalf("got %d records, want %d", len(got), wantRecords)
		}
	}
	for i, r := range got {
		if r.GetSequence() != uint64(i+1) || r.GetInstanceId() != "i1" || !r.GetTime().AsTime().Equal(now) {
			t.Fatalf("record %d: %v", i, r)
		}
	}
	if r := got[41]; string(r.GetLine()) != "line 42" || r.GetPartial() || r.GetStream() != eventsv1.Stream_STREAM_STDOUT {
		t.Fatalf("record 42: %v", r)
	}
	tail := got[n:]
	if string(tail[0].GetLine()) != "err\xff lin" || !tail[0].GetPartial() || tail[0].GetStream() != eventsv1.Stream_STREAM_STDERR ||
		string(tail[2].GetLine()) != "s long" || !tail[2].GetPartial() {
		t.Fatalf("stderr records: %v", tail)
	}
}

func TestShipperNATSAbsentDoesNotBlock(t *testing.T) {
	// A server that was there and is gone: the connection keeps retrying.
	srv, js := startNATS(t)
	srv.Shutdown()
	sh := NewShipper(ShipperConfig{InstanceID: "i1", Subject: "wasmlet.logs.n.ns.p.c", JetStream: js,
		Outbox: outbox.Config{Capacity: 64, BlockTimeout: 20 * time.Millisecond, MaxInFlight: 8, AckTimeout: time.Second}})
	const n = 20000
	t0 := time.Now()
	var slowest time.Duration
	for i := range n {
		w0 := time.Now()
		fmt.Fprintf(sh.Stdout(), "line %d\n", i)
		if d := time.Since(w0); d > slowest {
			slowest = d
		}
	}
	took := time.Since(t0)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	sh.Close(ctx)
	st := sh.Stats()
	t.Logf("%d lines in %v (slowest write %v) with NATS down: %+v", n, took, slowest, st)
	if took > 5*time.Second {
		t.Fatalf("writing %d lines with NATS down took %v", n, took)
	}
	if slowest > time.Second {
		t.Fatalf("one write blocked for %v", slowest)
	}
	if st.Records != n || st.Dropped < n/2 || st.Published != 0 {
		t.Fatalf("stats %+v, want most of %d dropped", st, n)
	}
}

func TestShipperWithoutNATS(t *testing.T) {
	sh := NewShipper(ShipperConfig{InstanceID: "i1"})
	sh.Stdout().Write([]byte("a\nb\n"))
	sh.Close(context.Background())
	if st := sh.Stats(); st.Records != 2 || st.Dropped != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// fetchAll reads every message on subject.
func fetchAll(t *testing.T, js jetstream.JetStream, subject string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, subjects.LogsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for uint64(len(out)) < info.NumPending {
		batch, err := cons.Fetch(int(info.NumPending)-len(out), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for m := range batch.Messages() {
			out = append(out, m)
			k++
		}
		if k == 0 {
			t.Fatalf("got %d messages, want %d", len(out), info.NumPending)
		}
	}
	return out
}

func TestShipperBatchesOneWrite(t *testing.T) {
	if outbox.PayloadHeader != logmsg.Header {
		t.Fatalf("outbox sets %q, readers look for %q", outbox.PayloadHeader, logmsg.Header)
	}
	_, js := startNATS(t)
	subject := subjects.Logs("n", "ns", "p", "c")
	sh := NewShipper(ShipperConfig{InstanceID: "i1", Subject: subject, JetStream: js, MaxBatchRecords: 1000, MaxBatchBytes: 40 << 10})
	// One write of 2500 lines: 3 messages by the record bound.
	var w []byte
	for i := 1; i <= 2500; i++ {
		w = fmt.Appendf(w, "line %d\n", i)
	}
	sh.Stdout().Write(w)
	// One write of 5 lines of 16,000 bytes: 3 messages by the byte bound
	// of 40 KiB (2+2+1).
	big := bytes.Repeat([]byte("x"), 16000)
	w = w[:0]
	for range 5 {
		w = append(append(w, big...), '\n')
	}
	sh.Stdout().Write(w)
	// Two writes of one line each: one message each.
	sh.Stderr().Write([]byte("a\n"))
	sh.Stderr().Write([]byte("b"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sh.Close(ctx); err != nil {
		t.Fatal(err)
	}
	const records = 2500 + 5 + 2
	if st := sh.Stats(); st.Records != records || st.Published != records || st.Dropped != 0 {
		t.Fatalf("stats %+v, want %d records published", st, records)
	}
	msgs := fetchAll(t, js, subject)
	wantIDs := []string{"i1:1", "i1:1001", "i1:2001", "i1:2501", "i1:2503", "i1:2505", "i1:2506", "i1:2507"}
	wantLen := []int{1000, 1000, 500, 2, 2, 1, 1, 1}
	if len(msgs) != len(wantIDs) {
		t.Fatalf("%d messages, want %d", len(msgs), len(wantIDs))
	}
	seq := uint64(0)
	for i, m := range msgs {
		if id := m.Headers().Get(jetstream.MsgIDHeader); id != wantIDs[i] {
			t.Errorf("message %d: msg id %q, want %q", i, id, wantIDs[i])
		}
		if len(m.Data()) > 40<<10 {
			t.Errorf("message %d: %d bytes, over 40 KiB", i, len(m.Data()))
		}
		rs, err := logmsg.Decode(m.Headers(), m.Data())
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != wantLen[i] {
			t.Errorf("message %d: %d records, want %d", i, len(rs), wantLen[i])
		}
		for _, r := range rs {
			if seq++; r.GetSequence() != seq {
				t.Fatalf("message %d: sequence %d, want %d", i, r.GetSequence(), seq)
			}
		}
	}
	if rs, _ := logmsg.Decode(msgs[0].Headers(), msgs[0].Data()); string(rs[41].GetLine()) != "line 42" {
		t.Fatalf("record 42: %v", rs[41])
	}
}

// A batch spooled by a killed executor and replayed by the next is the
// same message with the same msg id: JetStream keeps one copy.
func TestShipperReplayedBatchIsDeduplicated(t *testing.T) {
	_, js := startNATS(t)
	dir := t.TempDir()
	subject := subjects.Logs("n", "ns", "p", "c")
	sp, err := spool.Open(spool.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	sh := NewShipper(ShipperConfig{InstanceID: "i1", Subject: subject, JetStream: js, MaxBatchRecords: 10,
		Outbox: outbox.Config{Spool: sp}})
	var w []byte
	for i := 1; i <= 25; i++ {
		w = fmt.Appendf(w, "line %d\n", i)
	}
	sh.Stdout().Write(w)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sh.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// Acknowledged messages stay in the active segment until it rolls or
	// the spool is closed: a new process opening the spool without a Close
	// (as after a kill) replays all of them, as if none had been acked.
	sp2, err := spool.Open(spool.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer sp2.Close()
	r := sp2.Replay()
	if len(r) != 3 || sp2.Stats().Replayed != 25 || r[0].Payload != logmsg.Batch || r[0].Count != 10 || r[2].MsgID != "i1:21" {
		t.Fatalf("replayed %d messages (%+v), want 3 holding 25 records", len(r), sp2.Stats())
	}
	ob := outbox.New(js, outbox.Config{Spool: sp2})
	ob.PublishReplayed(r)
	if err := ob.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := ob.Stats(); st.Published != 25 {
		t.Fatalf("replay stats %+v, want 25 records published", st)
	}
	msgs := fetchAll(t, js, subject)
	if len(msgs) != 3 {
		t.Fatalf("%d messages in the stream after the replay, want 3 (duplicates dropped)", len(msgs))
	}
	for _, m := range msgs {
		if _, err := logmsg.Decode(m.Headers(), m.Data()); err != nil || m.Headers().Get(logmsg.Header) != logmsg.Batch {
			t.Fatalf("replayed message: header %v: %v", m.Headers(), err)
		}
	}
}
