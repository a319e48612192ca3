package agent

import (
	"path/filepath"
	"testing"
)

// A bootstrapping node writes its kubeconfig and keeps its client pairs in
// the state dir unless told otherwise, as the kubelet in /var/lib/kubelet.
func TestIdentityDefaults(t *testing.T) {
	c := Config{NodeName: "n1", StateDir: "/var/lib/wasmlet", BootstrapKubeconfig: "/etc/boot.kubeconfig"}
	if err := c.defaults(); err != nil {
		t.Fatal(err)
	}
	if c.Kubeconfig != filepath.Join("/var/lib/wasmlet", "kubeconfig") || c.CertDir != filepath.Join("/var/lib/wasmlet", "pki") {
		t.Errorf("kubeconfig %q, cert dir %q", c.Kubeconfig, c.CertDir)
	}
	c = Config{NodeName: "n1", StateDir: "/s", Kubeconfig: "/k", CertDir: "/c"}
	if err := c.defaults(); err != nil || c.Kubeconfig != "/k" || c.CertDir != "/c" {
		t.Errorf("given paths changed: %q %q (%v)", c.Kubeconfig, c.CertDir, err)
	}
	c = Config{NodeName: "n1", StateDir: "/s"}
	if err := c.defaults(); err == nil {
		t.Error("no kubeconfig and no bootstrap kubeconfig accepted")
	}
}
