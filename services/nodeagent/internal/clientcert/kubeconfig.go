package clientcert

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ErrNoClientCertificate is Unusable's answer for a kubeconfig that
// authenticates otherwise (a token) or not at all.
var ErrNoClientCertificate = errors.New("holds no client certificate")

// Unusable says why the kubeconfig at path cannot identify the node by a
// client certificate (missing, unreadable, no certificate, a key that does
// not match, expired); nil when it can.
func Unusable(path string, now time.Time) error {
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errors.New("does not exist")
		}
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return fmt.Errorf("unreadable: %w", err)
	}
	leaf, err := clientCertificate(rc)
	if err != nil {
		return err
	}
	if now.After(leaf.NotAfter) {
		return fmt.Errorf("its client certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// clientCertificate loads rc's client certificate and key (inline or from
// files) and returns the certificate.
func clientCertificate(rc *rest.Config) (*x509.Certificate, error) {
	certPEM, keyPEM := rc.CertData, rc.KeyData
	var err error
	if len(certPEM) == 0 && rc.CertFile != "" {
		if certPEM, err = os.ReadFile(rc.CertFile); err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
	}
	if len(keyPEM) == 0 && rc.KeyFile != "" {
		if keyPEM, err = os.ReadFile(rc.KeyFile); err != nil {
			return nil, fmt.Errorf("client key: %w", err)
		}
	}
	if len(certPEM) == 0 {
		return nil, ErrNoClientCertificate
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("client certificate and key unusable: %w", err)
	}
	if pair.Leaf != nil {
		return pair.Leaf, nil
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("client certificate unusable: %w", err)
	}
	return leaf, nil
}

// LoadBootstrap reads the bootstrap kubeconfig; its errors wrap
// ErrBootstrapKubeconfig and say what to give.
func LoadBootstrap(path string) (*rest.Config, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%w: %w: give --bootstrap-kubeconfig a kubeconfig holding a bootstrap token (users[].user.token: <id>.<secret>)", ErrBootstrapKubeconfig, err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBootstrapKubeconfig, path, err)
	}
	if rc.BearerToken == "" && rc.BearerTokenFile == "" && len(rc.CertData) == 0 && rc.CertFile == "" && rc.ExecProvider == nil {
		return nil, fmt.Errorf("%w: %s has no credentials: give it a bootstrap token (users[].user.token: <id>.<secret>)", ErrBootstrapKubeconfig, path)
	}
	rc.UserAgent = "wasmlet-bootstrap"
	return rc, nil
}

// writeKubeconfig writes the node's kubeconfig: the bootstrap kubeconfig's
// cluster (server, CA) and the key pair at pairPath (certificate and key in
// one file, as the kubelet's kubelet-client-current.pem).
func writeKubeconfig(path string, boot *rest.Config, pairPath string) error {
	// A relative path in a kubeconfig is read against the kubeconfig's directory.
	pairPath, err := filepath.Abs(pairPath)
	if err != nil {
		return fmt.Errorf("write node kubeconfig: %w", err)
	}
	cluster := &clientcmdapi.Cluster{
		Server:                boot.Host,
		CertificateAuthority:  boot.CAFile,
		InsecureSkipTLSVerify: boot.Insecure,
		TLSServerName:         boot.ServerName,
	}
	if boot.CAFile == "" {
		cluster.CertificateAuthorityData = boot.CAData
	}
	kc := clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"default-cluster": cluster},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"default-auth": {ClientCertificate: pairPath, ClientKey: pairPath}},
		Contexts:       map[string]*clientcmdapi.Context{"default-context": {Cluster: "default-cluster", AuthInfo: "default-auth"}},
		CurrentContext: "default-context",
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write node kubeconfig: %w", err)
	}
	if err := clientcmd.WriteToFile(kc, path); err != nil {
		return fmt.Errorf("write node kubeconfig %s: %w", path, err)
	}
	return nil
}
