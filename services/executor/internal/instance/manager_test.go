package instance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/logmsg"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/internal/testharness/natstest"
	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/wasmtime"
	"github.com/wasmlet/wasmlet/services/executor/internal/logs"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// fileCache is test scaffolding: a regcache.Cache serving files by digest.
type fileCache struct {
	mu      sync.Mutex
	files   map[string]string // digest -> path
	fetches int
}

func (c *fileCache) add(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	d := "sha256:" + hex.EncodeToString(s[:])
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.files == nil {
		c.files = map[string]string{}
	}
	c.files[d] = path
	return d
}

func (c *fileCache) Resolve(context.Context, regcache.ResolveRequest) (regcache.Resolved, error) {
	return regcache.Resolved{}, errors.New("not in this test")
}

func (c *fileCache) Fetch(_ context.Context, digest string) (io.ReadCloser, int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fetches++
	p, ok := c.files[digest]
	if !ok {
		return nil, 0, fmt.Errorf("fetch %s: %w", digest, regcache.ErrNotFound)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, err
	}
	fi, _ := f.Stat()
	return f, fi.Size(), nil
}

var sharedEngine struct {
	once sync.Once
	dir  string
	eng  *wasmtime.Engine
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedEngine.dir != "" {
		os.RemoveAll(sharedEngine.dir)
	}
	os.Exit(code)
}

// testEngine is shared by the package's tests so that each module is
// compiled once.
func testEngine(t *testing.T) *wasmtime.Engine {
	t.Helper()
	sharedEngine.once.Do(func() {
		dir, err := os.MkdirTemp("", "instance-test-engine-")
		if err != nil {
			sharedEngine.err = err
			return
		}
		sharedEngine.dir = dir
		sharedEngine.eng, sharedEngine.err = wasmtime.New(wasmtime.Config{CacheDir: dir})
	})
	if sharedEngine.err != nil {
		t.Fatal(sharedEngine.err)
	}
	return sharedEngine.eng
}

func newManager(t *testing.T, cache regcache.Cache, mod func(*Config)) *Manager {
	t.Helper()
	cfg := Config{ExecutorID: "exec-1", Engine: testEngine(t), Cache: cache, ModuleDir: t.TempDir()}
	if mod != nil {
		mod(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m.Shutdown(ctx)
	})
	return m
}

// waitState waits for the instance to reach a terminal state through the
// event log, as a watcher would.
func waitEnd(t *testing.T, m *Manager, id string) instances.Instance {
	t.Helper()
	var after uint64
	deadline := time.After(30 * time.Second)
	for {
		evs, changed, err := m.journal.After(after)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			after = ev.Instance.Sequence
			if ev.Instance.ID == id && ev.Instance.State.Terminal() {
				return ev.Instance
			}
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("instance %s did not end", id)
		}
	}
}

func helloSpec(digest string, env ...instances.EnvVar) instances.Spec {
	return instances.Spec{Module: instances.Module{Digest: digest}, Args: []string{"hello", "x"}, Env: env, Labels: map[string]string{"app": "hello"}}
}

