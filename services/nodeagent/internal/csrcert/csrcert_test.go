package csrcert

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"sync"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
)

func TestDecision(t *testing.T) {
	csr := func(types ...certificatesv1.RequestConditionType) *certificatesv1.CertificateSigningRequest {
		c := &certificatesv1.CertificateSigningRequest{}
		for _, ty := range types {
			c.Status.Conditions = append(c.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{Type: ty})
		}
		return c
	}
	for _, c := range []struct {
		conds []certificatesv1.RequestConditionType
		want  certificatesv1.RequestConditionType
	}{
		{nil, ""},
		{[]certificatesv1.RequestConditionType{certificatesv1.CertificateApproved}, certificatesv1.CertificateApproved},
		{[]certificatesv1.RequestConditionType{certificatesv1.CertificateDenied}, certificatesv1.CertificateDenied},
		// Approved, then refused by the signer.
		{[]certificatesv1.RequestConditionType{certificatesv1.CertificateApproved, certificatesv1.CertificateFailed}, certificatesv1.CertificateFailed},
	} {
		if got := Decision(csr(c.conds...)); got != c.want {
			t.Errorf("Decision(%v) = %q, want %q", c.conds, got, c.want)
		}
	}
}

// fakeManager is a certificate.Manager whose certificate the test sets.
type fakeManager struct {
	mu   sync.Mutex
	cert *tls.Certificate
}

func (f *fakeManager) Start()              {}
func (f *fakeManager) Stop()               {}
func (f *fakeManager) ServerHealthy() bool { return true }
func (f *fakeManager) Current() *tls.Certificate {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cert
}
func (f *fakeManager) set(serial int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if serial == 0 {
		f.cert = nil
		return
	}
	// Equal compares Raw: make each serial's differ.
	f.cert = &tls.Certificate{Leaf: &x509.Certificate{SerialNumber: big.NewInt(serial), Raw: big.NewInt(serial).Bytes()}}
}

// Watch reports each new certificate once and, while there is none, the
// pending state at most once per period.
func TestWatch(t *testing.T) {
	m := &fakeManager{}
	var mu sync.Mutex
	var issued []int64
	pending := 0
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, m, time.Hour, Hooks{
			Issued: func(c *x509.Certificate) {
				mu.Lock()
				defer mu.Unlock()
				issued = append(issued, c.SerialNumber.Int64())
			},
			Pending: func(context.Context) { mu.Lock(); pending++; mu.Unlock() },
		})
	}()
	time.Sleep(1500 * time.Millisecond) // two looks with no certificate
	m.set(1)
	time.Sleep(1100 * time.Millisecond)
	m.set(2)
	time.Sleep(1100 * time.Millisecond)
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if pending != 1 {
		t.Errorf("pending reported %d times in one period, want 1", pending)
	}
	if len(issued) != 2 || issued[0] != 1 || issued[1] != 2 {
		t.Errorf("issued %v, want [1 2]", issued)
	}
}
