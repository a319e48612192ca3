package service

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/services/executor/instances/proxy"
	"github.com/wasmlet/wasmlet/services/executor/internal/confine"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	regserver "github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// sockDir is a short directory for unix sockets (t.TempDir() may be too
// long for a socket path).
func sockDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "exsvc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// valid is a config Run accepts, with the registry at regAddr.
func valid(t *testing.T, dir, regAddr string) Config {
	return Config{
		Listen: "unix://" + filepath.Join(dir, "e.sock"), Registry: regAddr,
		StateDir: filepath.Join(t.TempDir(), "state"), Engine: "wazero", ID: "ex-1", MaxInstances: 10,
		SharePrecompiled: true, Flavour: "wazero", Node: "n1", Logger: quiet,
	}
}

// TestRunRefusesBeforeOpening: a config without its required fields, with
// an unknown engine, no instances or metrics beyond loopback fails before
// anything is opened.
func TestRunRefusesBeforeOpening(t *testing.T) {
	dir := sockDir(t)
	base := valid(t, dir, "unix://"+filepath.Join(dir, "r.sock"))
	for _, c := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no listen", func(c *Config) { c.Listen = "" }, "required"},
		{"no registry", func(c *Config) { c.Registry = "" }, "required"},
		{"no state dir", func(c *Config) { c.StateDir = "" }, "required"},
		{"no id", func(c *Config) { c.ID = "" }, "required"},
		{"unknown engine", func(c *Config) { c.Engine = "v8" }, "want wasmtime or wazero"},
		{"no instances", func(c *Config) { c.MaxInstances = 0 }, "positive"},
		{"metrics beyond loopback", func(c *Config) { c.MetricsListen = "0.0.0.0:9465" }, "loopback"},
		{"announced without a period", func(c *Config) { c.NATS = "nats://127.0.0.1:1" }, "announce period"},
	} {
		cfg := base
		c.edit(&cfg)
		err := Run(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Run = %v, want an error containing %q", c.name, err, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "e.sock")); err == nil {
		t.Error("a refused config left a socket behind")
	}
	if _, err := os.Stat(base.StateDir); err == nil {
		t.Error("a refused config made the state directory")
	}
}