func TestLifecycle(t *testing.T) {
	cache := &fileCache{}
	d := cache.add(t, wasmbuild.Build(t, "hello"))
	m := newManager(t, cache, nil)
	ctx := context.Background()

	in, err := m.Create(ctx, "a", helloSpec(d, instances.EnvVar{Name: "EXIT_CODE", Value: "3"}), false)
	if err != nil || in.State != instances.StateCreated {
		t.Fatalf("create: %+v %v", in, err)
	}
	in, err = m.Start(ctx, "a")
	if err != nil || in.State != instances.StateRunning || in.StartedAt.IsZero() {
		t.Fatalf("start: %+v %v", in, err)
	}
	end := waitEnd(t, m, "a")
	if end.State != instances.StateExited || end.ExitCode != 3 || end.Reason != engine.ReasonError || end.FinishedAt.IsZero() {
		t.Fatalf("end: %+v", end)
	}
	if _, err := m.Start(ctx, "a"); !errors.Is(err, instances.ErrFailedPrecondition) {
		t.Fatalf("start of an ended instance: %v", err)
	}
	evs, _, _ := m.journal.After(0)
	var got []string
	for i, ev := range evs {
		if ev.Instance.Sequence != uint64(i+1) || ev.Instance.Sequence != ev.Instance.Sequence {
			t.Fatalf("event %d: sequence %d", i, ev.Instance.Sequence)
		}
		got = append(got, ev.Instance.State.String())
	}
	if strings.Join(got, ",") != "CREATED,RUNNING,EXITED" {
		t.Fatalf("events %v", got)
	}
	// Resuming after the second event gives only the third.
	evs, _, _ = m.journal.After(2)
	if len(evs) != 1 || evs[0].Instance.State != instances.StateExited {
		t.Fatalf("resume: %+v", evs)
	}
	if _, _, err := m.journal.After(99); !errors.Is(err, instances.ErrFailedPrecondition) {
		t.Fatalf("after a future sequence: %v", err)
	}

	// Same module again: no second fetch.
	if _, err := m.Create(ctx, "b", helloSpec(d), true); err != nil {
		t.Fatal(err)
	}
	if end := waitEnd(t, m, "b"); end.State != instances.StateExited || end.ExitCode != 0 || end.Reason != engine.ReasonCompleted {
		t.Fatalf("b: %+v", end)
	}
	if cache.fetches != 1 {
		t.Fatalf("%d fetches, want 1", cache.fetches)
	}
	if err := m.Delete(ctx, "a", false); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, "a"); !errors.Is(err, instances.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
}

func TestCreateErrors(t *testing.T) {
	cache := &fileCache{}
	hello := cache.add(t, wasmbuild.Build(t, "hello"))
	invalid := cache.add(t, wasmbuild.Wat(t, `(module (import "env" "nope" (func)) (func (export "_start")))`))
	// A cache that serves other bytes than the digest names.
	other := wasmbuild.Wat(t, `(module (func (export "_start")))`)
	liar := "sha256:" + strings.Repeat("ab", 32)
	cache.files[liar] = other
	m := newManager(t, cache, func(c *Config) { c.MaxInstances = 5 })
	ctx := context.Background()

	for _, tc := range []struct {
		id     string
		spec   instances.Spec
		err    error
		reason string
	}{
		{"", helloSpec(hello), instances.ErrInvalidArgument, ""},
		{"bad/id", helloSpec(hello), instances.ErrInvalidArgument, ""},
		{"x1", helloSpec("sha256:1234"), instances.ErrInvalidArgument, ""},
		{"x3", instances.Spec{Module: instances.Module{Digest: hello}, CPULimitMillis: -1}, instances.ErrInvalidArgument, ""},
		{"x2", instances.Spec{Module: instances.Module{Digest: hello}, Preopens: []instances.Preopen{{HostPath: "relative", GuestPath: "/d"}}}, instances.ErrInvalidArgument, ""},
		{"missing", helloSpec("sha256:" + strings.Repeat("0", 64)), nil, ReasonModuleNotFound},
		{"mismatch", helloSpec(liar), nil, ReasonModuleDigest},
		{"unsupported", helloSpec(invalid), nil, ReasonModuleUnsupported},
	} {
		in, err := m.Create(ctx, tc.id, tc.spec, true)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("create %q: %v, want %v", tc.id, err, tc.err)
			}
			continue
		}
		if err != nil || in.State != instances.StateFailed || in.Reason != tc.reason || in.Message == "" {
			t.Errorf("create %q: %+v %v, want FAILED %s", tc.id, in, err, tc.reason)
		}
		t.Logf("%s: %s", in.Reason, in.Message)
	}
	if _, err := m.Create(ctx, "missing", helloSpec(hello), false); !errors.Is(err, instances.ErrAlreadyExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := m.Create(ctx, "c4", helloSpec(hello), false); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, "c5", helloSpec(hello), false); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, "c6", helloSpec(hello), false); !errors.Is(err, instances.ErrResourceExhausted) {
		t.Fatalf("over the limit: %v", err)
	}
}

