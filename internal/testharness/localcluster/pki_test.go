package localcluster

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseCertPEM(t, b)
}

func parseCertPEM(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPKIGeneratedThenReused(t *testing.T) {
	p := pkiPaths{dir: filepath.Join(t.TempDir(), "pki")}
	if _, err := ensurePKI(p); err != nil {
		t.Fatal(err)
	}
	ca := readCert(t, p.crt(caName))
	api := readCert(t, p.crt(apiserverName))
	if err := api.CheckSignatureFrom(ca); err != nil {
		t.Errorf("apiserver cert not signed by the cluster CA: %v", err)
	}
	for _, host := range []string{"127.0.0.1", "10.0.0.1", "localhost", "kubernetes.default.svc.cluster.local"} {
		if err := api.VerifyHostname(host); err != nil {
			t.Errorf("apiserver cert: %v", err)
		}
	}
	subjects := map[string][2]string{
		adminName:             {"wasmlet-admin", "system:masters"},
		schedulerName:         {"system:kube-scheduler", ""},
		controllerManagerName: {"system:kube-controller-manager", ""},
		kubeletClientName:     {"kube-apiserver-kubelet-client", "system:masters"},
	}
	for name, want := range subjects {
		c := readCert(t, p.crt(name))
		org := ""
		if len(c.Subject.Organization) > 0 {
			org = c.Subject.Organization[0]
		}
		if c.Subject.CommonName != want[0] || org != want[1] {
			t.Errorf("%s: CN=%s O=%s, want CN=%s O=%s", name, c.Subject.CommonName, org, want[0], want[1])
		}
		if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
			t.Errorf("%s: not a client certificate", name)
		}
	}
	front := readCert(t, p.crt(frontProxyClientName))
	if err := front.CheckSignatureFrom(readCert(t, p.crt(frontProxyCAName))); err != nil {
		t.Errorf("front-proxy client not signed by the front-proxy CA: %v", err)
	}

	before := map[string][]byte{}
	files, _ := filepath.Glob(filepath.Join(p.dir, "*"))
	for _, f := range files {
		before[f], _ = os.ReadFile(f)
	}
	// A leaf that is removed is re-issued alone; everything else is kept.
	if err := os.Remove(p.crt(adminName)); err != nil {
		t.Fatal(err)
	}
	if _, err := ensurePKI(p); err != nil {
		t.Fatal(err)
	}
	for f, b := range before {
		now, _ := os.ReadFile(f)
		changed := !bytes.Equal(now, b)
		wantChanged := f == p.crt(adminName) || f == p.key(adminName)
		if changed != wantChanged {
			t.Errorf("%s: changed=%v, want %v", filepath.Base(f), changed, wantChanged)
		}
	}
	// A CA that is unreadable is replaced with everything it signed.
	if err := os.WriteFile(p.crt(caName), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ensurePKI(p); err != nil {
		t.Fatal(err)
	}
	if err := readCert(t, p.crt(apiserverName)).CheckSignatureFrom(readCert(t, p.crt(caName))); err != nil {
		t.Errorf("after a new CA, apiserver cert not re-issued: %v", err)
	}
}

func TestNodeKubeconfigIdentity(t *testing.T) {
	dir := t.TempDir()
	c := &Cluster{dir: dir, st: state{APIServerPort: 6443}}
	if _, err := ensurePKI(c.pki()); err != nil {
		t.Fatal(err)
	}
	path, err := c.NodeKubeconfig("wasm-node-1")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	auth := cfg.AuthInfos[cfg.Contexts[cfg.CurrentContext].AuthInfo]
	cert := parseCertPEM(t, auth.ClientCertificateData)
	if cert.Subject.CommonName != "system:node:wasm-node-1" || !slices.Equal(cert.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("node cert subject %s", cert.Subject)
	}
	if err := cert.CheckSignatureFrom(readCert(t, c.CACertPath())); err != nil {
		t.Errorf("node cert not signed by the cluster CA: %v", err)
	}
	if got := cfg.Clusters[cfg.Contexts[cfg.CurrentContext].Cluster].Server; got != "https://127.0.0.1:6443" {
		t.Errorf("server %s", got)
	}
}
