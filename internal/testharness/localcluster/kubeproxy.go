package localcluster

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

const kubeProxyProc = "kube-proxy"

// StartKubeProxy runs the real kube-proxy (BinDir/kube-proxy, which
// hack/controlplane/build.sh builds) for the node nodeName, as the host's
// network does for a kubelet: iptables mode, --cluster-cidr ClusterCIDR,
// --hostname-override nodeName, as user system:kube-proxy (a client
// certificate of the cluster CA; the default RBAC binds it to the ClusterRole
// system:node-proxier). Its metrics and health endpoints listen on free
// loopback ports and it touches no sysctl: no conntrack table sizing or
// timeouts (--conntrack-max-per-core=0 and the timeouts 0) and no localhost
// NodePorts (route_localnet). Its output goes to Dir/logs/kube-proxy.log.
//
// It needs root (it writes the host's iptables). It first removes what an
// earlier kube-proxy killed without cleaning up may have left (kube-proxy
// --cleanup), returns once /healthz answers (the rules are in sync), and
// dies with the calling process when the cluster was started by a test
// helper. stop ends it (SIGTERM, then SIGKILL), runs kube-proxy --cleanup,
// which removes its Service chains and rules, and removes the chains
// --cleanup leaves on purpose (see kubeProxyCleanup); stop reports an error
// when any KUBE-* chain that was not there before is left. Only one
// kube-proxy runs on a host at a time: StartKubeProxy waits (until ctx ends)
// for the host-wide lock /run/lock/wasmlet-kube-proxy.lock, which stop releases.
func (c *Cluster) StartKubeProxy(ctx context.Context, nodeName string) (stop func() error, err error) {
	bin, err := c.kubeProxyBin()
	if err != nil {
		return nil, err
	}
	// Two kube-proxies on one host rewrite each other's chains: wait for
	// the host's lock, held until stop.
	unlock, err := lockHost(ctx, kubeProxyLock)
	if err != nil {
		return nil, fmt.Errorf("start kube-proxy: %w", err)
	}
	started := false
	defer func() {
		if !started {
			unlock()
		}
	}()
	kubeconfig := filepath.Join(c.dir, "kube-proxy.kubeconfig")
	if err := c.clientKubeconfig(kubeconfig, pkix.Name{CommonName: "system:kube-proxy"}); err != nil {
		return nil, fmt.Errorf("start kube-proxy: %w", err)
	}
	// What kube-proxy may leave after --cleanup is removed when stopped only
	// if it was not there before: a kubelet's, say.
	before, err := SnapshotChains("KUBE-")
	if err != nil {
		return nil, fmt.Errorf("start kube-proxy: %w", err)
	}
	// Leftovers of a kube-proxy killed before its cleanup ran.
	if err := c.kubeProxyCleanup(before); err != nil {
		return nil, fmt.Errorf("start kube-proxy: remove leftovers: %w", err)
	}
	ports := []*int{new(int), new(int)}
	if err := pickPorts(ports, nil); err != nil {
		return nil, fmt.Errorf("start kube-proxy: %w", err)
	}
	healthz := fmt.Sprintf("127.0.0.1:%d", *ports[0])
	args := c.kubeProxyArgs(kubeconfig, nodeName, healthz, fmt.Sprintf("127.0.0.1:%d", *ports[1]))
	p, err := startProcess(c.dir, kubeProxyProc, bin, args, nil, c.dieWithParent)
	if err != nil {
		return nil, fmt.Errorf("start kube-proxy: %w", err)
	}
	c.log.Info("started", "component", kubeProxyProc, "pid", p.pid, "log", p.logPath)
	stop = func() error {
		var errs []error
		if err := stopOne(c.dir, kubeProxyProc); err != nil {
			errs = append(errs, err)
		}
		select {
		case <-p.exited:
		case <-time.After(killWait):
		}
		if err := c.kubeProxyCleanup(before); err != nil {
			errs = append(errs, err)
		}
		unlock()
		return errors.Join(errs...)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	if err := waitFor(ctx, p, componentsTimeout, httpOK(client, "http://"+healthz+"/healthz")); err != nil {
		started = true // stop unlocks
		if serr := stop(); serr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", serr))
		}
		return nil, fmt.Errorf("start kube-proxy: %w", err)
	}
	c.log.Info("kube-proxy ready", "node", nodeName, "healthz", healthz)
	started = true
	return stop, nil
}

// CheckKubeProxy says why StartKubeProxy or StartKubeProxyDetached cannot
// run here (not root, no kube-proxy in the control plane's build (wrapping
// ErrNoBinaries), no iptables), or nil.
func (c *Cluster) CheckKubeProxy() error {
	_, err := c.kubeProxyBin()
	return err
}

