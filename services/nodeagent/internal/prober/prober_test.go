package prober

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// unit is a test's "second": probe periods and timeouts in tests are given
// in hundredths of a second.
const unit = 10 * time.Millisecond

// noLeaks fails the test if goroutines started during it outlive it. Call it
// first, so that its clean-up runs after the servers' and workers'.
func noLeaks(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutines: %d before the test, %d after it:\n%s", before, runtime.NumGoroutine(), buf[:n])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// recorder keeps what a Worker reports: its events, and each change of its
// Status with what the test's servers had answered by then.
type recorder struct {
	mu      sync.Mutex
	events  []Event
	changes []change
	hits    func() int
}

type change struct {
	Status
	hits int // requests the test's server had answered when Status changed
}

func (r *recorder) record(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) onChange(s Status) {
	h := 0
	if r.hits != nil {
		h = r.hits()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, change{s, h})
}

func (r *recorder) messages(reason string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ms []string
	for _, e := range r.events {
		if e.Reason == reason {
			ms = append(ms, e.Message)
		}
	}
	return ms
}

func (r *recorder) changeList() []change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]change(nil), r.changes...)
}

// start builds and starts a Worker with test units; hits, if set, is recorded
// with every change.
func start(t *testing.T, cfg Config, hits func() int) (*Worker, *recorder) {
	t.Helper()
	r := &recorder{hits: hits}
	cfg.Record, cfg.onChange, cfg.unit = r.record, r.onChange, unit
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.Start()
	t.Cleanup(w.Stop)
	return w, r
}

func waitFor(t *testing.T, w *Worker, what string, ok func(Status) bool) Status {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		if s := w.Status(); ok(s) {
			return s
		}
		select {
		case <-w.Changed():
		case <-timeout:
			t.Fatalf("waiting for %s: status %+v", what, w.Status())
		}
	}
}

// waitHits waits until n returns at least want.
func waitHits(t *testing.T, what string, n func() int, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n() < want {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %d %s: %d", want, what, n())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// script answers its i-th request with codes[i], and the last code after
// those.
type script struct {
	mu    sync.Mutex
	codes []int
	n     int
}

func (s *script) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	c := s.codes[min(s.n, len(s.codes)-1)]
	s.n++
	s.mu.Unlock()
	w.WriteHeader(c)
}

func (s *script) hits() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// serve runs h on loopback for the test; it returns the host and port.
func serve(t *testing.T, h http.Handler) (string, int) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return hostPort(t, srv.URL)
}

func hostPort(t *testing.T, rawURL string) (string, int) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return u.Hostname(), port
}

func httpProbe(path string, port int, period, failure, success int32) *v1.Probe {
	return &v1.Probe{
		ProbeHandler:     v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: path, Port: intstr.FromInt32(int32(port))}},
		PeriodSeconds:    period,
		TimeoutSeconds:   100,
		FailureThreshold: failure,
		SuccessThreshold: success,
	}
}

func readyChanges(cs []change) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "ready=%v@%d ", c.Ready, c.hits)
	}
	return b.String()
}

// A readiness probe starts unready, turns ready after successThreshold
// successes in a row and unready after failureThreshold failures in a row;
// shorter runs change nothing. Every failure is an Unhealthy event.
func TestReadinessThresholds(t *testing.T) {
	noLeaks(t)
	s := &script{codes: []int{500, 500, 500, 200, 200, 500, 200, 500, 500, 204, 200}}
	host, port := serve(t, s)
	w, r := start(t, Config{
		Container: &v1.Container{Name: "app", ReadinessProbe: httpProbe("/ready", port, 1, 2, 2)},
		PodIP:     host,
	}, s.hits)
	if st := w.Status(); st.Ready || !st.Started {
		t.Fatalf("before any probe: %+v, want started and unready", st)
	}
	waitFor(t, w, "ready the second time", func(st Status) bool { return len(r.changeList()) >= 3 })

	// 3 failures: still unready (its initial state); 2 successes: ready at
	// the 5th; one failure and one success: no change; 2 failures: unready at
	// the 9th; 2 successes: ready at the 11th.
	if got, want := readyChanges(r.changeList()), "ready=true@5 ready=false@9 ready=true@11 "; got != want {
		t.Errorf("readiness changes %q, want %q", got, want)
	}
	ms := r.messages(ReasonUnhealthy)
	if len(ms) != 6 {
		t.Errorf("%d Unhealthy events, want 6 (one per failed probe): %q", len(ms), ms)
	}
	for _, m := range ms {
		if m != "Readiness probe failed: HTTP probe failed with statuscode: 500" {
			t.Errorf("event %q", m)
		}
	}
}

