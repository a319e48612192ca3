// Package kubeletapi serves the kubelet API (:10250) of a wasmlet node over
// HTTPS, authenticated and authorised the way the kubelet's webhook mode
// does it: client certificates signed by the cluster CA (the API server's
// kubelet client) or bearer tokens checked with TokenReview; every request
// then checked with SubjectAccessReview on nodes/proxy, nodes/log,
// nodes/stats or nodes/metrics. Anonymous requests are refused.
//
// It owns the listener, the self-signed serving certificate (or serves the
// one a GetCertificate func hands it, issued by the cluster) and the auth chain; the
// routes come from virtual-kubelet's api package, backed by the provider.
package kubeletapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"
)

// Config configures the server; all fields are required unless noted.
type Config struct {
	// Addr is host:port to listen on: the node's address, not all interfaces.
	Addr     string
	NodeName string
	NodeIP   string
	// GetCertificate, when set, gives the serving certificate on every
	// handshake (a certificate issued through a CSR and renewed in place:
	// see package servingcert); CertFile, KeyFile and CertDir are then unused.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// CertFile and KeyFile serve TLS; when empty, a self-signed pair is made
	// (and kept) in CertDir.
	CertFile, KeyFile string
	CertDir           string
	// ClientCAFile holds the CA(s) whose client certificates are accepted
	// (the cluster CA that signed the API server's kubelet client cert).
	// Empty: only bearer tokens authenticate.
	ClientCAFile string
	Client       kubernetes.Interface // for TokenReview and SubjectAccessReview
	Handler      http.Handler
	Log          *slog.Logger
}

// Serve listens and serves until ctx ends.
func Serve(ctx context.Context, cfg Config) error {
	if cfg.Addr == "" || cfg.Client == nil || cfg.Handler == nil || cfg.NodeName == "" {
		return errors.New("kubeletapi: Addr, NodeName, Client and Handler are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	tlsConfig := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verified by the authenticator against ClientCAFile, so that a
		// token-bearing client without a certificate is still heard.
		ClientAuth:     tls.RequestClientCert,
		GetCertificate: cfg.GetCertificate,
	}
	if cfg.GetCertificate == nil {
		cert, err := servingCert(cfg)
		if err != nil {
			return err
		}
		tlsConfig.Certificates = []tls.Certificate{cert}
	}
	var opts []nodeutil.WebhookAuthOption
	if cfg.ClientCAFile != "" {
		ca, err := dynamiccertificates.NewDynamicCAContentFromFile("kubelet-client-ca", cfg.ClientCAFile)
		if err != nil {
			return fmt.Errorf("kubeletapi: client CA %s: %w", cfg.ClientCAFile, err)
		}
		opts = append(opts, func(c *nodeutil.WebhookAuthConfig) error {
			c.AuthnConfig.ClientCertificateCAContentProvider = ca
			return nil
		})
	}
	auth, err := nodeutil.WebhookAuth(cfg.Client, cfg.NodeName, opts...)
	if err != nil {
		return fmt.Errorf("kubeletapi: auth: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.Handle("/", cfg.Handler)

	l, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("kubeletapi: listen %s: %w", cfg.Addr, err)
	}
	srv := &http.Server{
		Handler:           nodeutil.WithAuth(auth, mux),
		ReadHeaderTimeout: 30 * time.Second,
		TLSConfig:         tlsConfig,
		ErrorLog:          slog.NewLogLogger(cfg.Log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(l, "", "") }()
	cfg.Log.Info("kubelet API listening", "addr", l.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("kubeletapi: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return nil
}

func servingCert(cfg Config) (tls.Certificate, error) {
	if cfg.CertFile != "" {
		return tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	}
	if cfg.CertDir == "" {
		return tls.Certificate{}, errors.New("kubeletapi: CertDir is required without CertFile")
	}
	certPath := filepath.Join(cfg.CertDir, "kubelet.crt")
	keyPath := filepath.Join(cfg.CertDir, "kubelet.key")
	if c, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil && certValid(c, cfg.NodeIP) {
		return c, nil
	}
	certPEM, keyPEM, err := selfSigned(cfg.NodeName, cfg.NodeIP)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := os.MkdirAll(cfg.CertDir, 0o700); err != nil {
		return tls.Certificate{}, err
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

func certValid(c tls.Certificate, ip string) bool {
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil || time.Now().Add(24*time.Hour).After(leaf.NotAfter) {
		return false
	}
	return leaf.VerifyHostname(ip) == nil
}

// selfSigned makes a serving certificate for the node, valid for a year, as
// the kubelet does when it has none.
func selfSigned(name, ip string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name + "@wasmlet"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{name},
	}
	if parsed := net.ParseIP(ip); parsed != nil {
		tmpl.IPAddresses = []net.IP{parsed}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), nil
}