func TestStop(t *testing.T) {
	cache := &fileCache{}
	spin := cache.add(t, wasmbuild.Build(t, "spin"))
	hello := cache.add(t, wasmbuild.Build(t, "hello"))
	m := newManager(t, cache, nil)
	ctx := context.Background()

	if _, err := m.Create(ctx, "spin", instances.Spec{Module: instances.Module{Digest: spin}, Args: []string{"spin"}}, true); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, "spin", false); !errors.Is(err, instances.ErrFailedPrecondition) {
		t.Fatalf("delete running: %v", err)
	}
	t0 := time.Now()
	in, err := m.Stop(ctx, "spin", 200*time.Millisecond)
	took := time.Since(t0)
	if err != nil || in.State != instances.StateKilled || in.ExitCode != engine.KilledExitCode || in.Reason != engine.ReasonKilled || !strings.Contains(in.Message, "grace period of 200ms") {
		t.Fatalf("stop: %+v %v", in, err)
	}
	if took < 200*time.Millisecond || took > 2*time.Second {
		t.Fatalf("stop took %v with a grace of 200ms", took)
	}
	// Stopping again is not an error.
	if in, err := m.Stop(ctx, "spin", 0); err != nil || in.State != instances.StateKilled {
		t.Fatalf("second stop: %+v %v", in, err)
	}

	// A module that ends by itself within the grace period exits.
	if _, err := m.Create(ctx, "hello", helloSpec(hello), true); err != nil {
		t.Fatal(err)
	}
	in, err = m.Stop(ctx, "hello", 20*time.Second)
	if err != nil || in.State != instances.StateExited || in.ExitCode != 0 {
		t.Fatalf("stop hello: %+v %v", in, err)
	}

	// Stop before start.
	if _, err := m.Create(ctx, "idle", helloSpec(hello), false); err != nil {
		t.Fatal(err)
	}
	if in, err := m.Stop(ctx, "idle", time.Second); err != nil || in.State != instances.StateKilled || in.Reason != ReasonStoppedBeforeStart {
		t.Fatalf("stop created: %+v %v", in, err)
	}
	if _, err := m.Start(ctx, "idle"); !errors.Is(err, instances.ErrFailedPrecondition) {
		t.Fatalf("start after stop: %v", err)
	}

	// Force delete of a running instance.
	if _, err := m.Create(ctx, "spin2", instances.Spec{Module: instances.Module{Digest: spin}}, true); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, "spin2", true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, "spin2"); !errors.Is(err, instances.ErrNotFound) {
		t.Fatalf("get: %v", err)
	}
	if _, err := m.Stop(ctx, "nope", 0); !errors.Is(err, instances.ErrNotFound) {
		t.Fatalf("stop unknown: %v", err)
	}
}

