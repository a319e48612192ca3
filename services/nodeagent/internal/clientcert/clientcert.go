// Package clientcert gives the node agent its identity towards the API
// server the way the kubelet gets its own: with a bootstrap token it sends
// a CertificateSigningRequest for the kubernetes.io/kube-apiserver-client-kubelet
// signer (O=system:nodes, CN=system:node:<name>), waits for it to be approved
// (kube-controller-manager approves it by itself once the
// system:bootstrappers group is bound to the nodeclient ClusterRole, as
// kubeadm does) and issued, keeps the key pair in a directory
// (kubelet-client-<time>.pem and the kubelet-client-current.pem link, as the
// kubelet) and writes the node's kubeconfig pointing at it. With rotation
// on, a Manager renews the certificate before it expires (client-go's
// certificate.Manager, through package csrcert) and the node's API
// connections present the new one without a restart: the transport asks for
// the current certificate at every handshake and the connections are closed
// when it changes, as the kubelet's transport does.
//
// It owns the node's kubeconfig file, its key pairs in CertDir and the CSRs
// it sends; it does not touch the bootstrap kubeconfig, the kubelet API's
// serving pair (package servingcert) or anything else the API clients do.
//
//	if err := clientcert.Bootstrap(ctx, cfg); err != nil { ... } // no-op while the kubeconfig is usable
//	rc, _ := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
//	m, err := clientcert.New(cfg, rc) // rc now presents m's current certificate
//	go m.Run(ctx)
package clientcert

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/certificate"
	"k8s.io/client-go/util/certificate/csr"
	"k8s.io/client-go/util/keyutil"

	"github.com/wasmlet/wasmlet/services/nodeagent/internal/csrcert"
)

// SignerName is the signer that issues kubelet client certificates.
const SignerName = certificatesv1.KubeAPIServerClientKubeletSignerName

// What the kubelet calls the files in its certificate directory.
const (
	storePrefix = "kubelet-client"
	// pendingKeyFile keeps the key of a CSR that is not issued yet, so that
	// a restart sends the same CSR (same name) instead of another one.
	pendingKeyFile = "kubelet-client.key.tmp"
)

// Errors Bootstrap wraps, with what failed and what to do.
var (
	ErrNoBootstrap          = errors.New("no usable node kubeconfig and no bootstrap kubeconfig")
	ErrBootstrapKubeconfig  = errors.New("bootstrap kubeconfig unusable")
	ErrBootstrapRefused     = errors.New("bootstrap credentials refused")
	ErrBootstrapNotAllowed  = errors.New("bootstrap identity may not request node certificates")
	ErrDenied               = errors.New("node client certificate request denied")
	ErrNotApproved          = errors.New("node client certificate request not approved")
	ErrBootstrapUnreachable = errors.New("API server unreachable for bootstrap")
)

// Config says where the node's identity lives; NodeName, Kubeconfig,
// CertDir and NewClient are required.
type Config struct {
	// Kubeconfig is the node's kubeconfig: used while its client
	// certificate is usable, written by Bootstrap otherwise.
	Kubeconfig string
	// BootstrapKubeconfig holds a bootstrap token (user
	// system:bootstrap:<id>, group system:bootstrappers), or any identity
	// allowed to create node client CSRs. Bootstrap needs it when Kubeconfig
	// is missing or its certificate unusable; a Manager uses it to request
	// a new certificate when the current one has expired. Optional.
	BootstrapKubeconfig string
	// CertDir keeps the key pairs (the kubelet's <cert-dir>).
	CertDir  string
	NodeName string
	// NewClient makes an API client from a rest.Config (the node agent
	// passes its slim clientset; tests kubernetes.NewForConfig).
	NewClient func(*rest.Config) (kubernetes.Interface, error)
	// PendingReport is how often a CSR waiting for approval, or an expired
	// certificate, is logged. Default 30 s.
	PendingReport time.Duration
	Log           *slog.Logger
}

func (c *Config) check() error {
	if c.NodeName == "" || c.Kubeconfig == "" || c.CertDir == "" || c.NewClient == nil {
		return errors.New("clientcert: NodeName, Kubeconfig, CertDir and NewClient are required")
	}
	if c.PendingReport <= 0 {
		c.PendingReport = 30 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	c.Log = c.Log.With("component", "clientcert")
	return nil
}

// Username is the node's user name in the cluster.
func Username(nodeName string) string { return "system:node:" + nodeName }

// Template is the CSR the node sends, what the kube-apiserver-client-kubelet
// signer (and csrapproving) require: O=system:nodes, CN=system:node:<name>,
// no SANs.
func Template(nodeName string) *x509.CertificateRequest {
	return &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: Username(nodeName), Organization: []string{"system:nodes"}},
	}
}

// Usages are the key usages that signer accepts: digital signature and
// client auth, plus key encipherment for an RSA key.
func Usages(privateKey any) []certificatesv1.KeyUsage {
	return certificate.DefaultKubeletClientGetUsages(privateKey)
}

