//go:build linux

package confine_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"google.golang.org/grpc"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	regserver "github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

// Measuring: with envStrace set to a directory, each executor of
// TestConfinedExecutor runs under `strace -f` and leaves its calls there
// (<engine>.strace); envFlags adds flags to the executors. The
// allow-list was measured with both set, the second to --confine=false,
// and checked with the first alone (a call the filter refuses shows as
// EPERM).
const (
	envStrace = "WASMLET_CONFINE_STRACE"
	envFlags  = "WASMLET_CONFINE_TEST_FLAGS"
)

// TestConfinedExecutor runs real executor processes, confined as they
// are by default, on both engines: modules run (a Go-built one, one that
// sleeps in poll_oneoff and one that spins until killed), GetInfo and /proc say what confines the process, and
// `executor --confine-check` with the same flags shows that ptrace,
// mount, a user namespace, execve, netlink sockets, signals to other
// processes and files outside fail there.
func TestConfinedExecutor(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the executor binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Second)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "executor")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/wasmlet/wasmlet/services/executor").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
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
	mods := modules{hello: digest(wasmbuild.Build(t, "hello")), spin: digest(wasmbuild.Build(t, "spin")), idle: digest(wasmbuild.WatFile(t, "idle"))}
	sockDir, err := os.MkdirTemp("", "confine")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	regAddr := "unix://" + filepath.Join(sockDir, "reg", "reg.sock")
	if err := os.Mkdir(filepath.Join(sockDir, "reg"), 0o700); err != nil {
		t.Fatal(err)
	}
	rl, err := grpcutil.Listen(regAddr)
	if err != nil {
		t.Fatal(err)
	}
	rs := grpc.NewServer()
	regserver.New(cache).Register(rs)
	sctx, stopReg := context.WithCancel(context.Background())
	defer stopReg()
	go grpcutil.Serve(sctx, rs, rl, time.Second)

	for _, eng := range []string{"wasmtime", "wazero"} {
		t.Run(eng, func(t *testing.T) { testConfined(t, ctx, bin, eng, regAddr, sockDir, mods) })
	}
}

type modules struct{ hello, spin, idle string }

func testConfined(t *testing.T, ctx context.Context, bin, eng, regAddr, sockDir string, mods modules) {
	// Compiled modules are kept between runs (the engines verify what
	// they load), as main_test does.
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	stateDir := filepath.Join(base, "wasmlet-confine-test", eng)
	execAddr := "unix://" + filepath.Join(sockDir, eng, "exec.sock")
	args := []string{"--listen", execAddr, "--registry", regAddr, "--state-dir", stateDir,
		"--id", "confined-" + eng, "--engine", eng}
	extra := strings.Fields(os.Getenv(envFlags))
	confined := !slices.Contains(extra, "--confine=false")
	strace := os.Getenv(envStrace)
	cmd := exec.Command(bin, append(args, extra...)...)
	if strace != "" {
		cmd = exec.Command("strace", append([]string{"-f", "-qq", "-o", filepath.Join(strace, eng+".strace"), bin}, append(args, extra...)...)...)
	}
	var stderr enginetest.Buffer
	cmd.Stderr = &stderr
	if strace != "" {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if strace != "" {
			// The executor, not strace, so that strace writes all.
			children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
			for _, pid := range strings.Fields(string(children)) {
				exec.Command("kill", pid).Run()
			}
		} else {
			cmd.Process.Kill()
		}
		<-exited
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
	if err != nil {
		t.Fatal(err)
	}
	conf := info.GetConfinement()
	t.Logf("GetInfo confinement: %s", conf.GetDescription())
	if confined {
		wantABI, _ := ll.LandlockGetABIVersion()
		if !conf.GetNoNewPrivs() || !conf.GetSeccomp() || int(conf.GetLandlockAbi()) != wantABI || (wantABI == 0) != (conf.GetLandlockMissingReason() != "") {
			t.Errorf("GetInfo confinement %v; want no_new_privs, seccomp, Landlock ABI %d", conf, wantABI)
		}
		pid := cmd.Process.Pid
		if strace != "" {
			children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
			fmt.Sscan(string(children), &pid)
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"NoNewPrivs:\t1", "Seccomp:\t2", "Seccomp_filters:\t1"} {
			if !bytes.Contains(status, []byte(want)) {
				t.Errorf("/proc/%d/status lacks %q:\n%s", pid, want, status)
			}
		}
	}

	watch, err := c.WatchInstances(ctx, &executorv1.WatchInstancesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ends := map[string]*executorv1.Instance{}
	waitEnd := func(id string) *executorv1.Instance {
		t.Helper()
		for ends[id] == nil {
			r, err := watch.Recv()
			if err != nil {
				t.Fatal(err)
			}
			switch in := r.GetInstance(); in.GetState() {
			case executorv1.InstanceState_INSTANCE_STATE_EXITED, executorv1.InstanceState_INSTANCE_STATE_KILLED, executorv1.InstanceState_INSTANCE_STATE_FAILED:
				ends[in.GetId()] = in
			}
		}
		return ends[id]
	}
	create := func(id, digest string, env map[string]string, preopens ...*executorv1.Preopen) {
		t.Helper()
		spec := &executorv1.InstanceSpec{Module: &executorv1.Module{Digest: digest}, Args: []string{id}, Preopens: preopens}
		for k, v := range env {
			spec.Env = append(spec.Env, &executorv1.EnvVar{Name: k, Value: v})
		}
		if _, err := c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: id, Start: true, Spec: spec}); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
	}

	create("hello", mods.hello, map[string]string{"EXIT_CODE": "3"})
	if end := waitEnd("hello"); end.GetState() != executorv1.InstanceState_INSTANCE_STATE_EXITED || end.GetExitCode() != 3 {
		t.Fatalf("hello: %v", end)
	}

	// A sleeper (poll_oneoff) and a spinner, killed.
	create("idle", mods.idle, nil)
	create("spin", mods.spin, nil)
	time.Sleep(500 * time.Millisecond)
	for _, id := range []string{"idle", "spin"} {
		if _, err := c.StopInstance(ctx, &executorv1.StopInstanceRequest{Id: id}); err != nil {
			t.Fatalf("stop %s: %v", id, err)
		}
		if end := waitEnd(id); end.GetState() == executorv1.InstanceState_INSTANCE_STATE_FAILED {
			t.Errorf("%s: %v", id, end)
		}
	}
	if !confined {
		return
	}

	// The same flags, checking: what an escaped module would meet.
	out, err := exec.CommandContext(ctx, bin, append(args, "--confine-check", "--listen", "unix://"+filepath.Join(sockDir, eng, "check.sock"))...).CombinedOutput()
	if err != nil {
		t.Fatalf("--confine-check: %v\n%s", err, out)
	}
	t.Logf("--confine-check:\n%s", out)
	want := map[string]string{
		"ptrace": "EPERM", "mount": "EPERM", "unshare-user": "EPERM", "kill": "EPERM",
		"socket-netlink": "EPERM", "execve": "EPERM", "read-own-binary": "ok", "write-state-dir": "ok",
	}
	if abi, _ := ll.LandlockGetABIVersion(); abi > 0 {
		want["read-etc-passwd"] = "EACCES"
	}
	for name, res := range want {
		if !strings.Contains(string(out), "\n"+name+": "+res+"\n") {
			t.Errorf("--confine-check: want %s: %s", name, res)
		}
	}
}

