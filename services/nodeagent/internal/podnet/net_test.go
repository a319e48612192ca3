package podnet

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests below make real namespaces, a bridge and veths with the plugins
// hack/cni/build.sh builds. Traffic stays between the host and namespaces on
// a bridge each test makes (named wlt<random>) on a random /24 of
// 10.199.0.0/16 that no host route overlaps; the bridge is deleted when the
// test ends.

const envRequire = "WASMLET_REQUIRE_CLUSTER"

type testNet struct {
	m       *Manager
	cidr    netip.Prefix
	bridge  string
	leases  string // host-local's lease dir of the network
	state   string
	confDir string
}

// newTestNet skips the test (fails it with $WASMLET_REQUIRE_CLUSTER set)
// when not root or without the plugins.
func newTestNet(tb testing.TB, cidrSize int) *testNet {
	tb.Helper()
	if testing.Short() {
		tb.Skip("-short: skipping a test that makes network namespaces")
	}
	bins, err := CachedPluginDir(os.Getenv("WASMLET_CACHE"))
	if err == nil && os.Geteuid() != 0 {
		err = errors.New("not root: making network namespaces needs CAP_SYS_ADMIN and CAP_NET_ADMIN")
	}
	if err != nil {
		if os.Getenv(envRequire) != "" {
			tb.Fatalf("%v (%s is set, so this is a failure, not a skip)", err, envRequire)
		}
		tb.Skipf("skipping: %v (set %s=1 to make this a failure)", err, envRequire)
	}
	b := make([]byte, 3)
	rand.Read(b)
	bridge := "wlt" + hex.EncodeToString(b)
	cidr := freeCIDR(tb, cidrSize)
	dir := tb.TempDir()
	n := &testNet{cidr: cidr, bridge: bridge, state: filepath.Join(dir, "state"), confDir: filepath.Join(dir, "net.d")}
	n.leases = filepath.Join(dir, "leases")
	if _, err := WriteDefaultConfig(n.confDir, DefaultNetwork{PodCIDR: cidr, Name: "wasmlet-test", Bridge: bridge, DataDir: n.leases}); err != nil {
		tb.Fatal(err)
	}
	n.leases = filepath.Join(n.leases, "wasmlet-test")
	n.m, err = New(Config{StateDir: n.state, ConfDir: n.confDir, PluginDirs: []string{bins}, Log: slog.New(slog.NewTextHandler(tb.Output(), nil))})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if _, err := net.InterfaceByName(bridge); err != nil {
			return
		}
		if out, err := exec.Command("ip", "link", "delete", bridge).CombinedOutput(); err != nil {
			tb.Errorf("delete test bridge %s: %v: %s", bridge, err, out)
		}
	})
	return n
}

// freeCIDR picks a prefix of 10.199.0.0/16 that overlaps no address or
// route of the host.
func freeCIDR(tb testing.TB, size int) netip.Prefix {
	tb.Helper()
	var taken []netip.Prefix
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		tb.Fatal(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			taken = append(taken, p)
		}
	}
	taken = append(taken, hostRoutes(tb)...)
	for range 50 {
		b := make([]byte, 1)
		rand.Read(b)
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 199, b[0], 0}), size).Masked()
		free := true
		for _, q := range taken {
			if q.Bits() > 0 && q.Overlaps(p) {
				free = false
			}
		}
		if free {
			return p
		}
	}
	tb.Fatal("no free prefix in 10.199.0.0/16")
	return netip.Prefix{}
}

// hostRoutes reads the IPv4 routes of /proc/net/route (destination and mask
// in little-endian hex).
func hostRoutes(tb testing.TB) []netip.Prefix {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		tb.Fatal(err)
	}
	var out []netip.Prefix
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		dst, err1 := strconv.ParseUint(f[1], 16, 32)
		mask, err2 := strconv.ParseUint(f[7], 16, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		a := netip.AddrFrom4([4]byte{byte(dst), byte(dst >> 8), byte(dst >> 16), byte(dst >> 24)})
		out = append(out, netip.PrefixFrom(a, bits.OnesCount32(uint32(mask))))
	}
	return out
}

func testPod(name string) Pod {
	b := make([]byte, 8)
	rand.Read(b)
	return Pod{Namespace: "podnet-test", Name: name, UID: name + "-" + hex.EncodeToString(b)}
}

func (n *testNet) setup(tb testing.TB, pod Pod) Attachment {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	att, err := n.m.Setup(ctx, pod, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { n.m.Teardown(context.Background(), pod) })
	return att
}

func (n *testNet) leased(ip netip.Addr) bool {
	_, err := os.Stat(filepath.Join(n.leases, ip.String()))
	return err == nil
}

