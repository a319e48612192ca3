// Package instancestest holds what tests of instances.Runtime share: Run,
// the conformance suite every implementation must pass (the executor's
// manager, the gRPC proxy in front of a server, the Fake), and Fake, an
// in-memory Runtime for unit tests of its callers.
//
// It owns no product code and must not be imported outside tests.
//
// Usage:
//
//	instancestest.Run(t, instancestest.Harness{
//		New:  func(t *testing.T, history int) instances.Runtime { return newManager(t, history) },
//		Exit0: spec0, ExitNonZero: spec3, ExitCode: 3, Running: idle, NotWasm: text,
//	})
package instancestest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// Harness is what Run needs of an implementation.
type Harness struct {
	// New returns a fresh Runtime, with nothing in it, that keeps the
	// newest history changes for watchers (0: its default). It cleans up
	// after t.
	New func(t *testing.T, history int) instances.Runtime
	// Exit0 runs a module that exits 0 at once; ExitNonZero one that exits
	// with ExitCode (not 0); Running one that runs until it is stopped;
	// NotWasm names content that is not a Wasm module. Labels are the
	// suite's: any set here are replaced.
	Exit0, ExitNonZero, Running, NotWasm instances.Spec
	ExitCode                             int32
	// MeasuresUsage: Stats of a running instance report its memory.
	MeasuresUsage bool
}

// Run runs the conformance suite against h's Runtime.
func Run(t *testing.T, h Harness) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"CreateGetAndErrors", testCreateGetAndErrors},
		{"Exit0", testExit0},
		{"ExitNonZero", testExitNonZero},
		{"StartNotCreated", testStartNotCreated},
		{"StopGraceThenKill", testStopGraceThenKill},
		{"StopBeforeStart", testStopBeforeStart},
		{"Delete", testDelete},
		{"NotWasmFails", testNotWasmFails},
		{"ListSelectorAndSequence", testList},
		{"WatchOrderAfterAndID", testWatch},
		{"WatchBehind", testWatchBehind},
		{"WatchEndsWithContext", testWatchContext},
		{"Stats", testStats},
		{"Info", testInfo},
		{"Listeners", testListeners},
		{"Handlers", testHandlers},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, h) })
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func labelled(s instances.Spec, kv ...string) instances.Spec {
	s.Labels = map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		s.Labels[kv[i]] = kv[i+1]
	}
	return s
}

// waitEnd returns the instance once it has ended, as a watcher sees it.
func waitEnd(t *testing.T, ctx context.Context, rt instances.Runtime, id string) instances.Instance {
	t.Helper()
	in, err := rt.Get(ctx, id)
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	if in.State.Terminal() {
		return in
	}
	errEnd := errors.New("ended")
	err = rt.Watch(ctx, in.Sequence, id, func(w instances.Instance) error {
		if w.State.Terminal() {
			in = w
			return errEnd
		}
		return nil
	})
	if err != errEnd {
		t.Fatalf("watch %s to its end: %v", id, err)
	}
	return in
}

func mustCreate(t *testing.T, ctx context.Context, rt instances.Runtime, id string, spec instances.Spec, start bool) instances.Instance {
	t.Helper()
	in, err := rt.Create(ctx, id, spec, start)
	if err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	if in.ID != id || in.State == instances.StateFailed {
		t.Fatalf("create %s: %+v", id, in)
	}
	return in
}