func TestListAndHistory(t *testing.T) {
	cache := &fileCache{}
	hello := cache.add(t, wasmbuild.Build(t, "hello"))
	m := newManager(t, cache, func(c *Config) { c.History = 4 })
	ctx := context.Background()
	for i, app := range []string{"a", "b", "a"} {
		spec := helloSpec(hello)
		spec.Labels = map[string]string{"app": app, "n": fmt.Sprint(i)}
		if _, err := m.Create(ctx, fmt.Sprintf("i%d", i), spec, false); err != nil {
			t.Fatal(err)
		}
	}
	list, seq, _ := m.List(ctx, map[string]string{"app": "a"})
	if len(list) != 2 || list[0].ID != "i0" || list[1].ID != "i2" || seq != 3 {
		t.Fatalf("list: %d %d", len(list), seq)
	}
	if all, _, _ := m.List(ctx, nil); len(all) != 3 {
		t.Fatalf("list all: %d", len(all))
	}
	if none, _, _ := m.List(ctx, map[string]string{"app": "a", "n": "1"}); len(none) != 0 {
		t.Fatalf("list none: %d", len(none))
	}
	if one, _, _ := m.List(ctx, map[string]string{"app": "a", "n": "2"}); len(one) != 1 || one[0].ID != "i2" {
		t.Fatalf("list by two labels: %+v", one)
	}
	if none, _, _ := m.List(ctx, map[string]string{"app": "c"}); len(none) != 0 {
		t.Fatalf("list an unknown label: %d", len(none))
	}
	for _, id := range []string{"i0", "i1", "i2"} {
		m.Stop(ctx, id, 0)
	}
	evs, _, _ := m.journal.After(0)
	if len(evs) != 4 || evs[0].Instance.Sequence != 3 || evs[3].Instance.Sequence != 6 {
		t.Fatalf("history: %+v", evs)
	}
	// A deleted instance is listed no more, by any of its labels.
	if err := m.Delete(ctx, "i0", false); err != nil {
		t.Fatal(err)
	}
	if list, _, _ := m.List(ctx, map[string]string{"app": "a"}); len(list) != 1 || list[0].ID != "i2" {
		t.Fatalf("list after a delete: %+v", list)
	}
	if none, _, _ := m.List(ctx, map[string]string{"n": "0"}); len(none) != 0 {
		t.Fatalf("a deleted instance by its other label: %+v", none)
	}
}

func TestTransitions(t *testing.T) {
	legal := map[[2]instances.State]bool{
		{instances.StateUnspecified, instances.StateCreated}: true, {instances.StateUnspecified, instances.StateFailed}: true,
		{instances.StateCreated, instances.StateRunning}: true, {instances.StateCreated, instances.StateFailed}: true, {instances.StateCreated, instances.StateKilled}: true,
		{instances.StateRunning, instances.StateExited}: true, {instances.StateRunning, instances.StateKilled}: true,
	}
	for from := instances.StateUnspecified; from <= instances.StateFailed; from++ {
		for to := instances.StateUnspecified; to <= instances.StateFailed; to++ {
			err := checkTransition(from, to)
			if (err == nil) != legal[[2]instances.State{from, to}] {
				t.Errorf("%s -> %s: %v", from, to, err)
			}
			if err != nil && !errors.Is(err, instances.ErrFailedPrecondition) {
				t.Errorf("%s -> %s: %v does not wrap instances.ErrFailedPrecondition", from, to, err)
			}
		}
	}
}

