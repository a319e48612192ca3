package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/artifactsign"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/proxy"
)

// sharingCache is test scaffolding: modules from a file map, precompiled
// artifacts in a real local cache, both served by the registry cache's
// real gRPC server.
type sharingCache struct {
	cachetest.Files
	regcache.PrecompiledStore
}

// TestSharedPrecompiled runs executor processes of each engine, with fresh
// state dirs and one --artifact-key-file, against one registry cache: the
// first compiles the module and puts its artifact there; the second loads
// it without compiling, and starts faster; after the shared artifact is
// corrupted on the cache's disk, a third detects it, compiles, runs the
// module and replaces the entry; a fourth, told not to share, compiles
// (the first start without the shared artifact, for comparison). Then a
// forgery: the native code of another module, put without the key under
// the module's key through the registry cache's API, is refused by the
// next executor, which compiles, runs the module as it is, and puts a
// signed artifact in its place; the one after loads that without
// compiling; one with another key refuses it.
func TestSharedPrecompiled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the executor binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Second)
	defer cancel()
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "executor")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	sockDir, err := os.MkdirTemp("", "exshare")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	wasm := wasmbuild.Build(t, "hello")
	b, err := os.ReadFile(wasm)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	hello := "sha256:" + hex.EncodeToString(sum[:])
	files := cachetest.Files{}
	exit7, err := files.Add(wasmbuild.Wat(t, enginetest.ProcExit(7)))
	if err != nil {
		t.Fatal(err)
	}
	cacheDir := filepath.Join(tmp, "regcache")
	lc, err := local.New(local.Config{Dir: cacheDir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	regAddr := "unix://" + filepath.Join(sockDir, "reg.sock")
	rl, err := grpcutil.Listen(regAddr)
	if err != nil {
		t.Fatal(err)
	}
	files[hello] = wasm
	serveRegistry(t, rl, sharingCache{files, lc})
	for _, eng := range []string{"wasmtime", "wazero"} {
		t.Run(eng, func(t *testing.T) {
			testSharedPrecompiled(t, ctx, bin, sockDir, regAddr, lc, cacheDir, hello, exit7, eng)
		})
	}
}

func testSharedPrecompiled(t *testing.T, ctx context.Context, bin, sockDir, regAddr string, lc *local.Cache, cacheDir, hello, exit7, eng string) {
	keyFile := filepath.Join(t.TempDir(), "artifact.key")
	// runModule starts executor n with a fresh state dir and the key file
	// (which the first creates), creates and starts an instance of module,
	// waits for its end (exit code code), and returns how long
	// CreateInstance (fetch, prepare: load or compile, start) took and the
	// executor's metrics.
	runModule := func(t *testing.T, n int, module string, code int32, extra ...string) (time.Duration, *executor) {
		t.Helper()
		// Compiles on every first start: the figures and counts here are
		// those of a compile against a shared artifact's load (wazero's
		// interpreted first start with a shared store is the engine's
		// TestInterpretFirstShared).
		e := startExecutor(t, ctx, bin, sockDir, n, regAddr, append([]string{"--engine", eng, "--artifact-key-file", keyFile, "--interpret-first=false"}, extra...)...)
		t0 := time.Now()
		if _, err := e.c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: "hello", Start: true, Spec: &executorv1.InstanceSpec{
			Module: &executorv1.Module{Digest: module},
			Args:   []string{"hello"},
			Env:    []*executorv1.EnvVar{{Name: "EXIT_CODE", Value: "3"}},
		}}); err != nil {
			t.Fatal(err)
		}
		took := time.Since(t0)
		for {
			r, err := e.c.GetInstance(ctx, &executorv1.GetInstanceRequest{Id: "hello"})
			if err != nil {
				t.Fatal(err)
			}
			if in := r.GetInstance(); in.GetState() == executorv1.InstanceState_INSTANCE_STATE_EXITED {
				if in.GetExitCode() != code {
					t.Fatalf("executor %d: hello ended %v", n, in)
				}
				break
			} else if in.GetState() != executorv1.InstanceState_INSTANCE_STATE_RUNNING && in.GetState() != executorv1.InstanceState_INSTANCE_STATE_CREATED {
				t.Fatalf("executor %d: hello ended %v", n, in)
			}
			time.Sleep(5 * time.Millisecond)
		}
		return took, e
	}
	run := func(t *testing.T, n int, extra ...string) (time.Duration, *executor) {
		t.Helper()
		return runModule(t, n, hello, 3, extra...)
	}

	first, e1 := run(t, 1)
	e1.wantMetrics(t, map[string]float64{"compiles": 1, "miss": 1, "hit": 0})
	e1.waitMetric(t, "put_ok", 1)
	e1.stop(t)

	second, e2 := run(t, 2)
	e2.wantMetrics(t, map[string]float64{"compiles": 0, "hit": 1, "miss": 0, "corrupt": 0})
	e2.stop(t)
	t.Logf("first start (CreateInstance with start) on a fresh executor: %v compiling (executor 1), %v with the shared artifact (executor 2)", first, second)
	if second > first/2 {
		t.Errorf("the executor with the shared artifact took %v to start, the one that compiled %v: want less than half", second, first)
	}

	// Corrupt the shared artifact on the registry cache's disk (same size).
	rc, info, err := lc.GetPrecompiled(ctx, regcache.PrecompiledKey{ModuleDigest: hello, EngineKey: e1.engineKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	blob := filepath.Join(cacheDir, "blobs", "sha256", strings.TrimPrefix(info.Digest, "sha256:"))
	art, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(art) / 2; i < len(art)/2+64; i++ {
		art[i] ^= 0xff
	}
	if err := os.WriteFile(blob, art, 0o600); err != nil {
		t.Fatal(err)
	}
	_, e3 := run(t, 3)
	e3.wantMetrics(t, map[string]float64{"compiles": 1, "hit": 0, "corrupt": 1})
	e3.waitMetric(t, "put_ok", 1)
	e3.stop(t)
	if fixed, err := os.ReadFile(blob); err != nil || sha256.Sum256(fixed) != [32]byte(mustHex(t, info.Digest)) {
		t.Fatalf("the corrupt shared artifact was not replaced (%v)", err)
	}

	unshared, e4 := run(t, 4, "--share-precompiled=false")
	e4.wantMetrics(t, map[string]float64{"compiles": 1, "hit": 0, "miss": 0})
	e4.stop(t)
	t.Logf("first start on a fresh executor with --share-precompiled=false: %v", unshared)

	// The forgery: exit7's native code, without its signature, under
	// hello's key, put as any client of the registry cache can.
	ek := e1.engineKey(t)
	_, e5 := runModule(t, 5, exit7, 7)
	e5.waitMetric(t, "put_ok", 1)
	e5.stop(t)
	rc, _, err = lc.GetPrecompiled(ctx, regcache.PrecompiledKey{ModuleDigest: exit7, EngineKey: ek})
	if err != nil {
		t.Fatal(err)
	}
	signed7, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	native7 := signed7[artifactsign.HeaderSize:]
	conn, err := grpcutil.Dial(regAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sum := sha256.Sum256(native7)
	if err := proxy.New(conn).PutPrecompiled(ctx, regcache.PrecompiledKey{ModuleDigest: hello, EngineKey: ek}, regcache.Precompiled{Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(native7))}, bytes.NewReader(native7)); err != nil {
		t.Fatal(err)
	}
	_, e6 := run(t, 6) // exit code 3: hello's code, not exit7's
	e6.wantMetrics(t, map[string]float64{"refused": 1, "compiles": 1, "hit": 0})
	e6.waitMetric(t, "put_ok", 1)
	e6.stop(t)
	if !strings.Contains(e6.stderr.String(), "shared precompiled artifact refused") {
		t.Errorf("executor 6 did not log the refusal:\n%s", e6.stderr.String())
	}
	_, e7 := run(t, 7)
	e7.wantMetrics(t, map[string]float64{"compiles": 0, "hit": 1, "refused": 0})
	e7.stop(t)
	_, e8 := run(t, 8, "--artifact-key-file", filepath.Join(t.TempDir(), "other.key"))
	e8.wantMetrics(t, map[string]float64{"refused": 1, "compiles": 1, "hit": 0})
	e8.stop(t)
}

func mustHex(t *testing.T, digest string) []byte {
	b, err := hex.DecodeString(strings.TrimPrefix(digest, "sha256:"))
	if err != nil || len(b) != 32 {
		t.Fatalf("digest %q", digest)
	}
	return b
}

// executor is a running executor process.
type executor struct {
	n       int
	cmd     *exec.Cmd
	c       executorv1.ExecutorServiceClient
	metrics string
	stderr  *enginetest.Buffer
	exited  chan error
}

func startExecutor(t *testing.T, ctx context.Context, bin, sockDir string, n int, regAddr string, extra ...string) *executor {
	t.Helper()
	ml, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ml.Addr().String()
	ml.Close()
	addr := "unix://" + filepath.Join(sockDir, fmt.Sprintf("exec%d-%d.sock", n, time.Now().UnixNano()%1e6))
	args := []string{"--listen", addr, "--registry", regAddr, "--state-dir", t.TempDir(), "--id", fmt.Sprintf("exec-%d", n)}
	if slices.Contains(extra, "--isolate-network") { // no network for metrics
		metricsAddr = ""
	} else {
		args = append(args, "--metrics-listen", metricsAddr)
	}
	args = append(args, extra...)
	e := &executor{n: n, cmd: exec.Command(bin, args...), metrics: metricsAddr, stderr: &enginetest.Buffer{}, exited: make(chan error, 1)}
	e.cmd.Stderr = e.stderr
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { e.exited <- e.cmd.Wait() }()
	t.Cleanup(func() {
		e.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("executor %d stderr:\n%s", n, e.stderr.String())
		}
	})
	conn, err := grpcutil.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := grpcutil.WaitHealthy(ctx, conn); err != nil {
		t.Fatal(err)
	}
	e.c = executorv1.NewExecutorServiceClient(conn)
	return e
}

