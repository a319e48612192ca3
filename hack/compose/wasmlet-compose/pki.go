package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The stack's PKI, made once per pki volume (down -v removes it). The
// cluster's part follows internal/testharness/localcluster (the subjects
// the Node and RBAC authorizers expect); the gRPC part is a CA of its own
// for the mutual TLS between node agents, executors and the registry
// cache, which has nothing to do with the Kubernetes identities.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	doneFile     = "initialised"
)

type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
}

type leaf struct {
	name    string // file name without .crt/.key
	subject pkix.Name
	usage   []x509.ExtKeyUsage
	hosts   []string // DNS names and IP addresses
}

func runInit(args []string) error {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	dir := fs.String("dir", "/pki", "directory to write into (the stack's pki volume)")
	nodes := fs.String("nodes", "", "comma-separated Node names to issue node identities for")
	server := fs.String("server", "https://kube-apiserver:6443", "API server URL inside the stack")
	hostServer := fs.String("host-server", "https://127.0.0.1:6443", "API server URL from the host (host.kubeconfig)")
	artifactKeys := fs.String("artifact-keys", "", "comma-separated executor flavours to make a shared artifact signing key for")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(*dir, doneFile)); err == nil {
		fmt.Println("pki already initialised in", *dir)
		return nil
	}
	p := pkiWriter{dir: *dir}
	for _, sub := range []string{"nodes", "grpc", "artifact"} {
		if err := os.MkdirAll(filepath.Join(*dir, sub), 0o700); err != nil {
			return err
		}
	}
	cluster, err := p.newCA("ca", "wasmlet-compose-ca", nil)
	if err != nil {
		return err
	}
	front, err := p.newCA("front-proxy-ca", "wasmlet-compose-front-proxy-ca", nil)
	if err != nil {
		return err
	}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	serving := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	for _, l := range []leaf{
		{name: "apiserver", subject: pkix.Name{CommonName: "kube-apiserver"}, usage: serving, hosts: []string{
			"kube-apiserver", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local", "127.0.0.1", "10.0.0.1",
		}},
		{name: "admin", usage: client, subject: pkix.Name{CommonName: "wasmlet-admin", Organization: []string{"system:masters"}}},
		{name: "kube-scheduler", usage: client, subject: pkix.Name{CommonName: "system:kube-scheduler"}},
		{name: "kube-controller-manager", usage: client, subject: pkix.Name{CommonName: "system:kube-controller-manager"}},
		{name: "apiserver-kubelet-client", usage: client, subject: pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}}},
		{name: "kube-scheduler-serving", usage: serving, subject: pkix.Name{CommonName: "kube-scheduler"}, hosts: []string{"localhost", "127.0.0.1"}},
		{name: "kube-controller-manager-serving", usage: serving, subject: pkix.Name{CommonName: "kube-controller-manager"}, hosts: []string{"localhost", "127.0.0.1"}},
	} {
		if _, _, err := p.issue(cluster, l); err != nil {
			return err
		}
	}
	if _, _, err := p.issue(front, leaf{name: "front-proxy-client", usage: client, subject: pkix.Name{CommonName: "front-proxy-client"}}); err != nil {
		return err
	}
	if err := p.serviceAccountKey(); err != nil {
		return err
	}
	for _, kc := range []struct{ file, pair, user, server string }{
		{"admin.kubeconfig", "admin", "admin", *server},
		{"host.kubeconfig", "admin", "admin", *hostServer},
		{"kube-scheduler.kubeconfig", "kube-scheduler", "system:kube-scheduler", *server},
		{"kube-controller-manager.kubeconfig", "kube-controller-manager", "system:kube-controller-manager", *server},
	} {
		if err := p.kubeconfigFromFiles(kc.file, kc.pair, kc.user, kc.server); err != nil {
			return err
		}
	}
	// Node identities: per-node client certificates (CN system:node:<name>,
	// O system:nodes). Bootstrap tokens and CSRs replace these later.
	for _, n := range splitList(*nodes) {
		certPEM, keyPEM, err := p.issue(cluster, leaf{
			name: "nodes/" + n, usage: client,
			subject: pkix.Name{CommonName: "system:node:" + n, Organization: []string{"system:nodes"}},
		})
		if err != nil {
			return err
		}
		if err := p.kubeconfig("nodes/"+n+".kubeconfig", "system:node:"+n, *server, certPEM, keyPEM); err != nil {
			return err
		}
	}

	// gRPC mutual TLS: the registry cache has a fixed name; node agents are
	// clients only; executors, which scale and get their addresses at
	// start, mint their own pair at start (exec --mint) from an issuing CA
	// that may name only private addresses and sign nothing but leaves.
	grpcCA, err := p.newCA("grpc/ca", "wasmlet-compose-grpc-ca", nil)
	if err != nil {
		return err
	}
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	if _, _, err := p.issue(grpcCA, leaf{name: "grpc/registry-cache", usage: both, subject: pkix.Name{CommonName: "registry-cache"},
		hosts: []string{"registry-cache", "localhost", "127.0.0.1"}}); err != nil {
		return err
	}
	for _, n := range splitList(*nodes) {
		if _, _, err := p.issue(grpcCA, leaf{name: "grpc/nodeagent-" + n, usage: client, subject: pkix.Name{CommonName: "nodeagent " + n}}); err != nil {
			return err
		}
	}
	if _, err := p.newCA("grpc/executors-ca", "wasmlet-compose-executors", &grpcCA); err != nil {
		return err
	}

	// NATS: one token for every client of the stack's server.
	token := make([]byte, 24)
	if _, err := rand.Read(token); err != nil {
		return err
	}
	tok := hex.EncodeToString(token)
	natsConf := fmt.Sprintf(`# written by wasmlet-compose init
server_name: nats
listen: 0.0.0.0:4222
http: 0.0.0.0:8222
jetstream { store_dir: /data }
authorization { token: %q }
`, tok)
	if err := writeFile(filepath.Join(*dir, "nats.conf"), []byte(natsConf), 0o600); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(*dir, "nats.env"), []byte("WASMLET_NATS_TOKEN="+tok+"\n"), 0o600); err != nil {
		return err
	}
	for _, f := range splitList(*artifactKeys) {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(*dir, "artifact", f+".key"), key, 0o600); err != nil {
			return err
		}
	}
	if err := writeFile(filepath.Join(*dir, doneFile), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Println("pki initialised in", *dir)
	return nil
}

