package clientcert

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/keyutil"
)

// testCA signs certificates for the unit tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// sign issues a client certificate for pub with subject s, valid until notAfter.
func (ca *testCA) sign(t *testing.T, pub any, s pkix.Name, notAfter time.Time) []byte {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: s, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// pair is a node client key pair signed by ca.
func (ca *testCA) pair(t *testing.T, node string, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	keyPEM, err := keyutil.MakeEllipticPrivateKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	key, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return ca.sign(t, &key.(*ecdsa.PrivateKey).PublicKey, Template(node).Subject, notAfter), keyPEM
}

// writeKubeconfigFile writes a kubeconfig for server with either a token or
// a client pair inline.
func writeKubeconfigFile(t *testing.T, path, server string, caPEM []byte, token string, certPEM, keyPEM []byte) {
	t.Helper()
	kc := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"c": {Server: server, CertificateAuthorityData: caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"u": {Token: token, ClientCertificateData: certPEM, ClientKeyData: keyPEM}},
		Contexts:       map[string]*clientcmdapi.Context{"x": {Cluster: "c", AuthInfo: "u"}},
		CurrentContext: "x",
	}
	if err := clientcmd.WriteToFile(kc, path); err != nil {
		t.Fatal(err)
	}
}

func TestUnusable(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	valid, validKey := ca.pair(t, "n1", time.Now().Add(time.Hour))
	expired, expiredKey := ca.pair(t, "n1", time.Now().Add(-time.Minute))
	_, otherKey := ca.pair(t, "n1", time.Now().Add(time.Hour))
	write := func(name, token string, cert, key []byte) string {
		p := filepath.Join(dir, name)
		writeKubeconfigFile(t, p, "https://127.0.0.1:6443", ca.pem, token, cert, key)
		return p
	}
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("not: [a kubeconfig"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, path, want string
	}{
		{"valid", write("valid", "", valid, validKey), ""},
		{"missing", filepath.Join(dir, "none"), "does not exist"},
		{"unreadable", garbage, "unreadable"},
		{"token only", write("token", "abcdef.0123456789abcdef", nil, nil), "no client certificate"},
		{"expired", write("expired", "", expired, expiredKey), "expired at"},
		{"key of another pair", write("mismatch", "", valid, otherKey), "unusable"},
	} {
		err := Unusable(c.path, time.Now())
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: Unusable = %v, want nil", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: Unusable = %v, want %q", c.name, err, c.want)
		}
	}
}

func TestLoadBootstrapErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadBootstrap(filepath.Join(dir, "missing"))
	if !errors.Is(err, ErrBootstrapKubeconfig) || !strings.Contains(err.Error(), "bootstrap token") {
		t.Errorf("missing file: %v", err)
	}
	p := filepath.Join(dir, "nocreds")
	writeKubeconfigFile(t, p, "https://127.0.0.1:6443", nil, "", nil, nil)
	if _, err := LoadBootstrap(p); !errors.Is(err, ErrBootstrapKubeconfig) || !strings.Contains(err.Error(), "no credentials") {
		t.Errorf("no credentials: %v", err)
	}
	p = filepath.Join(dir, "token")
	writeKubeconfigFile(t, p, "https://127.0.0.1:6443", nil, "abcdef.0123456789abcdef", nil, nil)
	if rc, err := LoadBootstrap(p); err != nil || rc.BearerToken != "abcdef.0123456789abcdef" {
		t.Errorf("token kubeconfig: %v, %v", rc, err)
	}
}

func TestBootstrapNeedsBootstrapKubeconfig(t *testing.T) {
	dir := t.TempDir()
	err := Bootstrap(t.Context(), Config{
		Kubeconfig: filepath.Join(dir, "kubeconfig"), CertDir: dir, NodeName: "n1", NewClient: noClient(t),
	})
	if !errors.Is(err, ErrNoBootstrap) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("Bootstrap = %v, want ErrNoBootstrap saying the kubeconfig does not exist", err)
	}
}

func noClient(t *testing.T) func(*rest.Config) (kubernetes.Interface, error) {
	return func(*rest.Config) (kubernetes.Interface, error) {
		t.Error("no API client expected")
		return nil, errors.New("no client")
	}
}

