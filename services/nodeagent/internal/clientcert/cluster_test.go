package clientcert

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/wasmlet/wasmlet/internal/testharness/localcluster"
)

// The signer's certificates span their lifetime plus 5 minutes of
// backdating, and client-go renews at 70–90% of the span: with 90 s
// certificates a renewal comes at most ~50 s after an issue (sometimes at
// once). Bootstrap tokens are off in kube-apiserver by default.
var cluster = localcluster.Shared{ClusterSigningDuration: 90 * time.Second, BootstrapTokenAuth: true}

func TestMain(m *testing.M) { os.Exit(cluster.Run(m)) }

func newClient(c *rest.Config) (kubernetes.Interface, error) { return kubernetes.NewForConfig(c) }

// A node with only a bootstrap token gets a client certificate approved by
// kube-controller-manager, its kubeconfig acts as system:node:<name>, and
// with rotation the renewed certificate is what its connections present.
func TestJoinWithBootstrapTokenAndRotate(t *testing.T) {
	c := cluster.Get(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	boot, _, err := c.BootstrapKubeconfig(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	const node = "clientcert-join"
	cfg := Config{
		Kubeconfig: filepath.Join(dir, "kubeconfig"), BootstrapKubeconfig: boot, CertDir: filepath.Join(dir, "pki"),
		NodeName: node, NewClient: newClient, PendingReport: 5 * time.Second, Log: slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
	begin := time.Now()
	if err := Bootstrap(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Logf("client certificate issued %s after the CSR", time.Since(begin).Round(time.Millisecond))

	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	issued, err := clientCertificate(rc)
	if err != nil {
		t.Fatal(err)
	}
	if issued.Subject.CommonName != "system:node:"+node || !reflect.DeepEqual(issued.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("issued subject %v, want CN=system:node:%s O=system:nodes", issued.Subject, node)
	}
	if !slices.Contains(issued.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Errorf("issued certificate lacks client auth: %v", issued.ExtKeyUsage)
	}

	// The written kubeconfig is the node's identity: the Node authorizer
	// lets it create its own Node.
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	who := whoAmI(ctx, t, cs)
	if who.Username != "system:node:"+node || !slices.Contains(who.Groups, "system:nodes") {
		t.Errorf("kubeconfig acts as %s %v", who.Username, who.Groups)
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create own Node with the bootstrapped kubeconfig: %v", err)
	}
	if _, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); err != nil {
		t.Fatalf("get own Node: %v", err)
	}
	// Bootstrapping again is a no-op while the kubeconfig is usable.
	if err := Bootstrap(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if again, err := clientCertificate(mustLoad(t, cfg.Kubeconfig)); err != nil || !again.Equal(issued) {
		t.Errorf("a second Bootstrap replaced a usable certificate (%v)", err)
	}

	// Rotation: the renewed certificate is presented on the same client's
	// connections (the API server names the certificate it authenticated
	// in the credential-id of the user's extra).
	m, err := New(cfg, rc)
	if err != nil {
		t.Fatal(err)
	}
	rotating, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	defer func() { stop(); <-done }()
	if got, want := credentialID(whoAmI(ctx, t, rotating)), fingerprint(m.Current()); got != want {
		t.Errorf("before rotation the connection presents %s, the manager holds %s", got, want)
	}
	begin = time.Now()
	for cur := m.Current(); cur == nil || cur.Equal(issued); cur = m.Current() {
		if time.Since(begin) > 100*time.Second {
			t.Fatalf("not renewed within 100 s (the issued certificate ends %s)", issued.NotAfter.Format(time.TimeOnly))
		}
		time.Sleep(200 * time.Millisecond)
	}
	renewed := time.Now()
	t.Logf("renewed %s after the manager started", renewed.Sub(begin).Round(time.Millisecond))
	// Old connections would present the first certificate until it expires
	// (or idles out): the new one must be presented within a few seconds.
	var lastErr error
	for {
		// A request cut off by the closing of old connections may fail.
		u, err := selfReview(ctx, rotating)
		presented := credentialID(u)
		if err == nil && presented != fingerprint(issued) && presented == fingerprint(m.Current()) {
			t.Logf("renewed certificate presented %s after the renewal", time.Since(renewed).Round(time.Millisecond))
			break
		}
		lastErr = err
		if time.Since(renewed) > 10*time.Second {
			t.Fatalf("10 s after the renewal the connection still presents %s (first certificate %s, current %s; last error %v)",
				presented, fingerprint(issued), fingerprint(m.Current()), lastErr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The renewal is on disk where the kubeconfig points: a restart uses it.
	onDisk, err := clientCertificate(mustLoad(t, cfg.Kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	if onDisk.Equal(issued) {
		t.Error("the kubeconfig still points at the first certificate")
	}
}

// A bootstrap token the API server does not know is refused with an error
// that says so and what to do.
func TestBootstrapTokenRefused(t *testing.T) {
	c := cluster.Get(t)
	dir := t.TempDir()
	caPEM, err := os.ReadFile(c.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	boot := filepath.Join(dir, "bootstrap.kubeconfig")
	writeKubeconfigFile(t, boot, c.Server(), caPEM, "abcdef.0123456789abcdef", nil, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	err = Bootstrap(ctx, Config{
		Kubeconfig: filepath.Join(dir, "kubeconfig"), BootstrapKubeconfig: boot, CertDir: dir,
		NodeName: "clientcert-refused", NewClient: newClient, Log: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if !errors.Is(err, ErrBootstrapRefused) {
		t.Fatalf("Bootstrap = %v, want ErrBootstrapRefused", err)
	}
	for _, want := range []string{"401", boot, "kubeadm token create", "bootstrap.kubernetes.io/token"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "kubeconfig")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("kubeconfig written after a refusal: %v", err)
	}
}

func mustLoad(t *testing.T, path string) *rest.Config {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func whoAmI(ctx context.Context, t *testing.T, cs kubernetes.Interface) authnv1.UserInfo {
	t.Helper()
	u, err := selfReview(ctx, cs)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// selfReview is who the API server takes the client for.
func selfReview(ctx context.Context, cs kubernetes.Interface) (authnv1.UserInfo, error) {
	r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return authnv1.UserInfo{}, fmt.Errorf("SelfSubjectReview: %w", err)
	}
	return r.Status.UserInfo, nil
}

// credentialID is what the API server's x509 authenticator records of the
// client certificate it checked.
func credentialID(u authnv1.UserInfo) string {
	return strings.Join(u.Extra["authentication.kubernetes.io/credential-id"], ",")
}

func fingerprint(c *x509.Certificate) string {
	if c == nil {
		return "<none>"
	}
	sum := sha256.Sum256(c.Raw)
	return "X509SHA256=" + hex.EncodeToString(sum[:])
}