// TestRunAsUser: an executor started as root with --run-as-user nobody
// runs as nobody (uid 65534) with no supplementary groups, its state dir
// given to it and still writable, and still cannot ptrace, mount or read
// outside its paths.
func TestRunAsUser(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the executor binary")
	}
	if os.Getuid() != 0 {
		t.Skip("needs root to drop to another user")
	}
	// The binary where nobody may execute it (t.TempDir is 0700).
	dir, err := os.MkdirTemp("", "confine-user")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "executor")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/wasmlet/wasmlet/services/executor").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	stateDir := filepath.Join(dir, "state")
	if err := os.MkdirAll(filepath.Join(stateDir, "modules"), 0o700); err != nil { // as an earlier root executor left it
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--listen", "unix://"+filepath.Join(dir, "sock", "e.sock"), "--registry", "unix://"+filepath.Join(dir, "r.sock"),
		"--state-dir", stateDir, "--run-as-user", "nobody", "--confine-check").CombinedOutput()
	if err != nil {
		t.Fatalf("--confine-check: %v\n%s", err, out)
	}
	t.Logf("--confine-check --run-as-user nobody:\n%s", out)
	for _, want := range []string{"uid 65534, gid 65534", "\nptrace: EPERM\n", "\nmount: EPERM\n", "\nwrite-state-dir: ok\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--confine-check: want %q", want)
		}
	}
	if abi, _ := ll.LandlockGetABIVersion(); abi > 0 && !strings.Contains(string(out), "\nread-etc-passwd: EACCES\n") {
		t.Error("--confine-check: want read-etc-passwd: EACCES")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(stateDir, "modules"), &st); err != nil || st.Uid != 65534 {
		t.Errorf("the state dir's modules/ is owned by uid %d, want 65534 (%v)", st.Uid, err)
	}
}

// TestIsolateNetwork: with --isolate-network the executor has a network
// namespace of its own: no route to anything over IP, loopback included.
func TestIsolateNetwork(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the executor binary")
	}
	if os.Getuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	bin := filepath.Join(dir, "executor")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/wasmlet/wasmlet/services/executor").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	args := []string{"--listen", "unix://" + filepath.Join(dir, "e.sock"), "--registry", "unix://" + filepath.Join(dir, "r.sock"),
		"--state-dir", filepath.Join(dir, "state"), "--confine-check"}
	cmd := exec.Command(bin, append(args, "--isolate-network")...)
	cmd.Env = append(os.Environ(), "WASMLET_CONFINE_CHECK_DIAL="+l.Addr().String())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("--confine-check --isolate-network: %v\n%s", err, out)
	}
	t.Logf("--confine-check --isolate-network:\n%s", out)
	if !strings.Contains(string(out), "own network namespace") || !strings.Contains(string(out), "\ndial: ENETUNREACH\n") {
		t.Error("--isolate-network: want its own network namespace, and no route to the host's loopback")
	}
	// Without it, the same dial reaches the listener: the check can fail.
	cmd = exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "WASMLET_CONFINE_CHECK_DIAL="+l.Addr().String())
	if out, err = cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "\ndial: ok\n") {
		t.Errorf("without --isolate-network: %v\n%s", err, out)
	}
	if _, err := exec.Command(bin, "--listen", "tcp://127.0.0.1:1", "--registry", "unix:///r.sock", "--isolate-network").CombinedOutput(); err == nil {
		t.Error("--isolate-network with a tcp:// --listen was accepted")
	}
}
