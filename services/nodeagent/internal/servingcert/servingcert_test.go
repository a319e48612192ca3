package servingcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
)

// The CSR template meets what kube-controller-manager's kubelet-serving
// signer checks (pkg/apis/certificates ValidateKubeletServingCSR).
func TestTemplate(t *testing.T) {
	tmpl := Template("n1", []string{"127.0.0.1", "n1", "", "127.0.0.1", "n1.example"})
	if tmpl.Subject.CommonName != "system:node:n1" || !reflect.DeepEqual(tmpl.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("subject %v, want CN=system:node:n1 O=system:nodes", tmpl.Subject)
	}
	if len(tmpl.IPAddresses) != 1 || tmpl.IPAddresses[0].String() != "127.0.0.1" {
		t.Errorf("IP SANs %v, want [127.0.0.1] once", tmpl.IPAddresses)
	}
	if !reflect.DeepEqual(tmpl.DNSNames, []string{"n1", "n1.example"}) {
		t.Errorf("DNS SANs %v", tmpl.DNSNames)
	}
	if len(tmpl.EmailAddresses) != 0 || len(tmpl.URIs) != 0 {
		t.Error("email or URI SANs: the signer refuses them")
	}
}

func TestUsages(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	sig, enc, srv := certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment, certificatesv1.UsageServerAuth
	if got := Usages(ec); !reflect.DeepEqual(got, []certificatesv1.KeyUsage{sig, srv}) {
		t.Errorf("ECDSA usages %v", got)
	}
	if got := Usages(rk); !reflect.DeepEqual(got, []certificatesv1.KeyUsage{sig, enc, srv}) {
		t.Errorf("RSA usages %v", got)
	}
}

// A pair left in Dir by an earlier run is served at once; an empty Dir
// fails handshakes with ErrPending until a certificate is issued.
func TestStoredPairServedAtOnce(t *testing.T) {
	client := fake.NewClientset()
	empty, err := New(Config{Client: client, NodeName: "n1", Addresses: []string{"127.0.0.1"}, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := empty.GetCertificate(nil); c != nil || !errors.Is(err, ErrPending) {
		t.Errorf("GetCertificate with no pair = %v, %v; want ErrPending", c, err)
	}

	dir := t.TempDir()
	certPEM, keyPEM := selfSignedPair(t, "system:node:n1", time.Hour)
	if err := os.WriteFile(filepath.Join(dir, "kubelet-server-current.pem"), append(certPEM, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Client: client, NodeName: "n1", Addresses: []string{"127.0.0.1"}, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.GetCertificate(nil)
	if err != nil || c == nil || c.Leaf.Subject.CommonName != "system:node:n1" {
		t.Fatalf("GetCertificate with a stored pair = %v, %v", c, err)
	}
}

// While no certificate is issued, the report names exactly this node's
// undecided kubelet-serving CSRs, in the log and in an Event on the Node.
func TestReportPendingNamesTheCSR(t *testing.T) {
	csr := func(name, signer, user string, conds ...certificatesv1.RequestConditionType) *certificatesv1.CertificateSigningRequest {
		c := &certificatesv1.CertificateSigningRequest{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       certificatesv1.CertificateSigningRequestSpec{SignerName: signer, Username: user},
		}
		for _, t := range conds {
			c.Status.Conditions = append(c.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{Type: t})
		}
		return c
	}
	client := fake.NewClientset(
		csr("mine", SignerName, "system:node:n1"),
		csr("approved", SignerName, "system:node:n1", certificatesv1.CertificateApproved),
		csr("denied", SignerName, "system:node:n1", certificatesv1.CertificateDenied),
		csr("other-node", SignerName, "system:node:n2"),
		csr("client-cert", certificatesv1.KubeAPIServerClientKubeletSignerName, "system:node:n1"),
	)
	rec := record.NewFakeRecorder(10)
	var logs strings.Builder
	m, err := New(Config{Client: client, NodeName: "n1", Addresses: []string{"127.0.0.1"}, Dir: t.TempDir(),
		Recorder: rec, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	m.reportPending(t.Context())
	if got := m.pendingCSRs(t.Context()); !reflect.DeepEqual(got, []string{"mine"}) {
		t.Errorf("pending CSRs %v, want [mine]", got)
	}
	select {
	case ev := <-rec.Events:
		if !strings.Contains(ev, "ServingCertificatePending") || !strings.Contains(ev, "kubectl certificate approve mine") {
			t.Errorf("event %q", ev)
		}
	default:
		t.Error("no event recorded")
	}
	if !strings.Contains(logs.String(), "kubelet serving certificate pending") || !strings.Contains(logs.String(), "mine") {
		t.Errorf("log %q", logs.String())
	}
}

func selfSignedPair(t *testing.T, cn string, life time.Duration) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn, Organization: []string{"system:nodes"}},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(life),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}
