package testpki

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

// TestIssueWriteLoad: a leaf issued by a root verifies against it for its
// hosts, is written with the permissions callers rely on, loads back, and a
// key that is not the certificate's is refused.
func TestIssueWriteLoad(t *testing.T) {
	dir := t.TempDir()
	root, err := NewRoot("root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dns, ips := Hosts("localhost", "127.0.0.1", "kubernetes", "10.0.0.1")
	leaf, err := root.Issue(Spec{
		Subject: pkix.Name{CommonName: "server"}, Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: dns, IPs: ips, Validity: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root.Cert)
	for _, h := range []string{"localhost", "127.0.0.1", "kubernetes", "10.0.0.1"} {
		if _, err := leaf.Cert.Verify(x509.VerifyOptions{DNSName: h, Roots: pool}); err != nil {
			t.Errorf("%s: %v", h, err)
		}
	}
	crt, key := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := leaf.Write(crt, key); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{crt: 0o644, key: 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want mode %v", path, fi.Mode(), err, want)
		}
	}
	back, err := LoadPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Cert.Equal(leaf.Cert) {
		t.Error("LoadPair: another certificate")
	}
	if err := root.Write(filepath.Join(dir, "root.crt"), filepath.Join(dir, "root.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPair(crt, filepath.Join(dir, "root.key")); err == nil {
		t.Error("LoadPair accepted a key that is not the certificate's")
	}
}

// TestKubeconfigLoads: what WriteKubeconfig writes is read by client-go as
// the cluster, user and credentials given.
func TestKubeconfigLoads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.kubeconfig")
	k := Kubeconfig{Name: "wasmlet-test", Server: "https://127.0.0.1:6443", CA: []byte("ca"),
		User: "system:node:wasm-node-1", Cert: []byte("cert"), Key: []byte("key")}
	if err := WriteKubeconfig(path, k); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if cfg.CurrentContext != k.Name || ctx == nil || ctx.Cluster != k.Name || ctx.AuthInfo != k.User {
		t.Fatalf("context %q: %+v", cfg.CurrentContext, ctx)
	}
	cl, user := cfg.Clusters[k.Name], cfg.AuthInfos[k.User]
	if cl == nil || user == nil {
		t.Fatalf("cluster %v, user %v", cl, user)
	}
	if cl.Server != k.Server || !bytes.Equal(cl.CertificateAuthorityData, k.CA) ||
		!bytes.Equal(user.ClientCertificateData, k.Cert) || !bytes.Equal(user.ClientKeyData, k.Key) {
		t.Errorf("read back %+v %+v", cl, user)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v %v, want 0600", fi.Mode(), err)
	}
}