func (e *executor) stop(t *testing.T) {
	t.Helper()
	e.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-e.exited:
		if err != nil {
			t.Fatalf("executor %d exit: %v\n%s", e.n, err, e.stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("executor %d did not exit", e.n)
	}
}

// artifactMetrics names the executor's artifact counters for the tests.
var artifactMetrics = map[string]string{
	"compiles": "wasmlet_executor_compiles_total",
	"hit":      `wasmlet_executor_precompiled_shared_gets_total{result="hit"}`,
	"miss":     `wasmlet_executor_precompiled_shared_gets_total{result="miss"}`,
	"corrupt":  `wasmlet_executor_precompiled_shared_gets_total{result="corrupt"}`,
	"refused":  `wasmlet_executor_precompiled_shared_gets_total{result="refused"}`,
	"put_ok":   `wasmlet_executor_precompiled_shared_puts_total{result="ok"}`,
}

func (e *executor) scrape(t *testing.T) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + e.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for name, series := range artifactMetrics {
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(body)
		if m == nil {
			t.Fatalf("executor %d: /metrics lacks %s:\n%s", e.n, series, body)
		}
		v, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			t.Fatal(err)
		}
		got[name] = v
	}
	return got
}

func (e *executor) wantMetrics(t *testing.T, want map[string]float64) {
	t.Helper()
	got := e.scrape(t)
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("executor %d: %s = %v, want %v (all: %v)", e.n, artifactMetrics[k], got[k], v, got)
		}
	}
}

func (e *executor) waitMetric(t *testing.T, name string, want float64) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got := e.scrape(t)
		if got[name] == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("executor %d: %s = %v after 30 s, want %v", e.n, artifactMetrics[name], got[name], want)
		}
	}
}

// engineKey finds the engine key in the executor's log.
func (e *executor) engineKey(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`engine_key=(\S+)`).FindStringSubmatch(e.stderr.String())
	if m == nil {
		t.Fatalf("executor %d logged no engine_key:\n%s", e.n, e.stderr.String())
	}
	return m[1]
}
