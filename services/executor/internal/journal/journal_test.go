package journal

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

func TestAfter(t *testing.T) {
	j := New(3)
	if evs, _, err := j.After(0); err != nil || len(evs) != 0 || j.Seq() != 0 {
		t.Fatalf("empty: %v %v", evs, err)
	}
	for i := range 5 {
		in := j.Append(time.Unix(int64(i), 0), instances.Instance{ID: fmt.Sprint("i", i%2)})
		if in.Sequence != uint64(i+1) {
			t.Fatalf("append %d: sequence %d", i, in.Sequence)
		}
	}
	seqs := func(evs []Event) (out []uint64) {
		for _, ev := range evs {
			out = append(out, ev.Instance.Sequence)
		}
		return out
	}
	for _, tc := range []struct {
		after uint64
		want  string
		err   error
	}{
		{0, "[3 4 5]", nil}, // the oldest kept
		{2, "[3 4 5]", nil}, // just in time
		{4, "[5]", nil},
		{5, "[]", nil},
		{1, "[]", instances.ErrBehind},
		{6, "[]", instances.ErrFailedPrecondition},
	} {
		evs, _, err := j.After(tc.after)
		if got := fmt.Sprint(seqs(evs)); got != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("After(%d) = %s, %v; want %s, %v", tc.after, got, err, tc.want, tc.err)
		}
	}
	if evs, _, _ := j.After(4); evs[0].Time != time.Unix(4, 0) {
		t.Errorf("time %v", evs[0].Time)
	}
}

func TestWatch(t *testing.T) {
	j := New(100)
	j.Append(time.Time{}, instances.Instance{ID: "a"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan instances.Instance, 10)
	done := make(chan error, 1)
	go func() {
		done <- j.Watch(ctx, 0, "b", func(in instances.Instance) error {
			got <- in
			if in.State == instances.StateExited {
				return errors.New("seen the end")
			}
			return nil
		})
	}()
	j.Append(time.Time{}, instances.Instance{ID: "b", State: instances.StateRunning})
	j.Append(time.Time{}, instances.Instance{ID: "a", State: instances.StateRunning})
	j.Append(time.Time{}, instances.Instance{ID: "b", State: instances.StateExited})
	if err := <-done; err == nil || err.Error() != "seen the end" {
		t.Fatalf("watch: %v", err)
	}
	close(got)
	var seen []string
	for in := range got {
		seen = append(seen, fmt.Sprint(in.ID, in.Sequence))
	}
	if fmt.Sprint(seen) != "[b2 b4]" {
		t.Fatalf("watched %v", seen)
	}

	// Behind: the error, and nothing delivered in place of what was lost.
	small := New(2)
	for range 4 {
		small.Append(time.Time{}, instances.Instance{ID: "x"})
	}
	calls := 0
	if err := small.Watch(ctx, 1, "", func(instances.Instance) error { calls++; return nil }); !errors.Is(err, instances.ErrBehind) || calls != 0 {
		t.Fatalf("behind: %v after %d calls", err, calls)
	}
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if err := small.Watch(cctx, 4, "", func(instances.Instance) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("ended context: %v", err)
	}
}
