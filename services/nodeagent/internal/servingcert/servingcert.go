// Package servingcert obtains the kubelet API's serving certificate from the
// cluster, as the kubelet does with serverTLSBootstrap: it sends a
// CertificateSigningRequest for the kubernetes.io/kubelet-serving signer
// under the node's own identity (subject O=system:nodes,
// CN=system:node:<name>; SANs the node's addresses), waits for the cluster's
// operator to approve it (`kubectl certificate approve`), keeps the issued
// pair on disk and renews it before it expires (at 70–90% of its life, or at
// once when the node's addresses change). The renewal schedule and the CSR
// round trip are client-go's certificate.Manager, the one the kubelet uses.
//
// It owns the key pairs in its directory and the CSRs it creates; it does not
// listen or serve: the kubelet API takes GetCertificate as its
// tls.Config.GetCertificate, so a renewed certificate is served on the next
// handshake without a restart.
//
//	m, err := servingcert.New(servingcert.Config{Client: c, NodeName: n, Addresses: []string{ip, n}, Dir: d})
//	go m.Run(ctx)
//	tlsConfig.GetCertificate = m.GetCertificate
package servingcert

import (
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/certificate"

	"github.com/wasmlet/wasmlet/services/nodeagent/internal/csrcert"
)

// SignerName is the signer that issues kubelet serving certificates.
const SignerName = certificatesv1.KubeletServingSignerName

// ErrPending is what GetCertificate returns (and a TLS handshake fails
// with) until a certificate has been issued.
var ErrPending = errors.New("no kubelet serving certificate issued yet: approve the node's CSR (kubectl get csr; kubectl certificate approve NAME)")

// Config configures a Manager; Client, NodeName, Addresses and Dir are required.
type Config struct {
	// Client acts as the node (system:node:<name>): the Node authorizer
	// lets a node create, get, list and watch CSRs.
	Client   kubernetes.Interface
	NodeName string
	// Addresses are the node's addresses (IPs and host names), all of
	// which become SANs of the certificate.
	Addresses []string
	// Dir keeps the key pairs (kubelet-server-<time>.pem and the
	// kubelet-server-current.pem link), so that a restart reuses the last one.
	Dir string
	// Lifetime, when set, asks the signer for certificates this long
	// (CSR spec.expirationSeconds, at least 10 minutes); the signer may
	// give less (kube-controller-manager's --cluster-signing-duration).
	Lifetime time.Duration
	// Recorder, when set, gets a warning Event on the Node while the
	// certificate waits for approval. Optional.
	Recorder record.EventRecorder
	// PendingReport is how often "still waiting for approval" is logged
	// (and sent as an Event). Default 30 s.
	PendingReport time.Duration
	Log           *slog.Logger
}

// Manager keeps the node's serving certificate issued and current.
type Manager struct {
	cfg Config
	m   certificate.Manager
}

// New loads the last issued pair from Dir, if any, and prepares the
// manager; Run starts requesting and renewing.
func New(cfg Config) (*Manager, error) {
	if cfg.Client == nil || cfg.NodeName == "" || len(cfg.Addresses) == 0 || cfg.Dir == "" {
		return nil, errors.New("servingcert: Client, NodeName, Addresses and Dir are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.PendingReport <= 0 {
		cfg.PendingReport = 30 * time.Second
	}
	log := cfg.Log.With("component", "servingcert")
	store, err := csrcert.NewStore(log, "kubelet-server", cfg.Dir, "", "")
	if err != nil {
		return nil, fmt.Errorf("servingcert: %w", err)
	}
	m, err := csrcert.NewManager(csrcert.Config{
		Store:      store,
		SignerName: SignerName,
		Template:   Template(cfg.NodeName, cfg.Addresses),
		Usages:     Usages,
		Lifetime:   cfg.Lifetime,
		Clientset:  func(*tls.Certificate) (kubernetes.Interface, error) { return cfg.Client, nil },
		Name:       "kubelet-serving",
		Log:        log,
	})
	if err != nil {
		return nil, fmt.Errorf("servingcert: %w", err)
	}
	return &Manager{cfg: cfg, m: m}, nil
}

// Template is the CSR the node sends: what the kubelet-serving signer
// requires (O=system:nodes, CN=system:node:<name>, at least one DNS or IP
// SAN, no email or URI SANs).
func Template(nodeName string, addresses []string) *x509.CertificateRequest {
	t := &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
	}
	seen := map[string]bool{}
	for _, a := range addresses {
		if a == "" || seen[a] {
			continue
		}
		seen[a] = true
		if ip := net.ParseIP(a); ip != nil {
			t.IPAddresses = append(t.IPAddresses, ip)
		} else {
			t.DNSNames = append(t.DNSNames, a)
		}
	}
	sort.Strings(t.DNSNames)
	return t
}