// A liveness probe calls for a restart after failureThreshold failures in a
// row, once, with the kubelet's message and the probe's grace period, and then
// probes no more.
func TestLivenessRestart(t *testing.T) {
	noLeaks(t)
	s := &script{codes: []int{500, 500, 200, 500, 500, 200, 500, 500, 500, 200}}
	host, port := serve(t, s)
	p := httpProbe("/live", port, 1, 3, 1)
	grace := int64(7)
	p.TerminationGracePeriodSeconds = &grace
	w, r := start(t, Config{Container: &v1.Container{Name: "app", LivenessProbe: p}, PodIP: host}, s.hits)
	if st := w.Status(); !st.Ready || !st.Started || st.Restart {
		t.Fatalf("before any probe: %+v, want started and ready (no readiness probe)", st)
	}
	st := waitFor(t, w, "restart", func(st Status) bool { return st.Restart })
	if st.RestartKind != Liveness || st.Message != "Liveness probe failed: HTTP probe failed with statuscode: 500" {
		t.Errorf("restart %v %q", st.RestartKind, st.Message)
	}
	if st.TerminationGracePeriodSeconds == nil || *st.TerminationGracePeriodSeconds != 7 {
		t.Errorf("grace period %v, want 7", st.TerminationGracePeriodSeconds)
	}
	if cs := r.changeList(); len(cs) != 1 || cs[0].hits != 9 {
		t.Errorf("changes %+v, want one, at the 9th probe (the third failure in a row)", cs)
	}
	time.Sleep(20 * unit)
	if n := s.hits(); n != 9 {
		t.Errorf("%d probes, want none after the restart was called for (9)", n)
	}
	if got := KillingMessage("app", st.RestartKind); got != "Container app failed liveness probe, will be restarted" {
		t.Errorf("KillingMessage %q", got)
	}
}

// Until the startup probe succeeds, neither liveness nor readiness is probed;
// after it, both are, at once.
func TestStartupGatesLivenessAndReadiness(t *testing.T) {
	noLeaks(t)
	startup := &script{codes: []int{500, 500, 500, 200, 500}}
	live := &script{codes: []int{200}}
	ready := &script{codes: []int{200}}
	mux := http.NewServeMux()
	mux.Handle("/startup", startup)
	mux.Handle("/live", live)
	mux.Handle("/ready", ready)
	host, port := serve(t, mux)
	gated := func() int { return 1000*live.hits() + 100*ready.hits() + startup.hits() }
	w, r := start(t, Config{
		Container: &v1.Container{
			Name:           "app",
			StartupProbe:   httpProbe("/startup", port, 1, 10, 1),
			LivenessProbe:  httpProbe("/live", port, 100, 1, 1),
			ReadinessProbe: httpProbe("/ready", port, 100, 1, 1),
		},
		PodIP: host,
	}, gated)
	if st := w.Status(); st.Started || st.Ready {
		t.Fatalf("before any probe: %+v, want neither started nor ready", st)
	}
	waitFor(t, w, "ready", func(st Status) bool { return st.Ready })
	cs := r.changeList()
	if len(cs) != 2 || !cs[0].Started || cs[0].Ready || cs[0].hits != 4 || !cs[1].Ready {
		t.Fatalf("changes %+v: want started after the 4th startup probe with no other probe yet, then ready", cs)
	}
	waitHits(t, "liveness probes", live.hits, 1) // its period is long: this is the run right after startup
	time.Sleep(10 * unit)
	if n := startup.hits(); n != 4 {
		t.Errorf("%d startup probes, want none after it succeeded (4)", n)
	}
}

// A startup probe that fails failureThreshold times calls for a restart.
func TestStartupFailureRestarts(t *testing.T) {
	noLeaks(t)
	startup := &script{codes: []int{503}}
	other := &script{codes: []int{200}}
	mux := http.NewServeMux()
	mux.Handle("/startup", startup)
	mux.Handle("/", other)
	host, port := serve(t, mux)
	w, _ := start(t, Config{
		Container: &v1.Container{
			Name:           "app",
			StartupProbe:   httpProbe("/startup", port, 1, 2, 1),
			LivenessProbe:  httpProbe("/live", port, 1, 1, 1),
			ReadinessProbe: httpProbe("/ready", port, 1, 1, 1),
		},
		PodIP: host,
	}, nil)
	st := waitFor(t, w, "restart", func(st Status) bool { return st.Restart })
	if st.RestartKind != Startup || st.Message != "Startup probe failed: HTTP probe failed with statuscode: 503" || st.Started || st.Ready {
		t.Errorf("status %+v", st)
	}
	if n := startup.hits(); n != 2 {
		t.Errorf("%d startup probes, want 2", n)
	}
	if n := other.hits(); n != 0 {
		t.Errorf("%d liveness and readiness probes, want none before startup", n)
	}
}