// TestRun serves an executor in-process (wazero, no NATS, metrics on)
// against a real registry cache server: GetInfo over the socket reports
// the config and the confinement given, /metrics serves the manager's
// metrics, the artifact key is created, and the end of the context stops
// it cleanly and releases the metrics port.
func TestRun(t *testing.T) {
	dir := sockDir(t)
	regAddr := "unix://" + filepath.Join(dir, "r.sock")
	rl, err := grpcutil.Listen(regAddr)
	if err != nil {
		t.Fatal(err)
	}
	rs := grpc.NewServer()
	regserver.New(cachetest.Files{}).Register(rs)
	rctx, stopReg := context.WithCancel(context.Background())
	defer stopReg()
	go grpcutil.Serve(rctx, rs, rl, time.Second)

	cfg := valid(t, dir, regAddr)
	cfg.MetricsListen = freePort(t)
	cfg.Confinement = confine.Status{NoNewPrivs: true, UID: 4242}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()

	conn, err := grpcutil.Dial(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := grpcutil.WaitHealthy(wctx, conn); err != nil {
		t.Fatalf("executor never healthy: %v", err)
	}
	info, err := proxy.New(conn).Info(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.ExecutorID != "ex-1" || info.Engine != "wazero" || info.MaxInstances != 10 || info.CPULimitsEnforced ||
		!info.Confinement.NoNewPrivs || info.Confinement.UID != 4242 {
		t.Errorf("GetInfo = %+v", info)
	}
	resp, err := http.Get("http://" + cfg.MetricsListen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "wasmlet_executor_") || !strings.Contains(string(body), "go_goroutines") {
		t.Errorf("/metrics lacks the executor's or the Go metrics:\n%.2000s", body)
	}
	if st, err := os.Stat(filepath.Join(cfg.StateDir, "artifact.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("artifact key not created 0600: %v %v", st, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after the context ended = %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the context ended")
	}
	l, err := net.Listen("tcp", cfg.MetricsListen)
	if err != nil {
		t.Fatalf("metrics port still held after Run returned: %v", err)
	}
	l.Close()
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestConfineConfig: the confinement lets the executor reach what its
// config names and nothing else named.
func TestConfineConfig(t *testing.T) {
	keyDir := t.TempDir()
	key := filepath.Join(keyDir, "artifact.key")
	cfg := Config{
		Listen: "unix:///run/wasmlet/exec/e.sock", Registry: "unix:///run/wasmlet/reg/r.sock",
		StateDir: "/var/lib/ex", MountRoots: []string{"/var/lib/pods"}, LandlockRW: []string{"/data"},
		CPUCgroup: "/sys/fs/cgroup/wasmlet", ArtifactKeyFile: key, Confine: true, RunAsUser: "nobody",
		ListenerSocket: "/run/wasmlet/handoff/l.sock",
	}
	cfg.TLS.CertFile = "/etc/wasmlet/tls/e.crt"
	cfg.RegistryTLS.CAFile = "/etc/wasmlet/ca/ca.crt"
	cc := cfg.ConfineConfig()
	for _, p := range []string{"/var/lib/ex", "/var/lib/pods", "/data", "/run/wasmlet/exec", "/run/wasmlet/handoff", "/sys/fs/cgroup/wasmlet", keyDir} {
		if !slices.Contains(cc.ReadWrite, p) {
			t.Errorf("ReadWrite %v lacks %s", cc.ReadWrite, p)
		}
	}
	if !slices.Equal(cc.Connect, []string{"/run/wasmlet/reg"}) {
		t.Errorf("Connect = %v", cc.Connect)
	}
	if !slices.Equal(cc.ReadOnly, []string{"/etc/wasmlet/tls", "/etc/wasmlet/ca"}) {
		t.Errorf("ReadOnly = %v", cc.ReadOnly)
	}
	if !cc.Landlock || !cc.Seccomp || cc.User != "nobody" || !slices.Equal(cc.Own, []string{"/var/lib/ex"}) {
		t.Errorf("ConfineConfig = %+v", cc)
	}

	// A key that exists is read only; its directory is not opened.
	if err := os.WriteFile(key, make([]byte, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	cc = cfg.ConfineConfig()
	if !slices.Contains(cc.ReadOnly, key) || slices.Contains(cc.ReadWrite, keyDir) {
		t.Errorf("existing key: ReadOnly %v ReadWrite %v", cc.ReadOnly, cc.ReadWrite)
	}
}

// TestNewArtifactStoreBadKey: a key file that cannot be used fails the
// start and names the way out.
func TestNewArtifactStoreBadKey(t *testing.T) {
	key := filepath.Join(t.TempDir(), "short.key")
	if err := os.WriteFile(key, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := newArtifactStore(Config{StateDir: t.TempDir(), ArtifactKeyFile: key}, nil, quiet)
	if err == nil || !strings.Contains(err.Error(), "--share-precompiled=false") {
		t.Errorf("newArtifactStore with a 5-byte key = %v", err)
	}
}

// TestNewCPULimitsWithout: without a cgroup, limits are not enforced and
// GetInfo says why.
func TestNewCPULimitsWithout(t *testing.T) {
	c, err := newCPULimits("", quiet)
	if err != nil || c.limiter != nil || !strings.Contains(c.words, "--cpu-cgroup") {
		t.Errorf("newCPULimits(\"\") = %+v, %v", c, err)
	}
}

// TestServeMetricsTakenPort: a port already taken fails the start.
func TestServeMetricsTakenPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	if ms, err := serveMetrics(l.Addr().String(), c, quiet); err == nil {
		ms.close()
		t.Error("serveMetrics on a taken port succeeded")
	}
	if ms, err := serveMetrics("", c, quiet); ms != nil || err != nil {
		t.Errorf("serveMetrics(\"\") = %v, %v; want none", ms, err)
	}
}

// TestNoNATS: without a NATS URL there is no link, and the manager gets
// no JetStream and an outbox without a spool.
func TestNoNATS(t *testing.T) {
	link, err := dialNATS(context.Background(), Config{}, quiet)
	if err != nil || link != nil {
		t.Fatalf("dialNATS without a URL = %v, %v", link, err)
	}
	if link.conn() != nil || link.jetStream() != nil || link.logOutbox().Spool != nil {
		t.Error("a nil link hands out something")
	}
	link.close()
}
