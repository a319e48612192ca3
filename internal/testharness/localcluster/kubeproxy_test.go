package localcluster

import (
	"context"
	"errors"
	"maps"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestKubeProxyRulesAndCleanup: the real kube-proxy, as system:kube-proxy,
// programs a Service without endpoints (its REJECT rule), and stopping it
// leaves no KUBE-* chain that was not there before, in IPv4 or IPv6.
func TestKubeProxyRulesAndCleanup(t *testing.T) {
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
	stop, err := c.StartKubeProxy(ctx, "kube-proxy-test")
	if errors.Is(err, ErrNoBinaries) && os.Getenv(EnvRequire) == "" {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = stop()
		}
	})
	cs, err := c.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-proxy-test"},
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
	const rule = `"default/kube-proxy-test:http has no endpoints"`
	filter := func() string {
		out, err := exec.Command("iptables-save", "-t", "filter").Output()
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(filter(), rule) {
		if time.Now().After(deadline) {
			t.Fatalf("kube-proxy wrote no rule %s; log: %s", rule, c.LogPath(kubeProxyProc))
		}
		time.Sleep(200 * time.Millisecond)
	}

	stopped = true
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	after, err := SnapshotChains("KUBE-")
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(before, after) {
		t.Errorf("KUBE-* chains before kube-proxy %v, after it stopped %v", before, after)
	}
	if strings.Contains(filter(), "kube-proxy-test") {
		t.Errorf("the Service's rule is left after stop")
	}
	if err := stop(); err != nil {
		t.Errorf("second stop: %v", err)
	}
}
