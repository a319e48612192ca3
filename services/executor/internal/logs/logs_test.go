package logs

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/natsutil"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/services/executor/internal/outbox"
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

func startNATS(t *testing.T) (*natsutil.Server, jetstream.JetStream) {
	t.Helper()
	srv, err := natsutil.StartServer(natsutil.ServerConfig{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := natsutil.Connect(srv.URL, "", "logs-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := natsutil.EnsureStreams(ctx, js, natsutil.DefaultStreamLimits); err != nil {
		t.Fatal(err)
	}
	return srv, js
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
		batch, err := cons.Fetch(int(wantRecords)-len(got), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for m := range batch.Messages() {
			k++
			r := &eventsv1.LogRecord{}
			if err := proto.Unmarshal(m.Data(), r); err != nil {
				t.Fatal(err)
			}
			got = append(got, r)
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