// No probe runs before initialDelaySeconds from the instance's start; an
// instance that started long ago (a restarted agent re-adopting it) is probed
// at once.
func TestInitialDelay(t *testing.T) {
	noLeaks(t)
	var first atomic.Int64
	host, port := serve(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		first.CompareAndSwap(0, time.Now().UnixNano())
	}))
	p := httpProbe("/", port, 1, 1, 1)
	p.InitialDelaySeconds = 30
	began := time.Now()
	w, _ := start(t, Config{Container: &v1.Container{Name: "app", ReadinessProbe: p}, PodIP: host, StartedAt: began}, nil)
	waitFor(t, w, "ready", func(st Status) bool { return st.Ready })
	if d := time.Duration(first.Load() - began.UnixNano()); d < 30*unit {
		t.Errorf("first probe %v after the start, want at least %v", d, 30*unit)
	}

	p = p.DeepCopy()
	p.InitialDelaySeconds = 1000 // 10s
	began = time.Now()
	w, _ = start(t, Config{Container: &v1.Container{Name: "old", ReadinessProbe: p}, PodIP: host, StartedAt: began.Add(-time.Hour)}, nil)
	waitFor(t, w, "ready", func(st Status) bool { return st.Ready })
	if d := time.Since(began); d >= 1000*unit {
		t.Errorf("an instance started an hour ago was first probed after %v, want at once", d)
	}
}

// A probe that does not answer within timeoutSeconds fails with the HTTP
// client's timeout; Stop does not wait for a hanging probe.
func TestTimeout(t *testing.T) {
	noLeaks(t)
	release := make(chan struct{})
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	host, port := hostPort(t, srv.URL)
	p := httpProbe("/hang", port, 1, 2, 1)
	p.TimeoutSeconds = 10
	w, _ := start(t, Config{Container: &v1.Container{Name: "app", LivenessProbe: p}, PodIP: host}, nil)
	st := waitFor(t, w, "restart", func(st Status) bool { return st.Restart })
	prefix := fmt.Sprintf(`Liveness probe failed: Get "http://%s:%d/hang": `, host, port)
	if !strings.HasPrefix(st.Message, prefix) || !strings.Contains(st.Message, "Client.Timeout exceeded") {
		t.Errorf("message %q, want %s...Client.Timeout exceeded...", st.Message, prefix)
	}

	p = p.DeepCopy()
	p.TimeoutSeconds = 3000 // 30s
	before := hits.Load()
	w, _ = start(t, Config{Container: &v1.Container{Name: "app", LivenessProbe: p}, PodIP: host}, nil)
	waitHits(t, "hanging probes", func() int { return int(hits.Load()) }, int(before)+1)
	began := time.Now()
	w.Stop()
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("Stop took %v with a probe hanging", d)
	}
	if st := w.Status(); st.Restart {
		t.Errorf("a probe cut short by Stop counted: %+v", st)
	}
}

// A port may be named by the container's ports; a name it does not declare
// is refused at construction.
func TestNamedPort(t *testing.T) {
	noLeaks(t)
	host, port := serve(t, &script{codes: []int{200}})
	p := httpProbe("/", 0, 1, 1, 1)
	p.HTTPGet.Port = intstr.FromString("web")
	c := &v1.Container{Name: "app", ReadinessProbe: p, Ports: []v1.ContainerPort{
		{Name: "metrics", ContainerPort: 1},
		{Name: "web", ContainerPort: int32(port)},
	}}
	w, _ := start(t, Config{Container: c, PodIP: host}, nil)
	waitFor(t, w, "ready", func(st Status) bool { return st.Ready })

	c = c.DeepCopy()
	c.ReadinessProbe.HTTPGet.Port = intstr.FromString("nope")
	_, err := New(Config{Container: c, PodIP: host})
	if !errors.Is(err, ErrInvalidProbe) || !strings.Contains(err.Error(), `port "nope" not found`) {
		t.Errorf("New with an undeclared port name: %v", err)
	}
}