func testCreateGetAndErrors(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	spec := labelled(h.Exit0, "app", "a")
	in := mustCreate(t, ctx, rt, "c1", spec, false)
	if in.State != instances.StateCreated || in.CreatedAt.IsZero() || in.Sequence == 0 || in.Spec.Module.Digest != spec.Module.Digest || in.Spec.Labels["app"] != "a" {
		t.Fatalf("created: %+v", in)
	}
	got, err := rt.Get(ctx, "c1")
	if err != nil || got.ID != "c1" || got.State != instances.StateCreated || got.Sequence != in.Sequence {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := rt.Create(ctx, "c1", spec, true); !errors.Is(err, instances.ErrAlreadyExists) {
		t.Errorf("create a taken id: %v, want ErrAlreadyExists", err)
	}
	if again, _ := rt.Get(ctx, "c1"); again.State != instances.StateCreated {
		t.Errorf("the refused create changed the instance: %+v", again)
	}
	if _, err := rt.Get(ctx, "nope"); !errors.Is(err, instances.ErrNotFound) {
		t.Errorf("get unknown: %v, want ErrNotFound", err)
	}
	if _, err := rt.Start(ctx, "nope"); !errors.Is(err, instances.ErrNotFound) {
		t.Errorf("start unknown: %v, want ErrNotFound", err)
	}
	if _, err := rt.Stop(ctx, "nope", 0); !errors.Is(err, instances.ErrNotFound) {
		t.Errorf("stop unknown: %v, want ErrNotFound", err)
	}
	if err := rt.Delete(ctx, "nope", true); !errors.Is(err, instances.ErrNotFound) {
		t.Errorf("delete unknown: %v, want ErrNotFound", err)
	}
}

func testExit0(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	mustCreate(t, ctx, rt, "e0", h.Exit0, false)
	in, err := rt.Start(ctx, "e0")
	if err != nil || (in.State != instances.StateRunning && in.State != instances.StateExited) {
		t.Fatalf("start: %+v %v", in, err)
	}
	end := waitEnd(t, ctx, rt, "e0")
	if end.State != instances.StateExited || end.ExitCode != 0 || end.Reason == "" || end.StartedAt.IsZero() || end.FinishedAt.IsZero() {
		t.Fatalf("end: %+v", end)
	}
}

func testExitNonZero(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	mustCreate(t, ctx, rt, "e3", h.ExitNonZero, true)
	end := waitEnd(t, ctx, rt, "e3")
	if end.State != instances.StateExited || end.ExitCode != h.ExitCode || end.Reason == "" {
		t.Fatalf("end: %+v, want EXITED %d", end, h.ExitCode)
	}
}

func testStartNotCreated(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	mustCreate(t, ctx, rt, "run", h.Running, true)
	if _, err := rt.Start(ctx, "run"); !errors.Is(err, instances.ErrFailedPrecondition) {
		t.Errorf("start a running instance: %v, want ErrFailedPrecondition", err)
	}
	mustCreate(t, ctx, rt, "done", h.Exit0, true)
	waitEnd(t, ctx, rt, "done")
	if _, err := rt.Start(ctx, "done"); !errors.Is(err, instances.ErrFailedPrecondition) {
		t.Errorf("start an ended instance: %v, want ErrFailedPrecondition", err)
	}
	if _, err := rt.Stop(ctx, "run", 0); err != nil {
		t.Fatal(err)
	}
}

func testStopGraceThenKill(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	mustCreate(t, ctx, rt, "run", h.Running, true)
	const grace = 200 * time.Millisecond
	t0 := time.Now()
	in, err := rt.Stop(ctx, "run", grace)
	took := time.Since(t0)
	if err != nil || in.State != instances.StateKilled || in.ExitCode != 137 || in.FinishedAt.IsZero() {
		t.Fatalf("stop: %+v %v, want KILLED 137", in, err)
	}
	if took < grace || took > grace+10*time.Second {
		t.Errorf("stop took %v with a grace of %v", took, grace)
	}
	again, err := rt.Stop(ctx, "run", time.Minute)
	if err != nil || again.State != instances.StateKilled || again.Sequence != in.Sequence {
		t.Errorf("stop an ended instance: %+v %v, want it as it was", again, err)
	}
	// One that ends by itself within the grace is not killed.
	mustCreate(t, ctx, rt, "quick", h.Exit0, true)
	if in, err := rt.Stop(ctx, "quick", 30*time.Second); err != nil || in.State != instances.StateExited || in.ExitCode != 0 {
		t.Errorf("stop of a module that exits: %+v %v, want EXITED 0", in, err)
	}
}

func testStopBeforeStart(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	mustCreate(t, ctx, rt, "idle", h.Running, false)
	in, err := rt.Stop(ctx, "idle", time.Second)
	if err != nil || in.State != instances.StateKilled {
		t.Fatalf("stop a created instance: %+v %v, want KILLED", in, err)
	}
	if _, err := rt.Start(ctx, "idle"); !errors.Is(err, instances.ErrFailedPrecondition) {
		t.Errorf("start after stop: %v, want ErrFailedPrecondition", err)
	}
}

func testDelete(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	mustCreate(t, ctx, rt, "run", h.Running, true)
	if err := rt.Delete(ctx, "run", false); !errors.Is(err, instances.ErrFailedPrecondition) {
		t.Errorf("delete a running instance: %v, want ErrFailedPrecondition", err)
	}
	if in, err := rt.Get(ctx, "run"); err != nil || in.State != instances.StateRunning {
		t.Errorf("after a refused delete: %+v %v, want RUNNING", in, err)
	}
	if err := rt.Delete(ctx, "run", true); err != nil {
		t.Fatalf("delete with force: %v", err)
	}
	if _, err := rt.Get(ctx, "run"); !errors.Is(err, instances.ErrNotFound) {
		t.Errorf("get after delete: %v, want ErrNotFound", err)
	}
	mustCreate(t, ctx, rt, "done", h.Exit0, true)
	waitEnd(t, ctx, rt, "done")
	if err := rt.Delete(ctx, "done", false); err != nil {
		t.Fatalf("delete an ended instance: %v", err)
	}
	if err := rt.Delete(ctx, "done", false); !errors.Is(err, instances.ErrNotFound) {
		t.Errorf("delete twice: %v, want ErrNotFound", err)
	}
	// The id is free again.
	mustCreate(t, ctx, rt, "done", h.Exit0, false)
}

func testNotWasmFails(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	for _, start := range []bool{false, true} {
		id := fmt.Sprint("bad-", start)
		in, err := rt.Create(ctx, id, h.NotWasm, start)
		if err != nil {
			t.Fatalf("create (start %v) of content that is not Wasm: %v; want the instance FAILED, not an error", start, err)
		}
		if in.State != instances.StateFailed || in.Reason == "" || in.Message == "" {
			t.Fatalf("create (start %v): %+v, want FAILED with a reason and a message", start, in)
		}
		if got, err := rt.Get(ctx, id); err != nil || got.State != instances.StateFailed {
			t.Fatalf("get: %+v %v", got, err)
		}
		if _, err := rt.Start(ctx, id); !errors.Is(err, instances.ErrFailedPrecondition) {
			t.Errorf("start a failed instance: %v, want ErrFailedPrecondition", err)
		}
		if err := rt.Delete(ctx, id, false); err != nil {
			t.Errorf("delete a failed instance: %v", err)
		}
	}
	// Never EXITED 0 on the way.
	all := collect(t, ctx, rt, 0, "")
	for _, in := range all {
		if in.State == instances.StateExited || in.State == instances.StateRunning {
			t.Errorf("an instance that cannot be prepared went %s: %+v", in.State, in)
		}
	}
}

// collect returns the changes after after kept now (of id, unless "").
func collect(t *testing.T, ctx context.Context, rt instances.Runtime, after uint64, id string) []instances.Instance {
	t.Helper()
	_, newest, err := rt.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []instances.Instance
	if newest <= after {
		return nil
	}
	errDone := errors.New("done")
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = rt.Watch(wctx, after, "", func(in instances.Instance) error {
		if id == "" || in.ID == id {
			out = append(out, in)
		}
		if in.Sequence >= newest {
			return errDone
		}
		return nil
	})
	if err != errDone {
		t.Fatalf("watch after %d to %d: %v", after, newest, err)
	}
	return out
}

func ids(ins []instances.Instance) []string {
	var out []string
	for _, in := range ins {
		out = append(out, in.ID)
	}
	slices.Sort(out)
	return out
}

func testList(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	if list, seq, err := rt.List(ctx, nil); err != nil || len(list) != 0 {
		t.Fatalf("list of a fresh runtime: %v %d %v", list, seq, err)
	}
	var newest uint64
	for i, app := range []string{"a", "b", "a"} {
		in := mustCreate(t, ctx, rt, fmt.Sprint("l", i), labelled(h.Exit0, "app", app, "n", fmt.Sprint(i)), false)
		newest = max(newest, in.Sequence)
	}
	list, seq, err := rt.List(ctx, map[string]string{"app": "a"})
	if err != nil || fmt.Sprint(ids(list)) != "[l0 l2]" || seq < newest {
		t.Fatalf("list app=a: %v, sequence %d (newest change %d), %v", ids(list), seq, newest, err)
	}
	for _, in := range list {
		if in.State != instances.StateCreated || !maps.Equal(in.Spec.Labels, map[string]string{"app": "a", "n": in.ID[1:]}) {
			t.Errorf("listed %+v", in)
		}
	}
	if all, _, _ := rt.List(ctx, nil); fmt.Sprint(ids(all)) != "[l0 l1 l2]" {
		t.Errorf("list all: %v", ids(all))
	}
	if none, _, _ := rt.List(ctx, map[string]string{"app": "a", "n": "1"}); len(none) != 0 {
		t.Errorf("list with a selector nothing matches: %v", ids(none))
	}
	// Watching from the listing's sequence misses nothing after it, and
	// gives nothing before it.
	if _, err := rt.Stop(ctx, "l1", 0); err != nil {
		t.Fatal(err)
	}
	after := collect(t, ctx, rt, seq, "")
	if len(after) != 1 || after[0].ID != "l1" || after[0].State != instances.StateKilled || after[0].Sequence <= seq {
		t.Fatalf("changes after the listing: %+v", after)
	}
}

func testWatch(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	_, start, err := rt.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A watcher from before the changes sees them as they happen.
	live := make(chan []instances.Instance, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		var got []instances.Instance
		rt.Watch(wctx, start, "w1", func(in instances.Instance) error {
			got = append(got, in)
			if in.State.Terminal() {
				return errors.New("ended")
			}
			return nil
		})
		live <- got
	}()
	mustCreate(t, ctx, rt, "w0", h.Exit0, true)
	mustCreate(t, ctx, rt, "w1", h.ExitNonZero, true)
	waitEnd(t, ctx, rt, "w0")
	waitEnd(t, ctx, rt, "w1")

	all := collect(t, ctx, rt, start, "")
	var prev uint64
	states := map[string][]string{}
	for _, in := range all {
		if in.Sequence <= prev {
			t.Fatalf("sequence %d after %d: out of order", in.Sequence, prev)
		}
		prev = in.Sequence
		states[in.ID] = append(states[in.ID], in.State.String())
	}
	for _, id := range []string{"w0", "w1"} {
		if got := fmt.Sprint(states[id]); got != "[CREATED RUNNING EXITED]" {
			t.Errorf("%s went %s", id, got)
		}
	}
	select {
	case got := <-live:
		var s []string
		for _, in := range got {
			if in.ID != "w1" {
				t.Errorf("a watch of w1 was given %s", in.ID)
			}
			s = append(s, in.State.String())
		}
		if fmt.Sprint(s) != "[CREATED RUNNING EXITED]" {
			t.Errorf("live watch of w1: %v", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the live watch did not see w1 end")
	}

	// From the middle: only what came after.
	mid := all[len(all)/2].Sequence
	rest := collect(t, ctx, rt, mid, "")
	if len(rest) != len(all)-len(all)/2-1 || rest[0].Sequence != all[len(all)/2+1].Sequence {
		t.Errorf("after %d: %d changes, want %d", mid, len(rest), len(all)-len(all)/2-1)
	}
	// One id only.
	for _, in := range collect(t, ctx, rt, start, "w0") {
		if in.ID != "w0" {
			t.Errorf("a watch of w0 was given %s", in.ID)
		}
	}
	// A sequence this runtime never gave: another executor's.
	if err := rt.Watch(ctx, prev+1000, "", func(instances.Instance) error { return nil }); !errors.Is(err, instances.ErrFailedPrecondition) {
		t.Errorf("watch after a sequence not yet given: %v, want ErrFailedPrecondition", err)
	}
}

func testWatchBehind(t *testing.T, h Harness) {
	const history = 2
	rt, ctx := h.New(t, history), ctxFor(t)
	var first instances.Instance
	for i := range 4 {
		in := mustCreate(t, ctx, rt, fmt.Sprint("b", i), h.Exit0, false)
		if i == 0 {
			first = in
		}
	}
	called := 0
	err := rt.Watch(ctx, first.Sequence, "", func(instances.Instance) error { called++; return nil })
	if !errors.Is(err, instances.ErrBehind) || called != 0 {
		t.Fatalf("watch after %d with %d changes kept: %v after %d changes, want ErrBehind and none", first.Sequence, history, err, called)
	}
	// Listing again gives a sequence to watch from.
	list, seq, err := rt.List(ctx, nil)
	if err != nil || len(list) != 4 {
		t.Fatalf("list: %d %v", len(list), err)
	}
	if _, err := rt.Stop(ctx, "b0", 0); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, ctx, rt, seq, ""); len(got) != 1 || got[0].ID != "b0" {
		t.Fatalf("after the new listing: %+v", got)
	}
	// From 0: the oldest kept, not ErrBehind.
	if got := collect(t, ctx, rt, 0, ""); len(got) == 0 || len(got) > history {
		t.Errorf("watch from 0 with %d kept: %d changes", history, len(got))
	}
}

func testWatchContext(t *testing.T, h Harness) {
	rt := h.New(t, 0)
	ctx, cancel := context.WithTimeout(ctxFor(t), 300*time.Millisecond)
	defer cancel()
	err := rt.Watch(ctx, 0, "", func(instances.Instance) error { return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("watch whose context ends: %v, want context.DeadlineExceeded", err)
	}
}

func testStats(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	mustCreate(t, ctx, rt, "s", labelled(h.Running, "app", "s"), true)
	mustCreate(t, ctx, rt, "idle", labelled(h.Running, "app", "s"), false)
	stats, err := rt.Stats(ctx, map[string]string{"app": "s"})
	if err != nil {
		t.Fatal(err)
	}
	var st *instances.Stats
	for i := range stats {
		if stats[i].ID == "s" {
			st = &stats[i]
		}
	}
	if st == nil || st.State != instances.StateRunning || st.Labels["app"] != "s" || st.Time.IsZero() {
		t.Fatalf("stats: %+v, want s RUNNING", stats)
	}
	if h.MeasuresUsage && st.MemoryBytes <= 0 {
		t.Errorf("stats of a running instance: memory %d", st.MemoryBytes)
	}
	if none, err := rt.Stats(ctx, map[string]string{"app": "other"}); err != nil || len(none) != 0 {
		t.Errorf("stats with a selector nothing matches: %+v %v", none, err)
	}
	if _, err := rt.Stop(ctx, "s", 0); err != nil {
		t.Fatal(err)
	}
}

func testInfo(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	info, err := rt.Info(ctx)
	if err != nil || info.ExecutorID == "" || info.Engine == "" || info.Instances != 0 {
		t.Fatalf("info: %+v %v", info, err)
	}
	mustCreate(t, ctx, rt, "i", h.Exit0, false)
	if info, err := rt.Info(ctx); err != nil || info.Instances != 1 {
		t.Errorf("info with one instance: %+v %v", info, err)
	}
}

// testListeners: listeners are checked at Create (UDP, a port or name
// twice, a relative namespace path: ErrInvalidArgument); a Runtime that
// cannot hand them over (Info.Listeners false) refuses them with
// ErrUnsupported and records nothing; one that can keeps them in the spec.
// Handed listeners need listeners (ErrInvalidArgument); a Runtime that
// takes none (Info.ListenerHandoff false) refuses them with
// ErrUnsupported, and one that does fails an instance whose listeners were
// not handed over with ReasonListenFailed.
func testListeners(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	info, err := rt.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	with := func(s instances.Spec, ls ...instances.Listener) instances.Spec {
		s.Listeners = ls
		return s
	}
	for name, spec := range map[string]instances.Spec{
		"udp":           with(h.Exit0, instances.Listener{Name: "dns", Port: 53, Protocol: instances.ProtocolUDP}),
		"port 0":        with(h.Exit0, instances.Listener{Name: "http", Port: 0}),
		"port twice":    with(h.Exit0, instances.Listener{Name: "a", Port: 80}, instances.Listener{Name: "b", Port: 80}),
		"name twice":    with(h.Exit0, instances.Listener{Port: 80}, instances.Listener{Name: "port-80", Port: 81}),
		"colon in name": with(h.Exit0, instances.Listener{Name: "a:b", Port: 80}),
		"relative netns": func() instances.Spec {
			s := with(h.Exit0, instances.Listener{Name: "http", Port: 80})
			s.NetworkNamespace = "netns/x"
			return s
		}(),
		"bad address": func() instances.Spec {
			s := with(h.Exit0, instances.Listener{Name: "http", Port: 80})
			s.ListenAddress = "localhost"
			return s
		}(),
		"handed, no listeners": func() instances.Spec {
			s := h.Exit0
			s.HandedListeners = true
			return s
		}(),
	} {
		if _, err := rt.Create(ctx, "bad", spec, false); !errors.Is(err, instances.ErrInvalidArgument) {
			t.Errorf("%s: create: %v, want ErrInvalidArgument", name, err)
		}
	}
	spec := with(h.Exit0, instances.Listener{Name: "http", Port: 8080, Protocol: instances.ProtocolTCP}, instances.Listener{Port: 9090})
	spec.NetworkNamespace, spec.ListenAddress = "/var/run/netns/none", "10.0.0.5"
	if !info.Listeners {
		if _, err := rt.Create(ctx, "l", spec, false); !errors.Is(err, instances.ErrUnsupported) {
			t.Fatalf("create with listeners where Info.Listeners is false: %v, want ErrUnsupported", err)
		}
		if _, err := rt.Get(ctx, "l"); !errors.Is(err, instances.ErrNotFound) {
			t.Errorf("a refused instance was recorded: %v", err)
		}
		return
	}
	in := mustCreate(t, ctx, rt, "l", spec, false)
	if !slices.Equal(in.Spec.Listeners, spec.Listeners) || in.Spec.NetworkNamespace != spec.NetworkNamespace || in.Spec.ListenAddress != spec.ListenAddress {
		t.Errorf("created with listeners: %+v, want %+v", in.Spec, spec)
	}
	got, err := rt.Get(ctx, "l")
	if err != nil || !slices.Equal(got.Spec.Listeners, spec.Listeners) {
		t.Errorf("get: %+v %v", got.Spec.Listeners, err)
	}

	handed := with(h.Exit0, instances.Listener{Name: "http", Port: 8080})
	handed.HandedListeners = true
	if !info.ListenerHandoff {
		if _, err := rt.Create(ctx, "h", handed, false); !errors.Is(err, instances.ErrUnsupported) {
			t.Fatalf("create with handed listeners where Info.ListenerHandoff is false: %v, want ErrUnsupported", err)
		}
		if _, err := rt.Get(ctx, "h"); !errors.Is(err, instances.ErrNotFound) {
			t.Errorf("a refused instance was recorded: %v", err)
		}
		return
	}
	in, err = rt.Create(ctx, "h", handed, true)
	if err != nil || in.State != instances.StateFailed || in.Reason != instances.ReasonListenFailed || !in.Spec.HandedListeners {
		t.Errorf("create with listeners never handed over: %+v %v, want FAILED %s", in, err, instances.ReasonListenFailed)
	}
}

// testHandlers: a handler mode is checked at Create (one not known, or
// one without listeners: ErrInvalidArgument); a Runtime that does not run
// it (not in Info.HandlerModes) refuses it with ErrUnsupported and records
// nothing; one that does keeps it in the spec, also with listeners it
// would not hand to a module (the executor serves them).
func testHandlers(t *testing.T, h Harness) {
	rt, ctx := h.New(t, 0), ctxFor(t)
	info, err := rt.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spec := func(mode instances.HandlerMode, ls ...instances.Listener) instances.Spec {
		s := h.Exit0
		s.Handler, s.Listeners = mode, ls
		return s
	}
	http := instances.Listener{Name: "http", Port: 8080}
	for name, s := range map[string]instances.Spec{
		"unknown mode":         spec("fastcgi", http),
		"wagi, no listeners":   spec(instances.HandlerWAGI),
		"unknown, no listener": spec("x"),
	} {
		if _, err := rt.Create(ctx, "bad", s, false); !errors.Is(err, instances.ErrInvalidArgument) {
			t.Errorf("%s: create: %v, want ErrInvalidArgument", name, err)
		}
	}
	if !slices.Contains(info.HandlerModes, instances.HandlerWAGI) {
		if _, err := rt.Create(ctx, "w", spec(instances.HandlerWAGI, http), false); !errors.Is(err, instances.ErrUnsupported) {
			t.Fatalf("create in handler mode wagi where Info.HandlerModes does not list it: %v, want ErrUnsupported", err)
		}
		if _, err := rt.Get(ctx, "w"); !errors.Is(err, instances.ErrNotFound) {
			t.Errorf("a refused instance was recorded: %v", err)
		}
		return
	}
	in := mustCreate(t, ctx, rt, "w", spec(instances.HandlerWAGI, http), false)
	if in.State != instances.StateCreated || in.Spec.Handler != instances.HandlerWAGI || !slices.Equal(in.Spec.Listeners, []instances.Listener{http}) {
		t.Errorf("created in handler mode: %+v, want CREATED with the mode and listener kept", in)
	}
	if got, err := rt.Get(ctx, "w"); err != nil || got.Spec.Handler != instances.HandlerWAGI {
		t.Errorf("get: %+v %v", got.Spec, err)
	}
}