func TestPublishesEventsAndLogs(t *testing.T) {
	_, js := natstest.JetStream(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cache := &fileCache{}
	hello := cache.add(t, wasmbuild.Build(t, "hello"))
	m := newManager(t, cache, func(c *Config) { c.JetStream = js })
	spec := helloSpec(hello, instances.EnvVar{Name: "GREETING", Value: "hej"})
	spec.LogSubject = subjects.Logs("node", "ns", "pod", "c")
	if _, err := m.Create(ctx, "inst.1", spec, true); err != nil {
		t.Fatal(err)
	}
	waitEnd(t, m, "inst.1")

	var lines []string
	for _, lr := range fetchLogs(t, ctx, js, spec.LogSubject, 3) {
		lines = append(lines, fmt.Sprintf("%d %s %s", lr.GetSequence(), lr.GetStream(), lr.GetLine()))
	}
	// stdout and stderr are read concurrently: order only within a stream.
	joined := strings.Join(lines, "\n")
	for _, want := range []string{"STREAM_STDOUT args: x", "STREAM_STDOUT greeting: hej", "STREAM_STDERR hello on stderr"} {
		if !strings.Contains(joined, want) {
			t.Fatalf("log records:\n%s\nwant %q", joined, want)
		}
	}
	var states []string
	for _, r := range fetch(t, ctx, js, subjects.EventsStream, subjects.Events("exec-1", "inst.1"), 3) {
		ev := &eventsv1.InstanceEvent{}
		if err := proto.Unmarshal(r, ev); err != nil {
			t.Fatal(err)
		}
		if ev.GetExecutorId() != "exec-1" || ev.GetInstanceId() != "inst.1" || ev.GetLabels()["app"] != "hello" {
			t.Fatalf("event %v", ev)
		}
		states = append(states, fmt.Sprintf("%d:%s", ev.GetSequence(), ev.GetState()))
	}
	if got := strings.Join(states, ","); got != "1:INSTANCE_STATE_CREATED,2:INSTANCE_STATE_RUNNING,3:INSTANCE_STATE_EXITED" {
		t.Fatalf("events %s", got)
	}

	// The metrics count the start, the exited instance, and what reached
	// NATS; deleting the instance keeps its log records' count.
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collector())
	if err := m.Delete(ctx, "inst.1", false); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP wasmlet_executor_instance_starts_total Instances the engine started.
# TYPE wasmlet_executor_instance_starts_total counter
wasmlet_executor_instance_starts_total 1
# HELP wasmlet_executor_instances Instances held, by state.
# TYPE wasmlet_executor_instances gauge
wasmlet_executor_instances{state="CREATED"} 0
wasmlet_executor_instances{state="EXITED"} 0
wasmlet_executor_instances{state="FAILED"} 0
wasmlet_executor_instances{state="KILLED"} 0
wasmlet_executor_instances{state="RUNNING"} 0
# HELP wasmlet_executor_nats_dropped_total Log lines or events dropped: displaced from a full outbox, left at close, or produced with no NATS; by kind.
# TYPE wasmlet_executor_nats_dropped_total counter
wasmlet_executor_nats_dropped_total{kind="event"} 0
wasmlet_executor_nats_dropped_total{kind="log"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "wasmlet_executor_instance_starts_total", "wasmlet_executor_instances", "wasmlet_executor_nats_dropped_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.Collector(), "wasmlet_executor_instance_start_duration_seconds"); n != 1 {
		t.Errorf("start latency histogram: %d series", n)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "wasmlet_executor_nats_published_total" {
			for _, mt := range mf.GetMetric() {
				// 3 log records and 3 events; an event's ack may still be in flight.
				if v := mt.GetCounter().GetValue(); v < 2 {
					t.Errorf("published %v = %v", mt.GetLabel(), v)
				}
			}
		}
	}
}

