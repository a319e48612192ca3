package podlogs

import (
	"fmt"
	"testing"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
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
