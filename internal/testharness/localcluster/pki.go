package localcluster

import (
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

// A certificate that expires sooner than this is regenerated at Start.
const minRemaining = 24 * time.Hour

// apiserverDNSNames and apiserverIPs are the names the API server's serving certificate covers: the
// loopback address it is reached on and the in-cluster service names and IP (the
// first address of --service-cluster-ip-range).
func apiserverDNSNames() []string {
	return []string{
		"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local",
	}
}

func apiserverIPs() []net.IP {
	return []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 0, 1)}
}

// pkiPaths names every file of the PKI under Dir/pki.
type pkiPaths struct{ dir string }

func (p pkiPaths) crt(name string) string { return filepath.Join(p.dir, name+".crt") }
func (p pkiPaths) key(name string) string { return filepath.Join(p.dir, name+".key") }
func (p pkiPaths) saKey() string          { return filepath.Join(p.dir, "sa.key") }
func (p pkiPaths) saPub() string          { return filepath.Join(p.dir, "sa.pub") }

// Names of the key pairs under pki/.
const (
	caName                = "ca"
	frontProxyCAName      = "front-proxy-ca"
	apiserverName         = "apiserver"
	adminName             = "admin"
	schedulerName         = "kube-scheduler"
	controllerManagerName = "kube-controller-manager"
	kubeletClientName     = "apiserver-kubelet-client"
	frontProxyClientName  = "front-proxy-client"
)

// leafSpec describes one leaf certificate, kept as pki/<name>.crt and .key.
type leafSpec struct {
	name string
	testpki.Spec
}

func newLeafSpec(name string, subject pkix.Name, usage []x509.ExtKeyUsage, dnsNames []string, ips []net.IP) leafSpec {
	return leafSpec{name: name, Spec: testpki.Spec{
		Subject: subject, Usage: usage, DNSNames: dnsNames, IPs: ips, Validity: testpki.LeafValidity,
	}}
}

// ensurePKI creates, or checks and reuses, every certificate and key the control
// plane needs. A CA that is missing or invalid is regenerated together with
// everything it signed; a leaf that is missing, invalid or whose subject or names
// changed is regenerated alone.
func ensurePKI(p pkiPaths) (ca testpki.Pair, err error) {
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return testpki.Pair{}, fmt.Errorf("create pki directory: %w", err)
	}
	ca, fresh, err := ensureCA(p, caName, "wasmlet-local-ca")
	if err != nil {
		return testpki.Pair{}, err
	}
	frontCA, frontFresh, err := ensureCA(p, frontProxyCAName, "wasmlet-local-front-proxy-ca")
	if err != nil {
		return testpki.Pair{}, err
	}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	leaves := []struct {
		ca    testpki.Pair
		fresh bool
		spec  leafSpec
	}{
		{ca, fresh, newLeafSpec(apiserverName, pkix.Name{CommonName: "kube-apiserver"},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, apiserverDNSNames(), apiserverIPs())},
		{ca, fresh, newLeafSpec(adminName,
			pkix.Name{CommonName: "wasmlet-admin", Organization: []string{"system:masters"}}, client, nil, nil)},
		{ca, fresh, newLeafSpec(schedulerName, pkix.Name{CommonName: "system:kube-scheduler"}, client, nil, nil)},
		{ca, fresh, newLeafSpec(controllerManagerName, pkix.Name{CommonName: "system:kube-controller-manager"}, client, nil, nil)},
		{ca, fresh, newLeafSpec(kubeletClientName,
			pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}}, client, nil, nil)},
		{frontCA, frontFresh, newLeafSpec(frontProxyClientName, pkix.Name{CommonName: "front-proxy-client"}, client, nil, nil)},
	}
	for _, l := range leaves {
		if err := ensureLeaf(p, l.ca, l.spec, l.fresh); err != nil {
			return testpki.Pair{}, err
		}
	}
	if err := ensureServiceAccountKey(p, fresh); err != nil {
		return testpki.Pair{}, err
	}
	return ca, nil
}

// ensureCA loads the named CA when it is valid, or creates a new one; fresh reports
// that it was created, so that everything it signs must be re-issued.
func ensureCA(p pkiPaths, name, cn string) (ca testpki.Pair, fresh bool, err error) {
	if ca, err := testpki.LoadPair(p.crt(name), p.key(name)); err == nil && ca.Cert.IsCA && usable(ca.Cert) {
		return ca, false, nil
	}
	ca, err = testpki.NewRoot(cn, testpki.CAValidity)
	if err != nil {
		return testpki.Pair{}, false, fmt.Errorf("%s: %w", name, err)
	}
	return ca, true, ca.Write(p.crt(name), p.key(name))
}

// ensureLeaf keeps the leaf on disk when it is still good (validLeaf) and ca was
// not just replaced (force), and issues a new one otherwise.
func ensureLeaf(p pkiPaths, ca testpki.Pair, spec leafSpec, force bool) error {
	if !force && validLeaf(p, ca, spec) {
		return nil
	}
	leaf, err := ca.Issue(spec.Spec)
	if err != nil {
		return fmt.Errorf("%s: %w", spec.name, err)
	}
	return leaf.Write(p.crt(spec.name), p.key(spec.name))
}

// validLeaf reports whether the leaf on disk was signed by ca, matches its key, is
// valid for a while yet and still has the subject, names and usages of spec.
func validLeaf(p pkiPaths, ca testpki.Pair, spec leafSpec) bool {
	kp, err := testpki.LoadPair(p.crt(spec.name), p.key(spec.name))
	if err != nil || !usable(kp.Cert) || kp.Cert.CheckSignatureFrom(ca.Cert) != nil {
		return false
	}
	c := kp.Cert
	return c.Subject.CommonName == spec.Subject.CommonName &&
		slices.Equal(c.Subject.Organization, spec.Subject.Organization) &&
		slices.Equal(c.DNSNames, spec.DNSNames) &&
		slices.EqualFunc(c.IPAddresses, spec.IPs, func(a, b net.IP) bool { return a.Equal(b) }) &&
		slices.Equal(c.ExtKeyUsage, spec.Usage)
}

// ensureServiceAccountKey keeps the RSA key that signs service-account tokens
// unless it is unreadable or the cluster CA was just replaced (a new cluster).
func ensureServiceAccountKey(p pkiPaths, force bool) error {
	if !force {
		if k, err := testpki.ReadPrivateKey(p.saKey()); err == nil {
			if _, ok := k.(*rsa.PrivateKey); ok {
				if _, err := os.Stat(p.saPub()); err == nil {
					return nil
				}
			}
		}
	}
	return testpki.WriteServiceAccountKey(p.saKey(), p.saPub())
}

func usable(c *x509.Certificate) bool {
	now := time.Now()
	return now.After(c.NotBefore) && now.Add(minRemaining).Before(c.NotAfter)
}