// Bootstrap makes sure that Kubeconfig holds a usable client certificate
// for the node. When it already does (or, with no BootstrapKubeconfig,
// holds other credentials, such as a token) it returns at once. Otherwise a
// pair already in CertDir that is valid for this node is used without a
// new request (Kubeconfig is rewritten to point at it); else, with the
// BootstrapKubeconfig's credentials, it requests one and waits (as long as
// ctx lasts, logging every PendingReport which CSR waits for approval)
// until it is issued, stores the pair in CertDir and writes Kubeconfig
// pointing at it. With neither, it fails with ErrNoBootstrap.
func Bootstrap(ctx context.Context, cfg Config) error {
	if err := cfg.check(); err != nil {
		return err
	}
	reason := Unusable(cfg.Kubeconfig, time.Now())
	if reason == nil {
		cfg.Log.Info("node kubeconfig holds a usable client certificate", "kubeconfig", cfg.Kubeconfig)
		return nil
	}
	if cfg.BootstrapKubeconfig == "" && errors.Is(reason, ErrNoClientCertificate) {
		cfg.Log.Info("node kubeconfig uses other credentials than a client certificate", "kubeconfig", cfg.Kubeconfig)
		return nil
	}
	var boot *rest.Config
	if cfg.BootstrapKubeconfig != "" {
		var err error
		if boot, err = LoadBootstrap(cfg.BootstrapKubeconfig); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(cfg.CertDir, 0o700); err != nil {
		return fmt.Errorf("client certificate directory: %w", err)
	}
	store, err := csrcert.NewStore(cfg.Log, storePrefix, cfg.CertDir, "", "")
	if err != nil {
		return fmt.Errorf("node client certificate: %w", err)
	}
	if c, err := store.Current(); err == nil && c.Leaf != nil && fitsNode(c.Leaf, cfg.NodeName, time.Now()) {
		// A renewal the kubeconfig does not point at (it held its own
		// pair), or a kubeconfig lost: the cluster is the bootstrap
		// kubeconfig's, else the old kubeconfig's.
		cluster := boot
		if cluster == nil {
			cluster, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		}
		if err == nil {
			cfg.Log.Info("node client certificate found in the certificate directory; writing the kubeconfig for it",
				"kubeconfig", cfg.Kubeconfig, "why", reason.Error(), "pair", store.CurrentPath(), "not_after", c.Leaf.NotAfter)
			return writeKubeconfig(cfg.Kubeconfig, cluster, store.CurrentPath())
		}
	}
	if boot == nil {
		return fmt.Errorf("%w: kubeconfig %s: %v: give a kubeconfig with the node's client certificate, or --bootstrap-kubeconfig with a bootstrap token", ErrNoBootstrap, cfg.Kubeconfig, reason)
	}
	ctx = csrcert.WithLogger(ctx, cfg.Log) // the csr package's own log lines
	cfg.Log.Info("bootstrapping the node client certificate", "why", reason.Error(),
		"bootstrap_kubeconfig", cfg.BootstrapKubeconfig, "server", boot.Host, "node", cfg.NodeName)
	client, err := cfg.NewClient(boot)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBootstrapKubeconfig, cfg.BootstrapKubeconfig, err)
	}
	certPEM, keyPEM, err := request(ctx, cfg, boot, client)
	if err != nil {
		return err
	}
	if _, err := store.Update(certPEM, keyPEM); err != nil {
		return fmt.Errorf("store the node client certificate in %s: %w", cfg.CertDir, err)
	}
	if err := os.Remove(filepath.Join(cfg.CertDir, pendingKeyFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		cfg.Log.Warn("could not remove the pending key", "err", err)
	}
	if err := writeKubeconfig(cfg.Kubeconfig, boot, store.CurrentPath()); err != nil {
		return err
	}
	cfg.Log.Info("node client certificate issued", "kubeconfig", cfg.Kubeconfig, "pair", store.CurrentPath())
	return nil
}

// fitsNode says whether c is this node's client certificate and valid now.
func fitsNode(c *x509.Certificate, nodeName string, now time.Time) bool {
	return c.Subject.CommonName == Username(nodeName) && now.Before(c.NotAfter)
}

// request sends the node's CSR with the bootstrap client and waits until it
// is issued (or denied, or ctx ends). The key is kept in CertDir until
// then, so that a restart resumes the same CSR.
func request(ctx context.Context, cfg Config, boot *rest.Config, client kubernetes.Interface) (certPEM, keyPEM []byte, err error) {
	keyPath := filepath.Join(cfg.CertDir, pendingKeyFile)
	keyPEM, _, err = keyutil.LoadOrGenerateKeyFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("node client key %s: %w", keyPath, err)
	}
	key, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("node client key %s: %w (remove it to make a new one)", keyPath, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("node client key %s: not a signing key (remove it to make a new one)", keyPath)
	}
	tmpl := Template(cfg.NodeName)
	csrPEM, err := certutil.MakeCSRFromTemplate(signer, tmpl)
	if err != nil {
		return nil, nil, fmt.Errorf("node client CSR: %w", err)
	}
	usages := Usages(key)
	name, err := csrName(signer, tmpl, usages)
	if err != nil {
		return nil, nil, err
	}
	reqName, uid, err := csr.RequestCertificateWithContext(ctx, client, csrPEM, name, SignerName, nil, usages, key)
	if err != nil {
		return nil, nil, sendError(cfg, boot, err)
	}
	cfg.Log.Info("node client CSR sent; waiting for approval", "csr", reqName,
		"action", "auto-approved when system:bootstrappers is bound to ClusterRole system:certificates.k8s.io:certificatesigningrequests:nodeclient; else kubectl certificate approve "+reqName)
	certPEM, err = wait(ctx, cfg, client, reqName, uid)
	if err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// sendError says why the bootstrap identity could not send its CSR.
