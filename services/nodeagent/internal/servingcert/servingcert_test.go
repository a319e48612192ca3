package servingcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"reflect"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
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
