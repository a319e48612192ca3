package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestServingCertificateFromCSR: a node agent with --rotate-server-certificates
// refuses TLS until its kubelet-serving CSR is approved with stock kubectl
// (and says so with an Event on the Node), then serves the issued
// certificate, which verifies against the cluster CA for the node's address;
// before that certificate expires (the shared cluster signs for 3 minutes)
// it sends a second CSR and, once that is approved, serves the new
// certificate without a restart.
func TestServingCertificateFromCSR(t *testing.T) {
	n := startNode(t, "e2e-servingcert", nil, "--rotate-server-certificates")
	c := cluster.Get(t)
	caPEM, err := os.ReadFile(c.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	certFile, keyFile := c.KubeletClientCert()
	client, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", n.port)

	// No certificate yet: the handshake fails, and the Node's events say why.
	if leaf, err := servedCert(addr, roots, client); err == nil {
		t.Fatalf("kubelet API served %s before any CSR was approved", leaf.Subject)
	}
	waitFor(t, 60*time.Second, "a ServingCertificatePending event on the node", func() (bool, string) {
		out, err := kubectl(t, "get", "events", "-n", "default", "--field-selector",
			"involvedObject.kind=Node,involvedObject.name="+n.name+",reason=ServingCertificatePending", "-o", "jsonpath={.items[*].message}")
		return err == nil && strings.Contains(out, "kubectl certificate approve"), fmt.Sprint(out, err)
	})

	first := approvePendingCSR(t, n.name, nil)
	var leaf *x509.Certificate
	waitFor(t, 60*time.Second, "the kubelet API to serve the issued certificate", func() (bool, string) {
		leaf, err = servedCert(addr, roots, client)
		return err == nil, fmt.Sprint(err)
	})
	checkServingCert(t, leaf, n.name)
	// The kubelet API behind it works (and still wants a client identity).
	if code := getWith(t, addr, roots, &client, "/pods"); code != http.StatusOK {
		t.Errorf("GET /pods with the API server's kubelet client cert over the verified connection = %d, want 200", code)
	}
	if code := getWith(t, addr, roots, nil, "/pods"); code != http.StatusUnauthorized {
		t.Errorf("GET /pods anonymously = %d, want 401", code)
	}
	t.Logf("first certificate: serial %s, %s – %s (CSR %s)", leaf.SerialNumber, leaf.NotBefore.Format(time.TimeOnly), leaf.NotAfter.Format(time.TimeOnly), first)

	// Renewal: the signer backdates NotBefore by 5 minutes, so a 3-minute
	// certificate spans 8 and client-go's manager renews it 36–132 s after
	// it was issued.
	begin := time.Now()
	second := approvePendingCSR(t, n.name, map[string]bool{first: true})
	t.Logf("renewal CSR %s sent %s after the first certificate was served", second, time.Since(begin).Round(time.Second))
	var renewed *x509.Certificate
	waitFor(t, 60*time.Second, "the kubelet API to serve the renewed certificate", func() (bool, string) {
		renewed, err = servedCert(addr, roots, client)
		if err != nil {
			return false, err.Error()
		}
		return renewed.SerialNumber.Cmp(leaf.SerialNumber) != 0, "still serial " + renewed.SerialNumber.String()
	})
	checkServingCert(t, renewed, n.name)
	if !renewed.NotAfter.After(leaf.NotAfter) {
		t.Errorf("renewed certificate ends %s, not after the first's %s", renewed.NotAfter, leaf.NotAfter)
	}
	if time.Now().After(leaf.NotAfter) {
		t.Errorf("renewed only after the first certificate expired (%s)", leaf.NotAfter)
	}
	select {
	case <-n.proc.exited:
		t.Fatal("the node agent exited during the renewal")
	default:
	}
}

// approvePendingCSR waits (up to 3 minutes) for a kubelet-serving CSR of
// node that is not in skip and not yet approved, approves it with kubectl
// and returns its name.
func approvePendingCSR(t *testing.T, node string, skip map[string]bool) string {
	t.Helper()
	var name string
	waitFor(t, 3*time.Minute, "a pending kubelet-serving CSR from "+node, func() (bool, string) {
		out, err := kubectl(t, "get", "csr", "-o",
			`jsonpath={range .items[*]}{.metadata.name} {.spec.signerName} {.spec.username} {.status.conditions[*].type}{"\n"}{end}`)
		if err != nil {
			return false, err.Error()
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) == 3 && f[1] == "kubernetes.io/kubelet-serving" && f[2] == "system:node:"+node && !skip[f[0]] {
				name = f[0]
				return true, ""
			}
		}
		return false, out
	})
	mustKubectl(t, "certificate", "approve", name)
	return name
}

// servedCert handshakes with the kubelet API verifying its certificate
// against roots for the address it was dialled at (no InsecureSkipVerify),
// and returns the certificate.
func servedCert(addr string, roots *x509.CertPool, client tls.Certificate) (*x509.Certificate, error) {
	host, _, _ := net.SplitHostPort(addr)
	d := &tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: host, Certificates: []tls.Certificate{client}}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

func getWith(t *testing.T, addr string, roots *x509.CertPool, client *tls.Certificate, path string) int {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots}
	if client != nil {
		cfg.Certificates = []tls.Certificate{*client}
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	resp, err := hc.Get("https://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func checkServingCert(t *testing.T, c *x509.Certificate, node string) {
	t.Helper()
	if c.Subject.CommonName != "system:node:"+node || len(c.Subject.Organization) != 1 || c.Subject.Organization[0] != "system:nodes" {
		t.Errorf("served certificate subject %s, want CN=system:node:%s O=system:nodes", c.Subject, node)
	}
	if err := c.VerifyHostname(node); err != nil {
		t.Errorf("served certificate lacks the node name: %v", err)
	}
	if life := c.NotAfter.Sub(c.NotBefore); life > 9*time.Minute {
		t.Errorf("served certificate spans %s: not the cluster's 3-minute signing (+5 min backdate)", life)
	}
	if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("served certificate usages %v, want server auth only", c.ExtKeyUsage)
	}
}