func sendError(cfg Config, boot *rest.Config, err error) error {
	switch {
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%w by %s (401 Unauthorized) for the credentials in %s: the bootstrap token is unknown, expired or not meant for authentication; "+
			"make a new one (kubeadm token create, or a Secret kube-system/bootstrap-token-<id> of type bootstrap.kubernetes.io/token with usage-bootstrap-authentication: \"true\"), "+
			"check that kube-apiserver runs with --enable-bootstrap-token-auth, and put it in the bootstrap kubeconfig",
			ErrBootstrapRefused, boot.Host, cfg.BootstrapKubeconfig)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%w: %v; bind group system:bootstrappers to ClusterRole system:node-bootstrapper "+
			"(kubectl create clusterrolebinding kubeadm:kubelet-bootstrap --clusterrole=system:node-bootstrapper --group=system:bootstrappers)",
			ErrBootstrapNotAllowed, err)
	}
	var status apierrors.APIStatus
	if !errors.As(err, &status) { // no answer from the API server at all
		return fmt.Errorf("%w: %s (from %s): %w", ErrBootstrapUnreachable, boot.Host, cfg.BootstrapKubeconfig, err)
	}
	return fmt.Errorf("send the node client CSR to %s: %w", boot.Host, err)
}

// wait waits for the CSR to be issued, logging every PendingReport that it
// waits for approval; a denied (or failed) CSR ends it with ErrDenied.
func wait(ctx context.Context, cfg Config, client kubernetes.Interface, name string, uid types.UID) ([]byte, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		pem []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		p, err := csr.WaitForCertificate(wctx, client, name, uid)
		done <- result{p, err}
	}()
	begin := time.Now()
	tick := time.NewTicker(cfg.PendingReport)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			if r.err == nil {
				return r.pem, nil
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w: CSR %s waited %s and the node agent is stopping: approve it (kubectl certificate approve %s), "+
					"or bind group system:bootstrappers to ClusterRole system:certificates.k8s.io:certificatesigningrequests:nodeclient for auto-approval, and start the node agent again",
					ErrNotApproved, name, time.Since(begin).Round(time.Second), name)
			}
			return nil, refusal(ctx, cfg, client, name, r.err)
		case <-tick.C:
			cfg.Log.Warn("node client CSR waits for approval", "csr", name, "waited", time.Since(begin).Round(time.Second),
				"action", "kubectl certificate approve "+name,
				"auto_approval", "bind group system:bootstrappers to ClusterRole system:certificates.k8s.io:certificatesigningrequests:nodeclient")
		}
	}
}

// refusal explains why WaitForCertificate gave up on a CSR: denied or
// failed (then the pending key goes, so that the next start sends a new
// CSR), or an error it could not get past.
func refusal(ctx context.Context, cfg Config, client kubernetes.Interface, name string, werr error) error {
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	obj, err := client.CertificatesV1().CertificateSigningRequests().Get(gctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("wait for node client CSR %s: %w", name, werr)
	}
	switch d := csrcert.Decision(obj); d {
	case certificatesv1.CertificateDenied, certificatesv1.CertificateFailed:
		var why string
		for _, c := range obj.Status.Conditions {
			if c.Type == d {
				why = fmt.Sprintf("%s: %s", c.Reason, c.Message)
			}
		}
		_ = os.Remove(filepath.Join(cfg.CertDir, pendingKeyFile))
		return fmt.Errorf("%w: CSR %s is %s (%s); see why with kubectl get csr %s -o yaml, then start the node agent again: "+
			"it sends a new CSR (new key), to approve with kubectl certificate approve NAME (kubectl get csr lists it)",
			ErrDenied, name, d, why, name)
	}
	return fmt.Errorf("wait for node client CSR %s: %w", name, werr)
}

// csrName names the CSR after what it asks for (public key, subject,
// usages), so that a restart with the same pending key finds its CSR
// instead of sending another. The parts are length-prefixed: no two
// different requests hash alike.
func csrName(key crypto.Signer, tmpl *x509.CertificateRequest, usages []certificatesv1.KeyUsage) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", fmt.Errorf("node client CSR name: %w", err)
	}
	parts := []string{string(der), tmpl.Subject.CommonName}
	parts = append(parts, tmpl.Subject.Organization...)
	for _, u := range usages {
		parts = append(parts, string(u))
	}
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s;", len(p), p)
	}
	return "node-csr-" + base64.RawURLEncoding.EncodeToString(h.Sum(nil)), nil
}
