package localcluster

import (
	"context"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

// kubeProxyStateFile (in the cluster's Dir) holds what StopKubeProxy needs
// of a kube-proxy that StartKubeProxyDetached started: the KUBE-* chains
// there before the first one ran and where its binary is (for --cleanup).
// It is written before kube-proxy starts and removed once the clean-up has
// left nothing behind, so a start or a stop killed half-way is finished by
// the next StopKubeProxy.
const kubeProxyStateFile = "kube-proxy.json"

type kubeProxyState struct {
	BinDir string   `json:"binDir"`
	Node   string   `json:"node"`
	Before []string `json:"before"`
}

// StartKubeProxyDetached runs the real kube-proxy for nodeName as
// StartKubeProxy does (same flags, identity, root and lock), but detached,
// like the control plane: it outlives the calling process (unless the
// cluster was started by a test helper) and holds the host-wide lock
// /run/lock/wasmlet-kube-proxy.lock for as long as it runs (it inherits the
// locked file). Its PID is in Dir/pids/kube-proxy.pid, its output in
// Dir/logs/kube-proxy.log, and the KUBE-* chains there before it in
// Dir/kube-proxy.json. It returns once /healthz answers. Stop it, from any
// process, with StopKubeProxy. A kube-proxy of this cluster that still runs
// is an error: stop it first.
func (c *Cluster) StartKubeProxyDetached(ctx context.Context, nodeName string) error {
	bin, err := c.kubeProxyBin()
	if err != nil {
		return err
	}
	if pid, _ := runningPID(c.dir, kubeProxyProc); pid != 0 {
		return fmt.Errorf("start kube-proxy: PID %d runs already: StopKubeProxy(%s) first", pid, c.dir)
	}
	lock, err := lockHostFile(ctx, kubeProxyLock)
	if err != nil {
		return fmt.Errorf("start kube-proxy: %w", err)
	}
	// kube-proxy holds the lock from here on (its inherited copy); this
	// process's copy must go before a StopKubeProxy here can take it.
	var once sync.Once
	closeLock := func() { once.Do(func() { lock.Close() }) }
	defer closeLock()
	kubeconfig := filepath.Join(c.dir, "kube-proxy.kubeconfig")
	if err := c.clientKubeconfig(kubeconfig, pkix.Name{CommonName: "system:kube-proxy"}); err != nil {
		return fmt.Errorf("start kube-proxy: %w", err)
	}
	st, err := loadOrSnapshot(c.dir, kubeProxyState{BinDir: c.st.BinDir, Node: nodeName}, func() (Chains, error) { return SnapshotChains("KUBE-") })
	if err != nil {
		return fmt.Errorf("start kube-proxy: %w", err)
	}
	// Leftovers of a kube-proxy killed before its cleanup ran.
	if err := c.kubeProxyCleanup(ChainsOf(st.Before)); err != nil {
		return fmt.Errorf("start kube-proxy: remove leftovers: %w", err)
	}
	ports := []*int{new(int), new(int)}
	if err := pickPorts(ports, nil); err != nil {
		return fmt.Errorf("start kube-proxy: %w", err)
	}
	healthz := fmt.Sprintf("127.0.0.1:%d", *ports[0])
	args := c.kubeProxyArgs(kubeconfig, nodeName, healthz, fmt.Sprintf("127.0.0.1:%d", *ports[1]))
	p, err := startProcess(c.dir, kubeProxyProc, bin, args, nil, c.dieWithParent, lock)
	if err != nil {
		return fmt.Errorf("start kube-proxy: %w", err)
	}
	c.log.Info("started", "component", kubeProxyProc, "pid", p.pid, "log", p.logPath, "detached", true)
	client := &http.Client{Timeout: 5 * time.Second}
	if err := waitFor(ctx, p, componentsTimeout, httpOK(client, "http://"+healthz+"/healthz")); err != nil {
		closeLock()
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if serr := StopKubeProxy(sctx, c.dir); serr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", serr))
		}
		return fmt.Errorf("start kube-proxy: %w", err)
	}
	c.log.Info("kube-proxy ready", "node", nodeName, "healthz", healthz)
	return nil
}

// StopKubeProxy stops the kube-proxy StartKubeProxyDetached started for the
// cluster in dir, from any process, and removes what it leaves as
// StartKubeProxy's stop does (kube-proxy --cleanup, then the KUBE-* chains
// that were not there before it), holding the host lock meanwhile (waiting
// for it until ctx ends: between the kube-proxy's exit and this, another
// harness's kube-proxy may have taken it). It may be called more than once,
// and when none was started; a failed clean-up is tried again by the next
// call.
func StopKubeProxy(ctx context.Context, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("stop kube-proxy: %w", err)
	}
	st, err := readKubeProxyState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return stopOne(dir, kubeProxyProc)
	}
	if err != nil {
		return fmt.Errorf("stop kube-proxy: %w", err)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("stop kube-proxy: its clean-up needs root (it writes the host's iptables); %s is left", filepath.Join(dir, kubeProxyStateFile))
	}
	if err := stopOne(dir, kubeProxyProc); err != nil {
		return err
	}
	unlock, err := lockHost(ctx, kubeProxyLock)
	if err != nil {
		return fmt.Errorf("stop kube-proxy: clean up: %w", err)
	}
	defer unlock()
	c := &Cluster{dir: dir, st: state{BinDir: st.BinDir}}
	if err := c.kubeProxyCleanup(ChainsOf(st.Before)); err != nil {
		return fmt.Errorf("stop kube-proxy: %w", err)
	}
	if err := os.Remove(filepath.Join(dir, kubeProxyStateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stop kube-proxy: %w", err)
	}
	return nil
}

// loadOrSnapshot returns the kube-proxy state saved in dir, or, when there
// is none, want with Before from snapshot, saved first. A saved one wins: its
// Before predates chains a kube-proxy since killed may have left, which a
// new snapshot would count as the host's own.
func loadOrSnapshot(dir string, want kubeProxyState, snapshot func() (Chains, error)) (kubeProxyState, error) {
	st, err := readKubeProxyState(dir)
	if err == nil {
		st.Node = want.Node
		if want.BinDir != "" {
			st.BinDir = want.BinDir
		}
		return st, writeKubeProxyState(dir, st)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return st, err
	}
	before, err := snapshot()
	if err != nil {
		return st, err
	}
	want.Before = before.List()
	return want, writeKubeProxyState(dir, want)
}

func readKubeProxyState(dir string) (kubeProxyState, error) {
	var st kubeProxyState
	path := filepath.Join(dir, kubeProxyStateFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("read %s: %w (remove the chains it lists by hand, then the file)", path, err)
	}
	return st, nil
}

func writeKubeProxyState(dir string, st kubeProxyState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return testpki.WriteFile(filepath.Join(dir, kubeProxyStateFile), append(b, '\n'), 0o644)
}
