package logs

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/natstest"
	"github.com/wasmlet/wasmlet/services/executor/internal/outbox"
	"github.com/wasmlet/wasmlet/services/executor/internal/spool"
)

// BenchmarkShipToNATS is the executor's half of the log path: lines
// written in 12 KiB writes, split, spooled and published to a real
// in-process JetStream, until every one is acknowledged.
//
//	go test -run '^$' -bench ShipToNATS -benchtime 200000x ./services/executor/internal/logs/
func BenchmarkShipToNATS(b *testing.B) {
	_, js := natstest.JetStream(b, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	sp, err := spool.Open(spool.Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	sh := NewShipper(ShipperConfig{InstanceID: "bench-instance-0", Subject: "wasmlet.logs.n.ns.p.c", JetStream: js, Outbox: outbox.Config{Spool: sp}})
	w := sh.Stdout()
	var buf []byte
	b.ResetTimer()
	t0 := time.Now()
	for i := 1; i <= b.N; i++ {
		buf = fmt.Appendf(buf, "%d %d\n", i, time.Now().UnixNano())
		if len(buf) > 12<<10 || i == b.N {
			w.Write(buf)
			buf = buf[:0]
		}
	}
	if err := sh.Close(ctx); err != nil {
		b.Fatal(err)
	}
	d := time.Since(t0)
	st := sh.Stats()
	if st.Published != uint64(b.N) {
		b.Fatalf("stats %+v, want %d published", st, b.N)
	}
	b.ReportMetric(float64(b.N)/d.Seconds(), "lines/s")
}
