package localcluster

import (
	"context"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestLoadOrSnapshot: the first start saves the snapshot it takes; a start
// after one that was never cleaned up keeps the saved one, not the chains
// the earlier kube-proxy left.
func TestLoadOrSnapshot(t *testing.T) {
	dir := t.TempDir()
	calls := 0
	snap := func(c Chains) func() (Chains, error) {
		return func() (Chains, error) { calls++; return c, nil }
	}
	first, err := loadOrSnapshot(dir, kubeProxyState{BinDir: "/bin/a", Node: "n1"}, snap(ChainsOf([]string{"iptables/filter/KUBE-FIREWALL"})))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"iptables/filter/KUBE-FIREWALL"}; !slices.Equal(first.Before, want) || first.BinDir != "/bin/a" || first.Node != "n1" {
		t.Fatalf("first start: %+v, want before %q", first, want)
	}
	second, err := loadOrSnapshot(dir, kubeProxyState{BinDir: "/bin/b", Node: "n2"}, snap(ChainsOf([]string{"iptables/filter/KUBE-FIREWALL", "iptables/nat/KUBE-SERVICES"})))
	if err != nil {
		t.Fatal(err)
	}
	if calls != 1 || !slices.Equal(second.Before, first.Before) || second.BinDir != "/bin/b" || second.Node != "n2" {
		t.Errorf("second start: %+v after %d snapshots, want the first's before and the new binary and node", second, calls)
	}
	saved, err := readKubeProxyState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(saved.Before, first.Before) || saved.BinDir != "/bin/b" {
		t.Errorf("saved %+v", saved)
	}

	broken := t.TempDir()
	if err := os.WriteFile(filepath.Join(broken, kubeProxyStateFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadOrSnapshot(broken, kubeProxyState{}, snap(Chains{})); err == nil || errors.Is(err, os.ErrNotExist) {
		t.Errorf("unreadable state: err %v, want a parse error (no new snapshot)", err)
	}
}

// TestStopKubeProxyNothing: stopping where none was started is no error.
func TestStopKubeProxyNothing(t *testing.T) {
	if err := StopKubeProxy(t.Context(), t.TempDir()); err != nil {
		t.Fatal(err)
	}
}

// TestKubeProxyDetached: the detached kube-proxy holds the host lock after
// the call that started it has returned, programs a Service, and
// StopKubeProxy (as another command would call it) stops it, leaves the
// KUBE-* chains as they were before and frees the lock; a second stop is
// no error.
func TestKubeProxyDetached(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv(EnvRequire) != "" {
			t.Fatal("kube-proxy needs root")
		}
		t.Skip("kube-proxy needs root")
	}
	c := cluster.Get(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	before, err := SnapshotChains("KUBE-")
	if err != nil {
		t.Fatal(err)
	}
	err = c.StartKubeProxyDetached(ctx, "kube-proxy-detached-test")
	if errors.Is(err, ErrNoBinaries) && os.Getenv(EnvRequire) == "" {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = StopKubeProxy(context.Background(), c.Dir()) })
	pid, err := runningPID(c.Dir(), kubeProxyProc)
	if err != nil || pid == 0 {
		t.Fatalf("no kube-proxy recorded running (pid %d, %v)", pid, err)
	}
	if err := c.StartKubeProxyDetached(ctx, "kube-proxy-detached-test"); err == nil {
		t.Error("a second start while one runs succeeded")
	}
	lctx, lcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	if unlock, err := lockHost(lctx, kubeProxyLock); err == nil {
		unlock()
		t.Error("the host lock is free while the detached kube-proxy runs")
	}
	lcancel()

	cs, err := c.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-proxy-detached-test"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "nothing"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Services("default").Delete(context.Background(), svc.Name, metav1.DeleteOptions{})
	})
	const rule = `"default/kube-proxy-detached-test:http has no endpoints"`
	filter := func() string {
		out, err := exec.Command("iptables-save", "-t", "filter").Output()
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(filter(), rule); {
		if time.Now().After(deadline) {
			t.Fatalf("kube-proxy wrote no rule %s; log: %s", rule, c.LogPath(kubeProxyProc))
		}
		time.Sleep(200 * time.Millisecond)
	}

	if err := StopKubeProxy(ctx, c.Dir()); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Errorf("kube-proxy PID %d alive after stop", pid)
	}
	after, err := SnapshotChains("KUBE-")
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(before, after) {
		t.Errorf("KUBE-* chains before kube-proxy %v, after it stopped %v", before, after)
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), kubeProxyStateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left after a clean stop (%v)", kubeProxyStateFile, err)
	}
	lctx, lcancel = context.WithTimeout(ctx, 5*time.Second)
	defer lcancel()
	unlock, err := lockHost(lctx, kubeProxyLock)
	if err != nil {
		t.Errorf("host lock after stop: %v", err)
	} else {
		unlock()
	}
	if err := StopKubeProxy(ctx, c.Dir()); err != nil {
		t.Errorf("second stop: %v", err)
	}
}