// Usages are the key usages the kubelet-serving signer accepts: digital
// signature and server auth, plus key encipherment for an RSA key.
// (client-go's manager makes ECDSA P-256 keys.)
func Usages(privateKey any) []certificatesv1.KeyUsage {
	u := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature}
	if privateKey == nil || isRSA(privateKey) {
		u = append(u, certificatesv1.UsageKeyEncipherment)
	}
	return append(u, certificatesv1.UsageServerAuth)
}

func isRSA(key any) bool {
	_, ok := key.(*rsa.PrivateKey)
	return ok
}

// GetCertificate serves the current certificate; before one is issued (or
// once it has expired unrenewed) it fails the handshake with ErrPending.
func (m *Manager) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := m.m.Current(); c != nil {
		return c, nil
	}
	return nil, ErrPending
}

// Current is the certificate being served, nil before one is issued.
func (m *Manager) Current() *x509.Certificate {
	if c := m.m.Current(); c != nil {
		return c.Leaf
	}
	return nil
}

// Run requests a certificate when there is none (or when the stored one no
// longer covers the node's addresses), renews it before it expires, and
// while none is issued logs (and records an Event on the Node) which CSR
// waits for approval. It returns when ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	m.m.Start()
	defer m.m.Stop()
	csrcert.Watch(ctx, m.m, m.cfg.PendingReport, csrcert.Hooks{
		Issued: func(cur *x509.Certificate) { // loaded from Dir, issued, or renewed
			m.cfg.Log.Info("kubelet serving certificate in use", "serial", cur.SerialNumber.String(),
				"not_before", cur.NotBefore, "not_after", cur.NotAfter, "issuer", cur.Issuer.String(), "dir", m.cfg.Dir)
		},
		Pending: m.reportPending,
	})
	return nil
}

// reportPending says, in the log and as an Event on the Node, that the
// kubelet API has no certificate and which CSRs wait for approval.
func (m *Manager) reportPending(ctx context.Context) {
	pending := m.pendingCSRs(ctx)
	msg := "kubelet API has no serving certificate yet; it refuses TLS connections until the kubelet-serving CSR is approved"
	if len(pending) > 0 {
		msg += ": kubectl certificate approve " + strings.Join(pending, " ")
	} else {
		msg += ": no CSR of this node pending yet (see kubectl get csr)"
	}
	m.cfg.Log.Warn("kubelet serving certificate pending", "node", m.cfg.NodeName, "csrs", pending,
		"action", "kubectl certificate approve CSR")
	if m.cfg.Recorder != nil {
		ref := &v1.ObjectReference{Kind: "Node", Name: m.cfg.NodeName, UID: "", APIVersion: "v1"}
		m.cfg.Recorder.Event(ref, v1.EventTypeWarning, "ServingCertificatePending", msg)
	}
}

// pendingCSRs lists this node's kubelet-serving CSRs that are neither
// approved nor denied.
func (m *Manager) pendingCSRs(ctx context.Context) []string {
	names, err := csrcert.Pending(ctx, m.cfg.Client, SignerName, "system:node:"+m.cfg.NodeName)
	if err != nil {
		m.cfg.Log.Warn("list CSRs failed", "err", err)
	}
	return names
}