type pkiWriter struct{ dir string }

func (p pkiWriter) path(name, ext string) string { return filepath.Join(p.dir, name+ext) }

// newCA makes a self-signed CA, or with parent an issuing CA under it for
// executors: leaves only, server and client use, private addresses only.
func (p pkiWriter) newCA(name, cn string, parent *ca) (ca, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return ca{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	signer, signerKey := tmpl, crypto.Signer(key)
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
		tmpl.MaxPathLenZero = true
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.PermittedDNSDomainsCritical = true
		tmpl.PermittedDNSDomains = []string{"executor.invalid"}
		for _, cidr := range []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} {
			_, n, _ := net.ParseCIDR(cidr)
			tmpl.PermittedIPRanges = append(tmpl.PermittedIPRanges, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, key.Public(), signerKey)
	if err != nil {
		return ca{}, fmt.Errorf("create CA %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return ca{}, err
	}
	if err := p.writePair(name, der, key); err != nil {
		return ca{}, err
	}
	return ca{cert: cert, key: key}, nil
}

func (p pkiWriter) issue(c ca, l leaf) (certPEM, keyPEM []byte, err error) {
	der, key, err := issueLeaf(c, l)
	if err != nil {
		return nil, nil, err
	}
	if err := p.writePair(l.name, der, key); err != nil {
		return nil, nil, err
	}
	return pemCert(der), pemKey(key), nil
}

func issueLeaf(c ca, l leaf) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               l.subject,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(leafValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           l.usage,
		BasicConstraintsValid: true,
	}
	for _, h := range l.hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign %s: %w", l.name, err)
	}
	return der, key, nil
}

func (p pkiWriter) writePair(name string, der []byte, key *ecdsa.PrivateKey) error {
	if err := writeFile(p.path(name, ".key"), pemKey(key), 0o600); err != nil {
		return err
	}
	return writeFile(p.path(name, ".crt"), pemCert(der), 0o644)
}

func (p pkiWriter) serviceAccountKey() error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	pd, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := writeFile(p.path("sa", ".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		return err
	}
	return writeFile(p.path("sa", ".pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pd}), 0o644)
}

func (p pkiWriter) kubeconfigFromFiles(file, pair, user, server string) error {
	certPEM, err := os.ReadFile(p.path(pair, ".crt"))
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(p.path(pair, ".key"))
	if err != nil {
		return err
	}
	return p.kubeconfig(file, user, server, certPEM, keyPEM)
}

// kubeconfig writes a self-contained kubeconfig (everything inline), so
// that it can be copied out of the volume on its own.
func (p pkiWriter) kubeconfig(file, user, server string, certPEM, keyPEM []byte) error {
	caPEM, err := os.ReadFile(p.path("ca", ".crt"))
	if err != nil {
		return err
	}
	b64 := base64.StdEncoding.EncodeToString
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: wasmlet-compose
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %q
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: wasmlet-compose
  context:
    cluster: wasmlet-compose
    user: %q
current-context: wasmlet-compose
`, server, b64(caPEM), user, b64(certPEM), b64(keyPEM), user)
	return writeFile(filepath.Join(p.dir, file), []byte(kc), 0o600)
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pemKey(key *ecdsa.PrivateKey) []byte {
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err) // an ECDSA P-256 key always marshals
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

// writeFile writes through a temporary file and a rename, so that a
// container starting meanwhile never reads half a file.
func writeFile(path string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Chmod(tmp, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// loadCA reads an issuing CA written by init.
func loadCA(certFile, keyFile string) (ca, error) {
	cb, err := os.ReadFile(certFile)
	if err != nil {
		return ca{}, err
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return ca{}, err
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return ca{}, errors.New("issuing CA: no PEM data")
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return ca{}, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
	if err != nil {
		return ca{}, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return ca{}, errors.New("issuing CA: key cannot sign")
	}
	return ca{cert: cert, key: signer}, nil
}
