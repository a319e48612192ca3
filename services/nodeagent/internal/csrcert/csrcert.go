// Package csrcert is what the node's certificates issued through
// CertificateSigningRequests share: the kubelet API's serving certificate
// (package servingcert) and the node's client certificate (package
// clientcert). Both are kept by client-go's certificate.Manager, the one the
// kubelet uses (CSR round trip, renewal at 70–90% of a certificate's life),
// over a key-pair store in a directory the caller owns; NewManager makes one
// that logs through slog, Watch follows what it holds, and Pending names the
// CSRs that still wait for a decision.
//
// It owns no files and no objects: the store and the CSRs are the caller's.
//
//	m, err := csrcert.NewManager(csrcert.Config{Store: store, SignerName: s, Template: t, Usages: u, Clientset: fn, Log: log})
//	m.Start(); defer m.Stop()
//	csrcert.Watch(ctx, m, 30*time.Second, csrcert.Hooks{Issued: logIt, Pending: reportIt})
//	names, err := csrcert.Pending(ctx, client, s, "system:node:"+node)
package csrcert

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"time"

	"github.com/go-logr/logr"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/certificate"
	"k8s.io/klog/v2"
)

// Config configures NewManager; Store, SignerName, Template, Usages and
// Clientset are required.
type Config struct {
	// Store keeps the key pairs (certificate.NewFileStore), so that a
	// restart reuses the last one.
	Store certificate.Store
	// InitialCertPEM and InitialKeyPEM, when the store holds no usable
	// pair, are stored and used until a renewal replaces them (at once).
	InitialCertPEM, InitialKeyPEM []byte
	SignerName                    string
	Template                      *x509.CertificateRequest
	Usages                        func(privateKey any) []certificatesv1.KeyUsage
	// Lifetime, when set, asks the signer for certificates this long (CSR
	// spec.expirationSeconds, at least 10 minutes); the signer may give
	// less (kube-controller-manager's --cluster-signing-duration).
	Lifetime time.Duration
	// Clientset sends the CSRs; it is given the current certificate (nil
	// when there is none or it has expired).
	Clientset certificate.ClientsetFunc
	// Name tells this manager's log lines apart ("kubelet-serving").
	Name string
	Log  *slog.Logger
}

// NewManager loads the last pair from the store and returns a manager that
// requests and renews certificates once started.
func NewManager(cfg Config) (certificate.Manager, error) {
	if cfg.Store == nil || cfg.SignerName == "" || cfg.Template == nil || cfg.Usages == nil || cfg.Clientset == nil {
		return nil, errors.New("csrcert: Store, SignerName, Template, Usages and Clientset are required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	// A context without a Done channel starts no goroutine in the manager:
	// Stop ends it.
	ctx := WithLogger(context.Background(), log)
	mc := &certificate.Config{
		ClientsetFn:             cfg.Clientset,
		Template:                cfg.Template,
		SignerName:              cfg.SignerName,
		GetUsages:               cfg.Usages,
		CertificateStore:        cfg.Store,
		BootstrapCertificatePEM: cfg.InitialCertPEM,
		BootstrapKeyPEM:         cfg.InitialKeyPEM,
		Name:                    cfg.Name,
		Ctx:                     &ctx,
	}
	if cfg.Lifetime > 0 {
		mc.RequestedCertificateLifetime = &cfg.Lifetime
	}
	m, err := certificate.NewManager(mc)
	if err != nil {
		return nil, fmt.Errorf("certificate manager for %s: %w", cfg.SignerName, err)
	}
	return m, nil
}

// NewStore is a certificate.FileStore logging through log: the pairs
// <prefix>-<time>.pem and the <prefix>-current.pem link in dir (the
// kubelet's names); certFile and keyFile, when set, are read while dir
// holds no pair.
func NewStore(log *slog.Logger, prefix, dir, certFile, keyFile string) (certificate.FileStore, error) {
	s, err := certificate.NewFileStoreWithLogger(klogger(log), prefix, dir, dir, certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("certificate store in %s: %w", dir, err)
	}
	return s, nil
}

// WithLogger routes what client-go logs (through klog) under ctx to log.
func WithLogger(ctx context.Context, log *slog.Logger) context.Context {
	return klog.NewContext(ctx, klogger(log))
}

// klogger routes client-go's klog output to the agent's slog handler.
func klogger(log *slog.Logger) klog.Logger {
	if log == nil {
		log = slog.Default()
	}
	return logr.FromSlogHandler(log.Handler())
}

// Hooks are what Watch calls; either may be nil.
type Hooks struct {
	// Issued is called with each certificate the manager newly holds (the
	// first one, loaded or issued, and every renewal).
	Issued func(*x509.Certificate)
	// Pending is called while the manager holds no certificate (none
	// issued yet, or the last one expired), at most once per report period.
	Pending func(context.Context)
}

// Watch follows m's current certificate every second until ctx ends.
func Watch(ctx context.Context, m certificate.Manager, report time.Duration, h Hooks) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var held *x509.Certificate
	var lastReport time.Time
	for {
		cur := current(m)
		switch {
		case cur == nil:
			if h.Pending != nil && time.Since(lastReport) >= report {
				lastReport = time.Now()
				h.Pending(ctx)
			}
		case held == nil || !cur.Equal(held):
			held, lastReport = cur, time.Time{}
			if h.Issued != nil {
				h.Issued(cur)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func current(m certificate.Manager) *x509.Certificate {
	if c := m.Current(); c != nil {
		return c.Leaf
	}
	return nil
}

// Pending lists, sorted, the CSRs for signerName sent by any of usernames
// that are neither approved nor denied (nor failed).
func Pending(ctx context.Context, client kubernetes.Interface, signerName string, usernames ...string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	list, err := client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.signerName", signerName).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list %s CSRs: %w", signerName, err)
	}
	var names []string
	for _, csr := range list.Items {
		if csr.Spec.SignerName != signerName || !slices.Contains(usernames, csr.Spec.Username) || Decision(&csr) != "" {
			continue
		}
		names = append(names, csr.Name)
	}
	sort.Strings(names)
	return names, nil
}

// Decision is the CSR's Approved, Denied or Failed condition type, ""
// while it waits for one.
// A denial or failure outweighs an approval (a CSR approved and then
// refused by the signer is Failed).
func Decision(csr *certificatesv1.CertificateSigningRequest) certificatesv1.RequestConditionType {
	var d certificatesv1.RequestConditionType
	for _, c := range csr.Status.Conditions {
		switch c.Type {
		case certificatesv1.CertificateDenied, certificatesv1.CertificateFailed:
			return c.Type
		case certificatesv1.CertificateApproved:
			d = c.Type
		}
	}
	return d
}
