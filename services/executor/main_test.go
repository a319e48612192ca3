package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/natsutil"
	"github.com/wasmlet/wasmlet/internal/natsutil/natsserver"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
	"github.com/wasmlet/wasmlet/services/executor/internal/logs"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	regserver "github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

func TestParseFlags(t *testing.T) {
	if _, err := parseFlags([]string{"--registry", "unix:///r.sock"}); err == nil {
		t.Error("missing --listen accepted")
	}
	if _, err := parseFlags([]string{"--listen", "unix:///e.sock"}); err == nil {
		t.Error("missing --registry accepted")
	}
	if _, err := parseFlags([]string{"--listen", "unix:///e.sock", "--registry", "unix:///r.sock", "--engine", "v8"}); err == nil {
		t.Error("unknown engine accepted")
	}
	if _, err := parseFlags([]string{"--listen", "unix:///e.sock", "--registry", "unix:///r.sock", "--metrics-listen", "0.0.0.0:9465"}); err == nil {
		t.Error("--metrics-listen on all interfaces accepted")
	}
	if _, err := parseFlags([]string{"--listen", "unix:///e.sock", "--registry", "unix:///r.sock", "--listener-socket", "l.sock"}); err == nil {
		t.Error("a relative --listener-socket accepted")
	}
	cfg, err := parseFlags([]string{"--listen", "unix:///e.sock", "--registry", "unix:///r.sock"})
	if err != nil || cfg.ListenerSocket != "" || cfg.MaxInstances != 1000 || cfg.Engine != "wasmtime" || cfg.ID == "" {
		t.Fatalf("defaults: %+v %v", cfg, err)
	}
	for _, n := range []string{"-1", "1048576"} {
		if _, err := parseFlags([]string{"--listen", "unix:///e.sock", "--registry", "unix:///r.sock", "--module-cache-bytes", n}); err == nil || !strings.Contains(err.Error(), "the size of the largest module") {
			t.Errorf("--module-cache-bytes %s: %v, want refused as below the largest module", n, err)
		}
	}
	if cfg, err := parseFlags([]string{"--listen", "unix:///e.sock", "--registry", "unix:///r.sock", "--module-cache-bytes", "8589934592"}); err != nil || cfg.ModuleCacheBytes != 8<<30 {
		t.Errorf("--module-cache-bytes 8 GiB: %d %v", cfg.ModuleCacheBytes, err)
	}
}

func TestExecutorProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the executor binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "executor")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, eng := range []string{"wasmtime", "wazero"} {
		t.Run(eng, func(t *testing.T) { testExecutorProcess(t, ctx, bin, eng) })
	}
}

