package main

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

// The stack's PKI, made once per pki volume (down -v removes it). The
// cluster's part follows internal/testharness/localcluster (the subjects
// the Node and RBAC authorizers expect); the gRPC part is a CA of its own
// for the mutual TLS between node agents, executors and the registry
// cache, which has nothing to do with the Kubernetes identities.

// doneFile is written last: init ran to the end.
const doneFile = "initialised"

type leaf struct {
	name    string // file name without .crt/.key
	subject pkix.Name
	usage   []x509.ExtKeyUsage
	hosts   []string // DNS names and IP addresses
}

// spec is what l's certificate says.
func (l leaf) spec() testpki.Spec {
	dns, ips := testpki.Hosts(l.hosts...)
	return testpki.Spec{Subject: l.subject, Usage: l.usage, DNSNames: dns, IPs: ips, Validity: testpki.LeafValidity}
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
		if _, err := p.issue(cluster, l); err != nil {
			return err
		}
	}
	if _, err := p.issue(front, leaf{name: "front-proxy-client", usage: client, subject: pkix.Name{CommonName: "front-proxy-client"}}); err != nil {
		return err
	}
	if err := testpki.WriteServiceAccountKey(p.path("sa", ".key"), p.path("sa", ".pub")); err != nil {
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
	// Nodes join as kubelets do: with a bootstrap token (group
	// system:bootstrappers) they may only send a CSR for their client
	// certificate, which the controller-manager approves and signs; the
	// cluster-setup service creates the token's Secret and kubeadm's
	// bindings from bootstrap.yaml once the API server answers.
	if err := p.bootstrapToken(*server); err != nil {
		return err
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
	if _, err := p.issue(grpcCA, leaf{name: "grpc/registry-cache", usage: both, subject: pkix.Name{CommonName: "registry-cache"},
		hosts: []string{"registry-cache", "localhost", "127.0.0.1"}}); err != nil {
		return err
	}
	for _, n := range splitList(*nodes) {
		if _, err := p.issue(grpcCA, leaf{name: "grpc/nodeagent-" + n, usage: client, subject: pkix.Name{CommonName: "nodeagent " + n}}); err != nil {
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
	if err := testpki.WriteFile(filepath.Join(*dir, "nats.conf"), []byte(natsConf), 0o600); err != nil {
		return err
	}
	if err := testpki.WriteFile(filepath.Join(*dir, "nats.env"), []byte("WASMLET_NATS_TOKEN="+tok+"\n"), 0o600); err != nil {
		return err
	}
	for _, f := range splitList(*artifactKeys) {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return err
		}
		if err := testpki.WriteFile(filepath.Join(*dir, "artifact", f+".key"), key, 0o600); err != nil {
			return err
		}
	}
	if err := testpki.WriteFile(filepath.Join(*dir, doneFile), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Println("pki initialised in", *dir)
	return nil
}

type pkiWriter struct{ dir string }

// bootstrapToken writes bootstrap.kubeconfig (a token user) and
// bootstrap.yaml: the token's Secret and the ClusterRoleBindings kubeadm
// makes, which let its holders send node client CSRs that the
// controller-manager approves, and let nodes renew their certificates.
func (p pkiWriter) bootstrapToken(server string) error {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	random := func(n int) (string, error) {
		out := make([]byte, 0, n)
		b := make([]byte, 1)
		for len(out) < n {
			if _, err := rand.Read(b); err != nil {
				return "", err
			}
			if int(b[0]) < 256/len(alphabet)*len(alphabet) { // unbiased
				out = append(out, alphabet[int(b[0])%len(alphabet)])
			}
		}
		return string(out), nil
	}
	id, err := random(6)
	if err != nil {
		return err
	}
	secret, err := random(16)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(p.path("ca", ".crt"))
	if err != nil {
		return err
	}
	if err := testpki.WriteKubeconfig(filepath.Join(p.dir, "bootstrap.kubeconfig"), testpki.Kubeconfig{
		Name: "wasmlet-compose", Server: server, CA: caPEM, User: "kubelet-bootstrap", Token: id + "." + secret,
	}); err != nil {
		return err
	}
	manifest := fmt.Sprintf(`# written by wasmlet-compose init; applied by cluster-setup
apiVersion: v1
kind: Secret
metadata: {name: bootstrap-token-%[1]s, namespace: kube-system}
type: bootstrap.kubernetes.io/token
stringData:
  description: wasmlet compose stack's node bootstrap token
  token-id: %[1]s
  token-secret: %[2]s
  usage-bootstrap-authentication: "true"
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:kubelet-bootstrap"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node-bootstrapper"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:bootstrappers"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:node-autoapprove-bootstrap"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:certificates.k8s.io:certificatesigningrequests:nodeclient"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:bootstrappers"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:node-autoapprove-certificate-rotation"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:nodes"}]
`, id, secret)
	return testpki.WriteFile(filepath.Join(p.dir, "bootstrap.yaml"), []byte(manifest), 0o600)
}

func (p pkiWriter) path(name, ext string) string { return filepath.Join(p.dir, name+ext) }

// newCA makes a self-signed CA, or with parent an issuing CA under it for
// executors: leaves only, server and client use, private addresses only.
func (p pkiWriter) newCA(name, cn string, parent *testpki.Pair) (testpki.Pair, error) {
	tmpl := testpki.CATemplate(cn, testpki.CAValidity)
	if parent != nil {
		tmpl.MaxPathLenZero = true
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.PermittedDNSDomainsCritical = true
		tmpl.PermittedDNSDomains = []string{"executor.invalid"}
		for _, cidr := range []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} {
			_, n, _ := net.ParseCIDR(cidr)
			tmpl.PermittedIPRanges = append(tmpl.PermittedIPRanges, n)
		}
	}
	c, err := testpki.Sign(tmpl, parent)
	if err != nil {
		return testpki.Pair{}, fmt.Errorf("create CA %s: %w", name, err)
	}
	return c, p.writePair(name, c)
}

func (p pkiWriter) issue(c testpki.Pair, l leaf) (testpki.Pair, error) {
	pair, err := c.Issue(l.spec())
	if err != nil {
		return testpki.Pair{}, fmt.Errorf("%s: %w", l.name, err)
	}
	return pair, p.writePair(l.name, pair)
}

func (p pkiWriter) writePair(name string, pair testpki.Pair) error {
	return pair.Write(p.path(name, ".crt"), p.path(name, ".key"))
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

func (p pkiWriter) kubeconfig(file, user, server string, certPEM, keyPEM []byte) error {
	caPEM, err := os.ReadFile(p.path("ca", ".crt"))
	if err != nil {
		return err
	}
	return testpki.WriteKubeconfig(filepath.Join(p.dir, file), testpki.Kubeconfig{
		Name: "wasmlet-compose", Server: server, CA: caPEM, User: user, Cert: certPEM, Key: keyPEM,
	})
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
