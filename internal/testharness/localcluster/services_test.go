package localcluster

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// ServingCert issues a pair the cluster CA verifies for the names asked,
// reuses it while it is valid, and refuses a name that is a path.
func TestServingCertSignedByClusterCA(t *testing.T) {
	c := &Cluster{dir: t.TempDir()}
	if _, err := ensurePKI(c.pki()); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := c.ServingCert("metrics-server", []string{"metrics-server.kube-system.svc", "localhost"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(keyFile); err != nil {
		t.Fatal(err)
	}
	leaf := readCert(t, certFile)
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, c.CACertPath()))
	for _, name := range []string{"metrics-server.kube-system.svc", "localhost"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	again, _, err := c.ServingCert("metrics-server", []string{"metrics-server.kube-system.svc", "localhost"}, nil)
	if err != nil || readCert(t, again).SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Errorf("second call issued a new certificate (%v)", err)
	}
	if _, _, err := c.ServingCert(filepath.Join("..", "x"), nil, nil); err == nil {
		t.Error("a name with a path was accepted")
	}
}

func TestClusterSigningDurationFlag(t *testing.T) {
	c := &Cluster{dir: t.TempDir()}
	if slices.ContainsFunc(c.controllerManagerArgs(), func(a string) bool { return strings.HasPrefix(a, "--cluster-signing-duration") }) {
		t.Error("--cluster-signing-duration passed without ClusterSigningDuration")
	}
	c.signingDuration = 3 * time.Minute
	if !slices.Contains(c.controllerManagerArgs(), "--cluster-signing-duration=3m0s") {
		t.Errorf("controller-manager args %v lack --cluster-signing-duration=3m0s", c.controllerManagerArgs())
	}
}