// testExecutorProcess runs the executor binary bin with engine eng against
// a real NATS server and registry cache, and drives it over gRPC.
func testExecutorProcess(t *testing.T, ctx context.Context, bin, eng string) {
	tmp := t.TempDir()
	const token = "s3cret"
	ns, err := natsserver.Start(natsserver.Config{StoreDir: filepath.Join(tmp, "nats"), Token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()

	// The registry cache: its real gRPC server over a file map.
	sockDir, err := os.MkdirTemp("", "exproc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	cache := cachetest.Files{}
	digest := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(s[:])
		cache[d] = path
		return d
	}
	hello := digest(wasmbuild.Build(t, "hello"))
	spin := digest(wasmbuild.Build(t, "spin"))
	regAddr := "unix://" + filepath.Join(sockDir, "reg.sock")
	rl, err := grpcutil.Listen(regAddr)
	if err != nil {
		t.Fatal(err)
	}
	serveRegistry(t, rl, cache)

	// The state dir (modules, compiled artifacts) is kept between runs, as
	// on a node: compiling the Go-built modules takes seconds per engine.
	// The engines verify what they load from it.
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	stateDir := filepath.Join(base, "wasmlet-executor-test", eng)
	execAddr := "unix://" + filepath.Join(sockDir, "exec.sock")
	var stderr enginetest.Buffer
	ml, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ml.Addr().String()
	ml.Close()
	cmd := exec.Command(bin, "--listen", execAddr, "--registry", regAddr, "--nats", ns.URL,
		"--state-dir", stateDir, "--id", "exec-test", "--max-instances", "10", "--engine", eng, "--metrics-listen", metricsAddr)
	cmd.Env = append(os.Environ(), "WASMLET_NATS_TOKEN="+token)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("executor stderr:\n%s", stderr.String())
		}
	}()

	conn, err := grpcutil.Dial(execAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := grpcutil.WaitHealthy(ctx, conn); err != nil {
		t.Fatal(err)
	}
	c := executorv1.NewExecutorServiceClient(conn)
	info, err := c.GetInfo(ctx, &executorv1.GetInfoRequest{})
	if err != nil || info.GetExecutorId() != "exec-test" || info.GetMaxInstances() != 10 || info.GetEngine() != eng || info.GetEngineVersion() == "" {
		t.Fatalf("info: %v %v", info, err)
	}

	watch, err := c.WatchInstances(ctx, &executorv1.WatchInstancesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	logSubject := subjects.Logs("node-1", "default", "hello", "main")
	t0 := time.Now()
	if _, err := c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: "hello-1", Start: true, Spec: &executorv1.InstanceSpec{
		Module:     &executorv1.Module{Digest: hello, Reference: "registry.local/hello:v1"},
		Args:       []string{"hello", "from", "e2e"},
		Env:        []*executorv1.EnvVar{{Name: "GREETING", Value: "hi"}, {Name: "EXIT_CODE", Value: "3"}},
		LogSubject: logSubject,
		Labels:     map[string]string{"pod": "default/hello"},
	}}); err != nil {
		t.Fatal(err)
	}
	var end *executorv1.Instance
	for end == nil {
		r, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if in := r.GetInstance(); in.GetState() == executorv1.InstanceState_INSTANCE_STATE_EXITED {
			end = in
		}
	}
	t.Logf("create (fetch, compile unless cached) to EXITED: %v", time.Since(t0))
	if end.GetExitCode() != 3 || end.GetReason() != "Error" || end.GetId() != "hello-1" {
		t.Fatalf("end: %v", end)
	}

	nc, err := natsutil.Connect(ns.URL, token, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var got []string
	for _, r := range fetchLogs(t, ctx, js, logSubject, 3) {
		got = append(got, string(r.GetLine()))
	}
	joined := strings.Join(got, "\n")
	for _, want := range []string{"args: from e2e", "greeting: hi", "hello on stderr"} {
		if !strings.Contains(joined, want) {
			t.Fatalf("log lines on NATS:\n%s\nwant %q", joined, want)
		}
	}

	// A spinning instance is killed when the executor is told to stop, and
	// its end reaches NATS.
	spinStart := time.Now()
	if _, err := c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: "spin-1", Start: true, Spec: &executorv1.InstanceSpec{
		Module: &executorv1.Module{Digest: spin},
	}}); err != nil {
		t.Fatal(err)
	}
	// Meanwhile: its resource use, and the executor's metrics. Its CPU time
	// reaches 20 ms (within 10 s, however busy the machine), and one
	// thread's cannot exceed the wall time since it started.
	var stats *executorv1.ListInstanceStatsResponse
	var spinStats *executorv1.InstanceStats
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if stats, err = c.ListInstanceStats(ctx, &executorv1.ListInstanceStatsRequest{}); err != nil {
			t.Fatal(err)
		}
		for _, st := range stats.GetStats() {
			if st.GetInstanceId() == "spin-1" {
				spinStats = st
			}
		}
		if spinStats.GetCpuUsageNanos() >= uint64(20*time.Millisecond) || time.Now().After(deadline) {
			break
		}
	}
	wall := time.Since(spinStart)
	for _, st := range stats.GetStats() {
		t.Logf("stats: %s %s memory %d bytes, CPU %v", st.GetInstanceId(), st.GetState(), st.GetMemoryBytes(), time.Duration(st.GetCpuUsageNanos()))
	}
	if spinStats.GetMemoryBytes() == 0 || spinStats.GetCpuUsageNanos() < uint64(20*time.Millisecond) || time.Duration(spinStats.GetCpuUsageNanos()) > wall {
		t.Errorf("stats of a spinning instance %v after its start: %v", wall, spinStats)
	}
	if len(stats.GetStats()) != 2 {
		t.Errorf("stats of %d instances, want hello-1 (ended) and spin-1", len(stats.GetStats()))
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"wasmlet_executor_instance_starts_total 2",
		`wasmlet_executor_instances{state="EXITED"} 1`,
		`wasmlet_executor_instances{state="RUNNING"} 1`,
		"wasmlet_executor_instance_start_duration_seconds_count 2",
		`wasmlet_executor_nats_published_total{kind="log"} 3`,
		`wasmlet_executor_nats_dropped_total{kind="log"} 0`,
		`wasmlet_executor_nats_publish_errors_total{kind="event"} 0`,
		"wasmlet_executor_instance_kills_total 0",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("executor exit: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("executor did not exit after SIGTERM")
	}
	var states []string
	for _, b := range fetch(t, ctx, js, subjects.EventsStream, subjects.Events("exec-test", "spin-1"), 3) {
		ev := &eventsv1.InstanceEvent{}
		if err := proto.Unmarshal(b, ev); err != nil {
			t.Fatal(err)
		}
		states = append(states, ev.GetState())
	}
	if states[2] != "INSTANCE_STATE_KILLED" {
		t.Fatalf("spin-1 events: %v", states)
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

func TestParseAnnounceFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"--listen", "unix:///e.sock", "--registry", "unix:///r.sock", "--engine", "wazero"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Flavour != "wazero" || cfg.Advertise != "unix:///e.sock" || cfg.Node == "" || cfg.AnnouncePeriod <= 0 {
		t.Errorf("announce defaults: flavour %q advertise %q node %q period %s", cfg.Flavour, cfg.Advertise, cfg.Node, cfg.AnnouncePeriod)
	}
	cfg, err = parseFlags([]string{"--listen", "unix:///e.sock", "--registry", "unix:///r.sock",
		"--flavour", "fast", "--node", "n1", "--advertise-address", "tcp://127.0.0.1:7000"})
	if err != nil || cfg.Flavour != "fast" || cfg.Node != "n1" || cfg.Advertise != "tcp://127.0.0.1:7000" {
		t.Errorf("announce flags: %+v %v", cfg, err)
	}
	if _, err := parseFlags([]string{"--listen", "unix:///e.sock", "--registry", "unix:///r.sock", "--announce-period", "0s"}); err == nil {
		t.Error("--announce-period 0 accepted")
	}
}

// serveRegistry serves c on l as the registry cache's gRPC server until the
// test ends.
func serveRegistry(t *testing.T, l net.Listener, c regcache.Cache) {
	rs := grpc.NewServer()
	regserver.New(c).Register(rs)
	ctx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	go grpcutil.Serve(ctx, rs, l, time.Second)
}
