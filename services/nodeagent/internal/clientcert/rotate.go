package clientcert

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/certificate"
	"k8s.io/client-go/util/connrotation"

	"github.com/wasmlet/wasmlet/services/nodeagent/internal/csrcert"
)

// Manager renews the node's client certificate before it expires and
// makes the node's API connections present the current one.
type Manager struct {
	cfg    Config
	m      certificate.Manager
	dialer *connrotation.Dialer
	// node sends renewals (as the node); boot, when set, sends a request
	// once the certificate has expired unrenewed, as bootUser.
	node, boot kubernetes.Interface
	bootUser   string
}

// New takes over node's client certificate: node (the rest.Config read
// from Kubeconfig, with the certificate to start from) is changed to
// present, at each TLS handshake, the certificate the Manager holds. Run
// renews it. The pair lives in CertDir (kubelet-client-current.pem); the
// kubeconfig's own pair is the starting point while CertDir has none.
// node must have no Transport or Dial of its own; setting WrapTransport
// afterwards is fine.
func New(cfg Config, node *rest.Config) (*Manager, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if node.Transport != nil || node.Dial != nil {
		return nil, errors.New("clientcert: the node's rest.Config already has a Transport or Dial")
	}
	store, err := csrcert.NewStore(cfg.Log, storePrefix, cfg.CertDir, node.CertFile, node.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("node client certificate: %w", err)
	}
	tlsCfg, err := rest.TLSConfigFor(node)
	if err != nil {
		return nil, fmt.Errorf("node kubeconfig %s: TLS: %w", cfg.Kubeconfig, err)
	}
	if tlsCfg == nil {
		return nil, fmt.Errorf("node kubeconfig %s: the API server is not reached over TLS: no client certificate to rotate", cfg.Kubeconfig)
	}
	m := &Manager{cfg: cfg, dialer: connrotation.NewDialer((&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext)}
	initialCert, initialKey := node.CertData, node.KeyData
	// The transport asks for the certificate at each handshake; Run closes
	// the connections made with an older one.
	tlsCfg.Certificates = nil
	tlsCfg.GetClientCertificate = m.clientCertificate
	node.Transport = utilnet.SetTransportDefaults(&http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSHandshakeTimeout: 10 * time.Second,
		TLSClientConfig:     tlsCfg,
		MaxIdleConnsPerHost: 25,
		DialContext:         m.dialer.DialContext,
	})
	// The transport carries all of TLS now; client-go refuses both.
	node.TLSClientConfig = rest.TLSClientConfig{}

	if m.node, err = cfg.NewClient(rest.CopyConfig(node)); err != nil {
		return nil, fmt.Errorf("node client: %w", err)
	}
	if cfg.BootstrapKubeconfig != "" {
		boot, err := LoadBootstrap(cfg.BootstrapKubeconfig)
		if err != nil {
			return nil, err
		}
		if m.boot, err = cfg.NewClient(boot); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrBootstrapKubeconfig, cfg.BootstrapKubeconfig, err)
		}
		if id, _, ok := strings.Cut(boot.BearerToken, "."); ok {
			m.bootUser = "system:bootstrap:" + id
		}
	}
	m.m, err = csrcert.NewManager(csrcert.Config{
		Store:          store,
		InitialCertPEM: initialCert,
		InitialKeyPEM:  initialKey,
		SignerName:     SignerName,
		Template:       Template(cfg.NodeName),
		Usages:         Usages,
		Clientset:      m.clientset,
		Name:           "kubelet-client",
		Log:            cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// clientset is the client a renewal is sent with: the node's own while its
// certificate is valid, else the bootstrap credentials when given.
func (m *Manager) clientset(current *tls.Certificate) (kubernetes.Interface, error) {
	if current == nil && m.boot != nil {
		return m.boot, nil
	}
	return m.node, nil
}

// clientCertificate is the TLS client's GetClientCertificate: the current
// certificate, or none (the handshake proceeds and the API server answers
// 401) while there is none.
func (m *Manager) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if c := m.m.Current(); c != nil {
		return c, nil
	}
	return &tls.Certificate{}, nil
}

// Current is the node's client certificate, nil when it has expired unrenewed.
func (m *Manager) Current() *x509.Certificate {
	if c := m.m.Current(); c != nil {
		return c.Leaf
	}
	return nil
}

// Run renews the certificate before it expires (at 70–90% of its life),
// closes the node's API connections each time it changes so that they
// reconnect with the new one, and, while the certificate has expired
// unrenewed, logs what to do. It returns when ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	m.m.Start()
	defer m.m.Stop()
	var inUse *x509.Certificate
	csrcert.Watch(ctx, m.m, m.cfg.PendingReport, csrcert.Hooks{
		Issued: func(c *x509.Certificate) {
			if inUse != nil {
				// Connections made with the old certificate would keep
				// presenting it until it expires.
				m.dialer.CloseAll()
			}
			m.cfg.Log.Info("node client certificate in use", "serial", c.SerialNumber.String(),
				"not_before", c.NotBefore, "not_after", c.NotAfter, "renewed", inUse != nil, "dir", m.cfg.CertDir)
			inUse = c
		},
		Pending: m.reportExpired,
	})
	return nil
}

// reportExpired logs that the node has no valid client certificate and
// which renewal CSRs wait for approval.
func (m *Manager) reportExpired(ctx context.Context) {
	client := m.node
	if m.boot != nil {
		client = m.boot
	}
	pending, err := csrcert.Pending(ctx, client, SignerName, Username(m.cfg.NodeName), m.bootUser)
	if err != nil {
		pending = nil // an expired node certificate may not list them: say what we can
	}
	action := "approve the node's CSR: kubectl get csr; kubectl certificate approve NAME"
	if m.boot == nil {
		action += "; or restart with --bootstrap-kubeconfig"
	}
	m.cfg.Log.Warn("node has no valid client certificate: the API server refuses it until a renewal is issued",
		"node", m.cfg.NodeName, "pending_csrs", pending, "action", action)
}