func fetch(t *testing.T, ctx context.Context, js jetstream.JetStream, stream, subject string, n int) [][]byte {
	t.Helper()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for len(out) < n {
		batch, err := cons.Fetch(n-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for msg := range batch.Messages() {
			out = append(out, bytes.Clone(msg.Data()))
			k++
		}
		if k == 0 {
			t.Fatalf("%s: got %d messages, want %d", subject, len(out), n)
		}
	}
	return out
}

// fetchLogs reads n log records from subject.
func fetchLogs(t *testing.T, ctx context.Context, js jetstream.JetStream, subject string, n int) []*eventsv1.LogRecord {
	t.Helper()
	out, err := logs.Read(ctx, js, subject, n, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestChattyLogsReachNATS(t *testing.T) {
	_, js := natstest.JetStream(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cache := &fileCache{}
	chatty := cache.add(t, wasmbuild.Build(t, "chatty"))
	m := newManager(t, cache, func(c *Config) { c.JetStream = js; c.LogFlush = 20 * time.Second })
	const n = 20000
	subject := subjects.Logs("node", "ns", "chatty", "c")
	t0 := time.Now()
	if _, err := m.Create(ctx, "chatty", instances.Spec{Module: instances.Module{Digest: chatty}, Args: []string{"chatty", fmt.Sprint(n)}, LogSubject: subject}, true); err != nil {
		t.Fatal(err)
	}
	end := waitEnd(t, m, "chatty")
	took := time.Since(t0)
	if end.State != instances.StateExited || end.ExitCode != 0 {
		t.Fatalf("end %+v", end)
	}
	si, err := js.Stream(ctx, subjects.LogsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := si.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	msgs := info.State.Subjects[subject]
	var got uint64
	cons, err := js.OrderedConsumer(ctx, subjects.LogsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var lastRec *eventsv1.LogRecord
	for read := uint64(0); read < msgs; {
		batch, err := cons.Fetch(int(min(msgs-read, 512)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for msg := range batch.Messages() {
			rs, err := logmsg.Decode(msg.Headers(), msg.Data())
			if err != nil {
				t.Fatal(err)
			}
			got += uint64(len(rs))
			if len(rs) > 0 {
				lastRec = rs[len(rs)-1]
			}
			k++
		}
		if k == 0 {
			t.Fatalf("read %d of %d messages", read, msgs)
		}
		read += uint64(k)
	}
	t.Logf("%d lines: %d records in %d messages in the stream, %v from create to the end being recorded, %v from start to end", n, got, msgs, took, end.FinishedAt.Sub(end.StartedAt))
	// Lines may be dropped only under the outbox's policy; here NATS is
	// local and fast, so nearly all arrive, and the newest always do. The
	// records come in batches: fewer messages than lines when the module
	// writes several lines at once.
	if got < n/2 {
		t.Fatalf("only %d of %d records reached the stream", got, n)
	}
	r := lastRec
	if r.GetSequence() != n || string(r.GetLine()) != fmt.Sprintf("line %d", n) {
		t.Fatalf("last record %v", r)
	}
}

// The executor mounts only what lies under its mount roots, and opens it
// without following a link a module could have placed: the shape of the
// subPath escape (a module replaces a subPath directory of its volume by a
// link climbing to the host's root, then is restarted).
func TestPreopensBeneathMountRoots(t *testing.T) {
	cache := &fileCache{}
	hello := cache.add(t, wasmbuild.Build(t, "hello"))
	pods := t.TempDir()
	vol := pods + "/uid/volumes/data"
	if err := os.MkdirAll(vol+"/x", 0o750); err != nil {
		t.Fatal(err)
	}
	secret := t.TempDir() + "/hostname"
	if err := os.WriteFile(secret, []byte("the host's file"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := newManager(t, cache, func(c *Config) { c.MountRoots = []string{pods} })
	ctx := context.Background()
	spec := func(host string, env ...instances.EnvVar) instances.Spec {
		s := helloSpec(hello, env...)
		s.Preopens = []instances.Preopen{{HostPath: host, GuestPath: "/x"}}
		return s
	}

	if _, err := m.Create(ctx, "outside", spec(t.TempDir()), true); !errors.Is(err, instances.ErrPermissionDenied) {
		t.Errorf("a preopen outside the mount roots: %v, want instances.ErrPermissionDenied", err)
	}
	if _, err := m.Create(ctx, "climb", spec(pods+"/../etc"), true); !errors.Is(err, instances.ErrPermissionDenied) {
		t.Errorf("a preopen climbing out of the mount roots: %v, want instances.ErrPermissionDenied", err)
	}

	in, err := m.Create(ctx, "ok", spec(vol+"/x", instances.EnvVar{Name: "WRITE_FILE", Value: "/x/out"}), true)
	if err != nil || in.State == instances.StateFailed {
		t.Fatalf("create: %+v %v", in, err)
	}
	if end := waitEnd(t, m, "ok"); end.ExitCode != 0 {
		t.Fatalf("end: %+v", end)
	}
	if b, err := os.ReadFile(vol + "/x/out"); err != nil || string(b) != "written" {
		t.Fatalf("the module's write: %q %v", b, err)
	}

	// The module's own link, as a module can make one in its volume.
	if err := os.RemoveAll(vol + "/x"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../../../../../../../"+filepath.Dir(secret), vol+"/x"); err != nil {
		t.Fatal(err)
	}
	in, err = m.Create(ctx, "escape", spec(vol+"/x", instances.EnvVar{Name: "READ_FILE", Value: "/x/hostname"}), true)
	if err != nil {
		t.Fatal(err)
	}
	if in.State != instances.StateFailed || !strings.Contains(in.Message, "symbolic link") {
		t.Fatalf("a preopen through a symlink: %+v, want FAILED naming the link", in)
	}
	t.Logf("%s: %s", in.Reason, in.Message)
}