// podIP checks that a pod got one address, in the test CIDR, leased by
// host-local.
func (n *testNet) podIP(t *testing.T, pod Pod, att Attachment) netip.Addr {
	t.Helper()
	if len(att.IPs) != 1 || !n.cidr.Contains(att.IPs[0]) {
		t.Fatalf("pod %s got IPs %v, want one in %s", pod, att.IPs, n.cidr)
	}
	if !n.leased(att.IPs[0]) {
		t.Errorf("pod %s: no host-local lease for %s in %s", pod, att.IPs[0], n.leases)
	}
	if !isNetNS(att.NetNS) {
		t.Errorf("pod %s: %s is not a network namespace", pod, att.NetNS)
	}
	return att.IPs[0]
}

// listenIn opens a TCP echo-once server inside a namespace on addr.
func listenIn(t *testing.T, netns string, addr netip.Addr) net.Listener {
	t.Helper()
	var ln net.Listener
	err := InNamespace(netns, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 8080).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Write([]byte("echo " + line))
			c.Close()
		}
	}()
	return ln
}

// ask sends a line to addr and returns the answer; from is the namespace to
// dial from ("" for the host's).
func ask(from string, addr string, timeout time.Duration) (string, error) {
	var c net.Conn
	dial := func() (err error) {
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	}
	var err error
	if from == "" {
		err = dial()
	} else {
		err = InNamespace(from, dial)
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hi\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

func TestSetupTeardownTwoPods(t *testing.T) {
	n := newTestNet(t, 24)
	a, b := testPod("a"), testPod("b")
	attA, attB := n.setup(t, a), n.setup(t, b)
	ipA, ipB := n.podIP(t, a, attA), n.podIP(t, b, attB)
	if ipA == ipB {
		t.Fatalf("both pods got %s", ipA)
	}
	if again, err := n.m.Setup(t.Context(), a, nil); err != nil || again.NetNS != attA.NetNS || len(again.IPs) != 1 || again.IPs[0] != ipA {
		t.Errorf("second Setup of %s: %+v, %v; want the first attachment %+v", a, again, err, attA)
	}

	listenIn(t, attA.NetNS, ipA)
	target := netip.AddrPortFrom(ipA, 8080).String()
	if got, err := ask("", target, 5*time.Second); err != nil || got != "echo hi\n" {
		t.Errorf("from the host to pod a at %s: %q, %v", target, got, err)
	}
	if got, err := ask(attB.NetNS, target, 5*time.Second); err != nil || got != "echo hi\n" {
		t.Errorf("from pod b to pod a at %s: %q, %v", target, got, err)
	}
	// Pod a's loopback is up: the loopback network was attached.
	var lo net.Listener
	if err := InNamespace(attA.NetNS, func() (err error) { lo, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		t.Errorf("listen on 127.0.0.1 in pod a: %v", err)
	} else {
		lo.Close()
	}

	if err := n.m.Teardown(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	if n.leased(ipA) {
		t.Errorf("after Teardown, %s is still leased", ipA)
	}
	if _, err := os.Lstat(attA.NetNS); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Teardown, namespace file %s: %v, want gone", attA.NetNS, err)
	}
	if _, err := ask(attB.NetNS, target, time.Second); err == nil {
		t.Errorf("pod a's address %s still answers after Teardown", target)
	}
	if err := n.m.Teardown(t.Context(), a); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
	if !n.leased(ipB) || !isNetNS(attB.NetNS) {
		t.Errorf("tearing down pod a took pod b's lease or namespace")
	}
}

func TestCleanupKeepsAdoptedRemovesLeftovers(t *testing.T) {
	n := newTestNet(t, 24)
	kept, gone, rebooted := testPod("kept"), testPod("gone"), testPod("rebooted")
	attKept, attGone, attRebooted := n.setup(t, kept), n.setup(t, gone), n.setup(t, rebooted)
	ipKept, ipGone, ipRebooted := n.podIP(t, kept, attKept), n.podIP(t, gone, attGone), n.podIP(t, rebooted, attRebooted)
	// A namespace file a reboot left unmounted, with no attachment.
	stale := filepath.Join(n.state, "netns", "stale-uid")
	if err := os.WriteFile(stale, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	// A running pod whose namespace a reboot took (the file and the CNI
	// cache stay, the mount and its veth go): its lease must not leak.
	if err := unix.Unmount(attRebooted.NetNS, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}

	// A restarted node agent: a new Manager on the same directories.
	m, err := New(n.m.cfg)
	if err != nil {
		t.Fatal(err)
	}
	adopted, err := m.Cleanup(t.Context(), []Pod{kept, rebooted})
	if err != nil {
		t.Fatal(err)
	}
	if att, ok := adopted[kept.UID]; !ok || att.NetNS != attKept.NetNS || len(att.IPs) != 1 || att.IPs[0] != ipKept || att.Network != "wasmlet-test" {
		t.Errorf("adopted %+v, want %s: %+v", adopted, kept.UID, attKept)
	}
	if len(adopted) != 1 {
		t.Errorf("adopted %d pods, want 1", len(adopted))
	}
	if !n.leased(ipKept) || !isNetNS(attKept.NetNS) {
		t.Errorf("Cleanup took the kept pod's lease or namespace")
	}
	for _, ip := range []netip.Addr{ipGone, ipRebooted} {
		if n.leased(ip) {
			t.Errorf("after Cleanup, the leftover's %s is still leased", ip)
		}
	}
	for _, p := range []string{attGone.NetNS, attRebooted.NetNS, stale} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Cleanup, %s: %v, want gone", p, err)
		}
	}
	listenIn(t, attKept.NetNS, ipKept)
	if got, err := ask("", netip.AddrPortFrom(ipKept, 8080).String(), 5*time.Second); err != nil || got != "echo hi\n" {
		t.Errorf("the kept pod no longer answers: %q, %v", got, err)
	}
}

func TestAddressesExhausted(t *testing.T) {
	// A /30 leaves one address once the network, broadcast and gateway
	// addresses are taken.
	n := newTestNet(t, 30)
	first := testPod("first")
	n.podIP(t, first, n.setup(t, first))
	second := testPod("second")
	_, err := n.m.Setup(t.Context(), second, nil)
	if !errors.Is(err, ErrAddressesExhausted) {
		t.Fatalf("Setup on a full network: %v, want ErrAddressesExhausted", err)
	}
	t.Logf("Setup on a full network: %v", err)
	if _, err := os.Lstat(filepath.Join(n.state, "netns", second.UID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed Setup left its namespace: %v", err)
	}
}

// BenchmarkSetupTeardown is the cost a pod's network adds to its start and
// stop: a namespace, the loopback and default networks added and deleted.
// Besides wall time per pod it reports the CPU time the process and its
// plugins spent (cpu-ms/op), which a loaded machine inflates less.
func BenchmarkSetupTeardown(b *testing.B) {
	n := newTestNet(b, 24)
	ctx := context.Background()
	// The first Setup makes the bridge; that is once per node.
	warm := Pod{Namespace: "bench", Name: "warm", UID: "bench-warm"}
	if _, err := n.m.Setup(ctx, warm, nil); err != nil {
		b.Fatal(err)
	}
	defer n.m.Teardown(ctx, warm)
	cpu0 := cpuTime()
	i := 0
	for b.Loop() {
		pod := Pod{Namespace: "bench", Name: "p", UID: fmt.Sprintf("bench-%d", i)}
		i++
		if _, err := n.m.Setup(ctx, pod, nil); err != nil {
			b.Fatal(err)
		}
		if err := n.m.Teardown(ctx, pod); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(i), "cpu-ms/op")
}

// BenchmarkNetNS is the namespace alone: made, bind-mounted, removed.
func BenchmarkNetNS(b *testing.B) {
	n := newTestNet(b, 24)
	path := n.m.netnsPath("bench")
	for b.Loop() {
		if err := newNetNS(path); err != nil {
			b.Fatal(err)
		}
		if err := removeNetNS(path); err != nil {
			b.Fatal(err)
		}
	}
}

// cpuTime is the user and system time of this process and its waited-for
// children (the plugins).
func cpuTime() time.Duration {
	var self, children syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	d := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return d(self.Utime) + d(self.Stime) + d(children.Utime) + d(children.Stime)
}

func TestHostPort(t *testing.T) {
	n := newTestNet(t, 24)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hostPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	pod := testPod("hostport")
	ctx := t.Context()
	att, err := n.m.Setup(ctx, pod, []PortMapping{{HostPort: int32(hostPort), ContainerPort: 8080, Protocol: "TCP"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.m.Teardown(context.Background(), pod) })
	listenIn(t, att.NetNS, n.podIP(t, pod, att))
	gateway := n.cidr.Addr().Next() // host-local's default gateway: the bridge
	published := netip.AddrPortFrom(gateway, uint16(hostPort)).String()
	if got, err := ask("", published, 5*time.Second); err != nil || got != "echo hi\n" {
		t.Fatalf("hostPort %s: %q, %v", published, got, err)
	}
	if err := n.m.Teardown(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if _, err := ask("", published, time.Second); err == nil {
		t.Errorf("hostPort %s still answers after Teardown", published)
	}
}

// A Setup cut short after making the namespace (the node agent died) left a
// namespace and no cached attachment: Setup again attaches it.
func TestSetupRepairsHalfDone(t *testing.T) {
	n := newTestNet(t, 24)
	pod := testPod("half")
	path := n.m.netnsPath(pod.UID)
	if err := newNetNS(path); err != nil {
		t.Fatal(err)
	}
	att := n.setup(t, pod)
	n.podIP(t, pod, att)
	if att.NetNS != path {
		t.Errorf("namespace %s, want the existing %s", att.NetNS, path)
	}
}

// Without CAP_SYS_ADMIN, Setup says what it needs. As root the test runs
// itself again as nobody.
func TestSetupNotPermitted(t *testing.T) {
	if os.Geteuid() == 0 {
		if testing.Short() {
			t.Skip("-short: skipping a test that runs itself as another user")
		}
		dir := t.TempDir()
		for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
			os.Chmod(d, 0o755)
		}
		bin := filepath.Join(dir, "podnet.test")
		self, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, self, 0o755); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "tmp")
		if err := os.Mkdir(tmp, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(tmp, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-test.run=^TestSetupNotPermitted$", "-test.v")
		cmd.Env = append(os.Environ(), "HOME="+tmp, "TMPDIR="+tmp)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestSetupNotPermitted") {
			t.Fatalf("as nobody: %v\n%s", err, out)
		}
		t.Logf("as nobody:\n%s", out)
		return
	}
	state, conf, bins := t.TempDir(), t.TempDir(), t.TempDir()
	if _, err := WriteDefaultConfig(conf, DefaultNetwork{PodCIDR: netip.MustParsePrefix("10.199.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	for _, name := range standardPlugins {
		os.WriteFile(filepath.Join(bins, name), []byte("#!/bin/sh\nexit 1\n"), 0o755)
	}
	m, err := New(Config{StateDir: state, ConfDir: conf, PluginDirs: []string{bins}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Setup(t.Context(), testPod("p"), nil)
	if !errors.Is(err, ErrNotPermitted) || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
		t.Fatalf("Setup as uid %d: %v, want ErrNotPermitted naming CAP_SYS_ADMIN", os.Geteuid(), err)
	}
	t.Logf("Setup as uid %d: %v", os.Geteuid(), err)
	if entries, _ := os.ReadDir(filepath.Join(state, "netns")); len(entries) != 0 {
		t.Errorf("a refused Setup left %d namespace files", len(entries))
	}
}

// Pod workers set pods up concurrently; the first ADDs race to make the
// bridge.
func TestConcurrentSetups(t *testing.T) {
	n := newTestNet(t, 24)
	const pods = 6
	var wg sync.WaitGroup
	atts := make([]Attachment, pods)
	errs := make([]error, pods)
	for i := range pods {
		wg.Go(func() {
			pod := testPod(fmt.Sprintf("p%d", i))
			atts[i], errs[i] = n.m.Setup(t.Context(), pod, nil)
			t.Cleanup(func() { n.m.Teardown(context.Background(), pod) })
		})
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for i := range pods {
		if errs[i] != nil {
			t.Errorf("pod %d: %v", i, errs[i])
			continue
		}
		if len(atts[i].IPs) != 1 || !n.cidr.Contains(atts[i].IPs[0]) || seen[atts[i].IPs[0]] {
			t.Errorf("pod %d got %v: want one address of %s that no other pod has", i, atts[i].IPs, n.cidr)
			continue
		}
		seen[atts[i].IPs[0]] = true
	}
}

// An ADD that fails after host-local leased an address (here in a plugin
// after the bridge) is undone: libcni caches nothing of it, so Setup deletes
// with the config it used.
func TestFailedSetupLeavesNothing(t *testing.T) {
	n := newTestNet(t, 24)
	bins := t.TempDir()
	for _, p := range standardPlugins {
		if err := os.Symlink(filepath.Join(n.m.cfg.PluginDirs[0], p), filepath.Join(bins, p)); err != nil {
			t.Fatal(err)
		}
	}
	fail := "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"boom\"}'; exit 1; fi\n"
	if err := os.WriteFile(filepath.Join(bins, "fail"), []byte(fail), 0o755); err != nil {
		t.Fatal(err)
	}
	confs, _ := filepath.Glob(filepath.Join(n.confDir, "*.conflist"))
	b, err := os.ReadFile(confs[0])
	if err != nil {
		t.Fatal(err)
	}
	var conf map[string]any
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	conf["plugins"] = append(conf["plugins"].([]any), map[string]any{"type": "fail"})
	b, _ = json.Marshal(conf)
	if err := os.WriteFile(confs[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := n.m.cfg
	cfg.PluginDirs = []string{bins}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pod := testPod("fails")
	if _, err := m.Setup(t.Context(), pod, nil); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("Setup: %v, want the plugin's error", err)
	}
	if leases, _ := filepath.Glob(filepath.Join(n.leases, "10.*")); len(leases) != 0 {
		t.Errorf("a failed Setup left leases %v", leases)
	}
	if _, err := os.Lstat(m.netnsPath(pod.UID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed Setup left its namespace: %v", err)
	}
}