// kubeProxyBin is the kube-proxy binary, after checking that it can run
// here: as root, with iptables installed.
func (c *Cluster) kubeProxyBin() (string, error) {
	if os.Geteuid() != 0 {
		return "", errors.New("start kube-proxy: needs root (it writes the host's iptables)")
	}
	bin := filepath.Join(c.st.BinDir, kubeProxyProc)
	if st, err := os.Stat(bin); err != nil || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("start kube-proxy: %w: %s has no executable kube-proxy: rebuild the control plane with hack/controlplane/build.sh", ErrNoBinaries, c.st.BinDir)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return "", fmt.Errorf("start kube-proxy: %w: install Debian's iptables (hack/deps.sh)", err)
	}
	return bin, nil
}

// kubeProxyCleanup runs kube-proxy --cleanup (its output appended to its
// log), then removes the KUBE-* chains it leaves on purpose and that were not
// there before (the snapshot before): KUBE-FIREWALL with its jumps from
// INPUT and OUTPUT and KUBE-MARK-MASQ, which it shares with the kubelet, and
// its KUBE-PROXY-CANARY chains. It fails when any KUBE-* chain that was not in
// before is left, in IPv4 or IPv6. --cleanup also tries the IPVS and nftables
// modes' leftovers and may exit non-zero on a host without them, so its exit
// status alone says little: what counts is what is left.
func (c *Cluster) kubeProxyCleanup(before Chains) error {
	logf, err := os.OpenFile(c.LogPath(kubeProxyProc), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("kube-proxy --cleanup: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s: kube-proxy --cleanup\n", time.Now().UTC().Format(time.RFC3339))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.st.BinDir, kubeProxyProc), "--cleanup", "--proxy-mode=iptables", "--v=2")
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	runErr := cmd.Run()
	fmt.Fprintf(logf, "=== kube-proxy --cleanup: %v\n", runErr)
	if err := RemoveNewChains(before, "KUBE-"); err != nil {
		return fmt.Errorf("after kube-proxy --cleanup (%v): %w (see %s)", runErr, err, c.LogPath(kubeProxyProc))
	}
	return nil
}

// kubeProxyArgs are kube-proxy's flags for node, with its health and
// metrics endpoints on the given loopback addresses.
func (c *Cluster) kubeProxyArgs(kubeconfig, node, healthz, metrics string) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--proxy-mode=iptables",
		"--cluster-cidr=" + ClusterCIDR,
		"--hostname-override=" + node,
		"--healthz-bind-address=" + healthz,
		"--metrics-bind-address=" + metrics,
		// Leave the host's conntrack sysctls alone (zero: do not set).
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		// NodePorts on 127.0.0.1 would set net.ipv4.conf.all.route_localnet.
		"--iptables-localhost-nodeports=false",
		"--profiling=false",
		"--v=2",
	}
}

// clientKubeconfig issues a client certificate for subject, signed by the
// cluster CA, and writes a kubeconfig with it to path.
func (c *Cluster) clientKubeconfig(path string, subject pkix.Name) error {
	c.nodeMu.Lock()
	defer c.nodeMu.Unlock()
	p := c.pki()
	ca, err := testpki.LoadPair(p.crt(caName), p.key(caName))
	if err != nil {
		return fmt.Errorf("kubeconfig for %s: load cluster CA: %w", subject.CommonName, err)
	}
	leaf, err := ca.Issue(testpki.Spec{
		Subject:  subject,
		Usage:    []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		Validity: testpki.LeafValidity,
	})
	if err != nil {
		return fmt.Errorf("kubeconfig for %s: %w", subject.CommonName, err)
	}
	keyPEM, err := leaf.KeyPEM()
	if err != nil {
		return fmt.Errorf("kubeconfig for %s: %w", subject.CommonName, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("kubeconfig for %s: %w", subject.CommonName, err)
	}
	if err := c.writeKubeconfig(path, subject.CommonName, leaf.CertPEM(), keyPEM); err != nil {
		return fmt.Errorf("kubeconfig for %s: %w", subject.CommonName, err)
	}
	return nil
}

const kubeProxyLock = "/run/lock/wasmlet-kube-proxy.lock"

// lockHost takes an exclusive flock on path, polling until ctx ends; the
// kernel releases it if the process dies.
func lockHost(ctx context.Context, path string) (unlock func(), err error) {
	f, err := lockHostFile(ctx, path)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { f.Close() }) }, nil
}

// lockHostFile is lockHost's locked file: the lock lasts while it, or a
// copy of it a child inherited, is open.
func lockHostFile(ctx context.Context, path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for %s (another kube-proxy of this harness runs on the host): %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// NodeBridge is the bridge a node agent named node makes with
// --pod-network=bridge (podnet.BridgeFor, which its test keeps equal to
// this): tests remove it when they are done with the node, and a stale one
// (of an earlier cluster, with another podCIDR's gateway) before.
func NodeBridge(node string) string {
	sum := sha256.Sum256([]byte(node))
	return "cni-wl-" + hex.EncodeToString(sum[:4])
}