// HTTPS probes do not verify the pod's certificate.
func TestHTTPSSelfSigned(t *testing.T) {
	noLeaks(t)
	srv := httptest.NewTLSServer(&script{codes: []int{200}})
	t.Cleanup(srv.Close)
	host, port := hostPort(t, srv.URL)
	p := httpProbe("/", port, 1, 1, 1)
	p.HTTPGet.Scheme = v1.URISchemeHTTPS
	w, _ := start(t, Config{Container: &v1.Container{Name: "app", ReadinessProbe: p}, PodIP: host}, nil)
	waitFor(t, w, "ready", func(st Status) bool { return st.Ready })
}

// Probes send the kubelet's User-Agent and Accept unless the probe sets its
// own, the probe's headers, and its Host header as the request's host.
func TestHeaders(t *testing.T) {
	noLeaks(t)
	type seen struct{ ua, accept, probe, host string }
	got := make(chan seen, 100)
	host, port := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, hasAccept := r.Header["Accept"]
		accept := r.Header.Get("Accept")
		if !hasAccept {
			accept = "(none)"
		}
		got <- seen{r.UserAgent(), accept, r.Header.Get("X-Probe"), r.Host}
	}))

	p := httpProbe("/", port, 1000, 1, 1)
	p.HTTPGet.HTTPHeaders = []v1.HTTPHeader{{Name: "x-probe", Value: "yes"}, {Name: "Host", Value: "app.example"}}
	start(t, Config{Container: &v1.Container{Name: "app", ReadinessProbe: p}, PodIP: host}, nil)
	if s := <-got; s != (seen{"kube-probe/1.35", "*/*", "yes", "app.example"}) {
		t.Errorf("default headers: %+v", s)
	}

	p = p.DeepCopy()
	p.HTTPGet.HTTPHeaders = []v1.HTTPHeader{{Name: "User-Agent", Value: "mine"}, {Name: "Accept", Value: ""}}
	start(t, Config{Container: &v1.Container{Name: "app", ReadinessProbe: p}, PodIP: host}, nil)
	if s := <-got; s != (seen{"mine", "(none)", "", net.JoinHostPort(host, strconv.Itoa(port))}) {
		t.Errorf("overridden headers: %+v", s)
	}
}

// Redirects on the same host are followed (up to 10); one to another host is a
// success with a ProbeWarning event.
func TestRedirects(t *testing.T) {
	noLeaks(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/a", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/b", http.StatusFound) })
	mux.HandleFunc("/b", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/away", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://elsewhere.invalid/", http.StatusFound)
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	host, port := serve(t, mux)

	w, r := start(t, Config{Container: &v1.Container{Name: "app", ReadinessProbe: httpProbe("/a", port, 1000, 1, 1)}, PodIP: host}, nil)
	waitFor(t, w, "ready through a redirect", func(st Status) bool { return st.Ready })
	if ev := r.messages(ReasonProbeWarning); len(ev) != 0 {
		t.Errorf("warnings for a same-host redirect: %q", ev)
	}

	w, r = start(t, Config{Container: &v1.Container{Name: "app", ReadinessProbe: httpProbe("/away", port, 1000, 1, 1)}, PodIP: host}, nil)
	waitFor(t, w, "ready on a redirect elsewhere", func(st Status) bool { return st.Ready })
	if ev := r.messages(ReasonProbeWarning); len(ev) != 1 || !strings.HasPrefix(ev[0], "Readiness probe warning: Probe terminated redirects, Response body: ") {
		t.Errorf("warnings for a redirect to another host: %q", ev)
	}

	w, r = start(t, Config{Container: &v1.Container{Name: "app", LivenessProbe: httpProbe("/loop", port, 1000, 1, 1)}, PodIP: host}, nil)
	st := waitFor(t, w, "restart on a redirect loop", func(st Status) bool { return st.Restart })
	if !strings.HasSuffix(st.Message, "stopped after 10 redirects") {
		t.Errorf("message %q", st.Message)
	}
}

// A body larger than the kubelet reads does not fail the probe.
func TestLargeBody(t *testing.T) {
	noLeaks(t)
	host, port := serve(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write(make([]byte, 1<<20))
	}))
	w, _ := start(t, Config{Container: &v1.Container{Name: "app", ReadinessProbe: httpProbe("/", port, 1, 1, 1)}, PodIP: host}, nil)
	waitFor(t, w, "ready", func(st Status) bool { return st.Ready })
}