// A valid pair of this node already in CertDir (the kubeconfig lost) is
// used without sending a CSR.
func TestBootstrapReusesStoredPair(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certPEM, keyPEM := ca.pair(t, "n1", time.Now().Add(time.Hour))
	if err := os.WriteFile(filepath.Join(dir, "kubelet-client-current.pem"), append(certPEM, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	boot := filepath.Join(dir, "bootstrap.kubeconfig")
	writeKubeconfigFile(t, boot, "https://127.0.0.1:1", ca.pem, "abcdef.0123456789abcdef", nil, nil)
	kc := filepath.Join(dir, "kubeconfig")
	err := Bootstrap(t.Context(), Config{Kubeconfig: kc, BootstrapKubeconfig: boot, CertDir: dir, NodeName: "n1", NewClient: noClient(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := Unusable(kc, time.Now()); err != nil {
		t.Errorf("written kubeconfig: %v", err)
	}
}

// csrFake is a fake API server for the CSR round trip: it lets the test
// decide each CSR the node sends.
type csrFake struct {
	*fake.Clientset
	ca *testCA
}

// decide waits for the node's CSR and approves (and signs) or denies it.
func (f *csrFake) decide(t *testing.T, ctx context.Context, approve bool) (name string) {
	t.Helper()
	csrs := f.CertificatesV1().CertificateSigningRequests()
	for ctx.Err() == nil {
		list, err := csrs.List(ctx, metav1.ListOptions{})
		if err == nil && len(list.Items) > 0 {
			c := list.Items[0]
			if approve {
				block, _ := pem.Decode(c.Spec.Request)
				req, err := x509.ParseCertificateRequest(block.Bytes)
				if err != nil {
					t.Error(err)
					return c.Name
				}
				c.Status.Conditions = []certificatesv1.CertificateSigningRequestCondition{{Type: certificatesv1.CertificateApproved, Status: "True", Reason: "Test"}}
				c.Status.Certificate = f.ca.sign(t, req.PublicKey, req.Subject, time.Now().Add(time.Hour))
			} else {
				c.Status.Conditions = []certificatesv1.CertificateSigningRequestCondition{{Type: certificatesv1.CertificateDenied, Status: "True", Reason: "NotOurs", Message: "unknown machine"}}
			}
			if _, err := csrs.UpdateStatus(ctx, &c, metav1.UpdateOptions{}); err != nil {
				t.Error(err)
			}
			return c.Name
		}
		time.Sleep(10 * time.Millisecond)
	}
	return ""
}

// syncBuffer is a log destination safe for the goroutines writing to it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func bootstrapWithFake(t *testing.T, approve bool) (Config, string, error) {
	ca := newTestCA(t)
	f := &csrFake{Clientset: fake.NewClientset(), ca: ca}
	dir := t.TempDir()
	boot := filepath.Join(dir, "bootstrap.kubeconfig")
	writeKubeconfigFile(t, boot, "https://127.0.0.1:1", ca.pem, "abcdef.0123456789abcdef", nil, nil)
	var logs syncBuffer
	cfg := Config{
		Kubeconfig: filepath.Join(dir, "kubeconfig"), BootstrapKubeconfig: boot, CertDir: filepath.Join(dir, "pki"), NodeName: "n1",
		NewClient:     func(*rest.Config) (kubernetes.Interface, error) { return f, nil },
		PendingReport: 20 * time.Millisecond, Log: slog.New(slog.NewTextHandler(&logs, nil)),
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- Bootstrap(ctx, cfg) }()
	time.Sleep(100 * time.Millisecond) // a few pending reports first
	name := f.decide(t, ctx, approve)
	err := <-errc
	if !strings.Contains(logs.String(), "kubectl certificate approve "+name) {
		t.Errorf("no pending report naming CSR %s in the log:\n%s", name, logs.String())
	}
	return cfg, name, err
}

// The whole round trip against a fake API server: the CSR asks for what
// the signer wants, and the issued pair ends up in CertDir with the
// kubeconfig pointing at it.
func TestBootstrapIssued(t *testing.T) {
	cfg, name, err := bootstrapWithFake(t, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(name, "node-csr-") {
		t.Errorf("CSR name %q", name)
	}
	if err := Unusable(cfg.Kubeconfig, time.Now()); err != nil {
		t.Fatalf("written kubeconfig: %v", err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if rc.CertFile != filepath.Join(cfg.CertDir, "kubelet-client-current.pem") || rc.KeyFile != rc.CertFile || rc.Host != "https://127.0.0.1:1" {
		t.Errorf("kubeconfig: server %s, cert %s, key %s", rc.Host, rc.CertFile, rc.KeyFile)
	}
	leaf, err := clientCertificate(rc)
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "system:node:n1" || !reflect.DeepEqual(leaf.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("subject %v", leaf.Subject)
	}
	if _, err := os.Stat(filepath.Join(cfg.CertDir, pendingKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pending key left behind: %v", err)
	}
}

// A denied CSR ends Bootstrap with ErrDenied saying what to do, and drops
// the pending key so that the next start sends a new CSR.
func TestBootstrapDenied(t *testing.T) {
	cfg, name, err := bootstrapWithFake(t, false)
	if !errors.Is(err, ErrDenied) {
		t.Fatalf("Bootstrap = %v, want ErrDenied", err)
	}
	for _, want := range []string{name, "NotOurs", "unknown machine", "kubectl get csr", "kubectl certificate approve"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(cfg.CertDir, pendingKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pending key kept after a denial: %v", err)
	}
	if _, err := os.Stat(cfg.Kubeconfig); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("kubeconfig written after a denial: %v", err)
	}
}

// The CSR's name follows what it asks for: the same key finds the same
// CSR after a restart; another key makes another.
func TestCSRNameFollowsRequest(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u := Usages(k1)
	a, _ := csrName(k1, Template("n1"), u)
	b, _ := csrName(k1, Template("n1"), u)
	c, _ := csrName(k2, Template("n1"), u)
	d, _ := csrName(k1, Template("n2"), u)
	if a != b || a == c || a == d {
		t.Errorf("names %s %s %s %s: want the first two equal, the others different", a, b, c, d)
	}
}

// New makes the node's rest.Config present the Manager's certificate at
// each handshake, through a transport of its own.
func TestNewTakesOverTransport(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certPEM, keyPEM := ca.pair(t, "n1", time.Now().Add(time.Hour))
	kc := filepath.Join(dir, "kubeconfig")
	writeKubeconfigFile(t, kc, "https://127.0.0.1:1", ca.pem, "", certPEM, keyPEM)
	rc, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Kubeconfig: kc, CertDir: dir, NodeName: "n1",
		NewClient: func(c *rest.Config) (kubernetes.Interface, error) { return kubernetes.NewForConfig(c) }}, rc)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Transport == nil || len(rc.CertData) > 0 || len(rc.CAData) > 0 {
		t.Errorf("rest.Config keeps its own TLS: %+v", rc.TLSClientConfig)
	}
	got, err := m.clientCertificate(nil)
	if err != nil || got.Leaf == nil || got.Leaf.Subject.CommonName != "system:node:n1" {
		t.Errorf("client certificate %v, %v", got, err)
	}
	if _, err := New(Config{Kubeconfig: kc, CertDir: dir, NodeName: "n1", NewClient: noClient(t)}, rc); err == nil {
		t.Error("New took over a rest.Config that already has a transport")
	}
}

// With its certificate expired unrenewed, the node logs which of its CSRs
// wait for approval (renewals as the node, requests with the bootstrap
// token) and what to do.
func TestReportExpiredNamesPendingCSRs(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certPEM, keyPEM := ca.pair(t, "n1", time.Now().Add(time.Hour))
	kc := filepath.Join(dir, "kubeconfig")
	writeKubeconfigFile(t, kc, "https://127.0.0.1:1", ca.pem, "", certPEM, keyPEM)
	boot := filepath.Join(dir, "bootstrap.kubeconfig")
	writeKubeconfigFile(t, boot, "https://127.0.0.1:1", ca.pem, "abcdef.0123456789abcdef", nil, nil)
	csr := func(name, user string, conds ...certificatesv1.RequestConditionType) *certificatesv1.CertificateSigningRequest {
		c := &certificatesv1.CertificateSigningRequest{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       certificatesv1.CertificateSigningRequestSpec{SignerName: SignerName, Username: user},
		}
		for _, ty := range conds {
			c.Status.Conditions = append(c.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{Type: ty})
		}
		return c
	}
	client := fake.NewClientset(
		csr("renewal", "system:node:n1"),
		csr("rebootstrap", "system:bootstrap:abcdef"),
		csr("approved", "system:node:n1", certificatesv1.CertificateApproved),
		csr("other-node", "system:node:n2"),
	)
	var logs syncBuffer
	rc, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Kubeconfig: kc, BootstrapKubeconfig: boot, CertDir: dir, NodeName: "n1",
		NewClient: func(*rest.Config) (kubernetes.Interface, error) { return client, nil },
		Log:       slog.New(slog.NewTextHandler(&logs, nil))}, rc)
	if err != nil {
		t.Fatal(err)
	}
	m.reportExpired(t.Context())
	out := logs.String()
	if !strings.Contains(out, "pending_csrs=\"[rebootstrap renewal]\"") || !strings.Contains(out, "kubectl certificate approve") {
		t.Errorf("report %q: want the two undecided CSRs of n1 and what to do", out)
	}
}

// What the API server answers to the CSR becomes an error that says what
// to do.
func TestBootstrapSendErrors(t *testing.T) {
	ca := newTestCA(t)
	csrs := schema.GroupResource{Group: "certificates.k8s.io", Resource: "certificatesigningrequests"}
	for _, c := range []struct {
		name   string
		answer error
		want   error
		says   string
	}{
		{"401", apierrors.NewUnauthorized("invalid bearer token"), ErrBootstrapRefused, "kubeadm token create"},
		{"403", apierrors.NewForbidden(csrs, "", errors.New("no RBAC")), ErrBootstrapNotAllowed, "--clusterrole=system:node-bootstrapper --group=system:bootstrappers"},
		{"no answer", errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), ErrBootstrapUnreachable, "connection refused"},
	} {
		t.Run(c.name, func(t *testing.T) {
			client := fake.NewClientset()
			client.PrependReactor("create", "certificatesigningrequests", func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, c.answer
			})
			dir := t.TempDir()
			boot := filepath.Join(dir, "bootstrap.kubeconfig")
			writeKubeconfigFile(t, boot, "https://127.0.0.1:1", ca.pem, "abcdef.0123456789abcdef", nil, nil)
			err := Bootstrap(t.Context(), Config{
				Kubeconfig: filepath.Join(dir, "kubeconfig"), BootstrapKubeconfig: boot, CertDir: dir, NodeName: "n1",
				NewClient: func(*rest.Config) (kubernetes.Interface, error) { return client, nil },
			})
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.says) {
				t.Errorf("Bootstrap = %v, want %v saying %q", err, c.want, c.says)
			}
		})
	}
}

// Without a bootstrap kubeconfig: a kubeconfig with a token is left as it
// is; one whose certificate expired is pointed at a renewal kept in CertDir
// (a rotation it did not follow), else refused with what to give.
func TestBootstrapWithoutBootstrapKubeconfig(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	cfg := Config{CertDir: filepath.Join(dir, "pki"), NodeName: "n1", NewClient: noClient(t)}

	cfg.Kubeconfig = filepath.Join(dir, "token.kubeconfig")
	writeKubeconfigFile(t, cfg.Kubeconfig, "https://127.0.0.1:1", ca.pem, "some-token", nil, nil)
	if err := Bootstrap(t.Context(), cfg); err != nil {
		t.Errorf("token kubeconfig: %v", err)
	}

	cfg.Kubeconfig = filepath.Join(dir, "expired.kubeconfig")
	expired, expiredKey := ca.pair(t, "n1", time.Now().Add(-time.Minute))
	writeKubeconfigFile(t, cfg.Kubeconfig, "https://127.0.0.1:1", ca.pem, "", expired, expiredKey)
	if err := Bootstrap(t.Context(), cfg); !errors.Is(err, ErrNoBootstrap) || !strings.Contains(err.Error(), "expired") || !strings.Contains(err.Error(), "--bootstrap-kubeconfig") {
		t.Errorf("expired kubeconfig, nothing in CertDir: %v", err)
	}

	renewed, renewedKey := ca.pair(t, "n1", time.Now().Add(time.Hour))
	if err := os.WriteFile(filepath.Join(cfg.CertDir, "kubelet-client-current.pem"), append(renewed, renewedKey...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Bootstrap(t.Context(), cfg); err != nil {
		t.Fatalf("expired kubeconfig, renewal in CertDir: %v", err)
	}
	rc := mustLoad(t, cfg.Kubeconfig)
	if err := Unusable(cfg.Kubeconfig, time.Now()); err != nil || rc.Host != "https://127.0.0.1:1" {
		t.Errorf("rewritten kubeconfig: %v, server %s", err, rc.Host)
	}
}