func TestConfigRefused(t *testing.T) {
	exec := v1.ProbeHandler{Exec: &v1.ExecAction{Command: []string{"true"}}}
	http := v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Port: intstr.FromInt32(80)}}
	for name, c := range map[string]v1.Container{
		"exec readiness":           {ReadinessProbe: &v1.Probe{ProbeHandler: exec}},
		"exec liveness":            {LivenessProbe: &v1.Probe{ProbeHandler: exec}},
		"exec startup":             {StartupProbe: &v1.Probe{ProbeHandler: exec}},
		"no handler":               {ReadinessProbe: &v1.Probe{}},
		"two handlers":             {ReadinessProbe: &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: http.HTTPGet, TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt32(80)}}}},
		"liveness success 2":       {LivenessProbe: &v1.Probe{ProbeHandler: http, SuccessThreshold: 2}},
		"startup success 2":        {StartupProbe: &v1.Probe{ProbeHandler: http, SuccessThreshold: 2}},
		"negative period":          {ReadinessProbe: &v1.Probe{ProbeHandler: http, PeriodSeconds: -1}},
		"ftp scheme":               {ReadinessProbe: &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Port: intstr.FromInt32(80), Scheme: "FTP"}}}},
		"port out of range":        {ReadinessProbe: &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Port: intstr.FromInt32(70000)}}}},
		"grpc port 0":              {ReadinessProbe: &v1.Probe{ProbeHandler: v1.ProbeHandler{GRPC: &v1.GRPCAction{}}}},
		"tcp undeclared port name": {ReadinessProbe: &v1.Probe{ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromString("web")}}}},
	} {
		c.Name = "app"
		_, err := New(Config{Container: &c, PodIP: "127.0.0.1"})
		want := ErrInvalidProbe
		if strings.HasPrefix(name, "exec") {
			want = ErrExecUnsupported
		}
		if !errors.Is(err, want) {
			t.Errorf("%s: New: %v, want %v", name, err, want)
		}
	}
	c := v1.Container{Name: "app", LivenessProbe: &v1.Probe{ProbeHandler: exec}}
	_, err := New(Config{Container: &c, PodIP: "127.0.0.1"})
	want := `liveness probe of container "app": exec probes are not supported for Wasm pods: a WebAssembly module has no processes to exec into; use httpGet, tcpSocket or grpc`
	if err == nil || err.Error() != want {
		t.Errorf("New with an exec probe: %v, want %q", err, want)
	}
}

// A container without probes is started and ready at once and needs no
// goroutine; Stop and Start in any order are safe.
func TestNoProbes(t *testing.T) {
	noLeaks(t)
	w, err := New(Config{Container: &v1.Container{Name: "app"}})
	if err != nil {
		t.Fatal(err)
	}
	if st := w.Status(); !st.Started || !st.Ready || st.Restart {
		t.Errorf("status %+v", st)
	}
	w.Start()
	w.Start()
	w.Stop()
	w.Stop()

	w, err = New(Config{Container: &v1.Container{Name: "app", ReadinessProbe: httpProbe("/", 1, 1, 1, 1)}, PodIP: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	w.Stop()
	w.Start() // after Stop: nothing
	w.Stop()
}

// Once Terminating is called, liveness is probed no more and cannot call for a
// restart; readiness goes on.
func TestTerminating(t *testing.T) {
	noLeaks(t)
	live := &script{codes: []int{500}}
	ready := &script{codes: []int{200}}
	mux := http.NewServeMux()
	mux.Handle("/live", live)
	mux.Handle("/ready", ready)
	host, port := serve(t, mux)
	w, r := start(t, Config{
		Container: &v1.Container{
			Name:           "app",
			LivenessProbe:  httpProbe("/live", port, 1, 20, 1),
			ReadinessProbe: httpProbe("/ready", port, 1, 1, 1),
		},
		PodIP: host,
	}, nil)
	waitFor(t, w, "ready", func(st Status) bool { return st.Ready })
	w.Terminating()
	w.Terminating()
	liveAt, readyAt := live.hits(), ready.hits()
	waitHits(t, "readiness probes while terminating", ready.hits, readyAt+30) // past liveness's failureThreshold
	if st := w.Status(); st.Restart || !st.Ready {
		t.Errorf("status %+v: want ready and no restart while terminating", st)
	}
	if n := live.hits(); n > liveAt+1 { // one may have been under way
		t.Errorf("%d liveness probes after Terminating, want at most 1", n-liveAt)
	}
	if n := len(r.messages(ReasonUnhealthy)); n > liveAt {
		t.Errorf("%d Unhealthy events for %d liveness probes before Terminating", n, liveAt)
	}
}
