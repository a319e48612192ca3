package localcluster

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	// A certificate that expires sooner than this is regenerated at Start.
	minRemaining = 24 * time.Hour
)

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

// authority is a CA that can sign leaf certificates.
type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// leafSpec describes one leaf certificate.
type leafSpec struct {
	name     string
	subject  pkix.Name
	usage    []x509.ExtKeyUsage
	dnsNames []string
	ips      []net.IP
}

// ensurePKI creates, or checks and reuses, every certificate and key the control
// plane needs. A CA that is missing or invalid is regenerated together with
// everything it signed; a leaf that is missing, invalid or whose subject or names
// changed is regenerated alone.
func ensurePKI(p pkiPaths) (ca authority, err error) {
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return authority{}, fmt.Errorf("create pki directory: %w", err)
	}
	ca, fresh, err := ensureCA(p, caName, "wasmlet-local-ca")
	if err != nil {
		return authority{}, err
	}
	frontCA, frontFresh, err := ensureCA(p, frontProxyCAName, "wasmlet-local-front-proxy-ca")
	if err != nil {
		return authority{}, err
	}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	leaves := []struct {
		ca    authority
		fresh bool
		spec  leafSpec
	}{
		{ca, fresh, leafSpec{
			name: apiserverName, subject: pkix.Name{CommonName: "kube-apiserver"},
			usage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			dnsNames: apiserverDNSNames(), ips: apiserverIPs(),
		}},
		{ca, fresh, leafSpec{
			name: adminName, usage: client,
			subject: pkix.Name{CommonName: "wasmlet-admin", Organization: []string{"system:masters"}},
		}},
		{ca, fresh, leafSpec{
			name: schedulerName, usage: client,
			subject: pkix.Name{CommonName: "system:kube-scheduler"},
		}},
		{ca, fresh, leafSpec{
			name: controllerManagerName, usage: client,
			subject: pkix.Name{CommonName: "system:kube-controller-manager"},
		}},
		{ca, fresh, leafSpec{
			name: kubeletClientName, usage: client,
			subject: pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		}},
		{frontCA, frontFresh, leafSpec{
			name: frontProxyClientName, usage: client,
			subject: pkix.Name{CommonName: "front-proxy-client"},
		}},
	}
	for _, l := range leaves {
		if !l.fresh && validLeaf(p, l.ca, l.spec) {
			continue
		}
		if err := writeLeaf(p, l.ca, l.spec); err != nil {
			return authority{}, err
		}
	}
	if err := ensureServiceAccountKey(p, fresh); err != nil {
		return authority{}, err
	}
	return ca, nil
}

// ensureCA loads the named CA when it is valid, or creates a new one; fresh reports
// that it was created, so that everything it signs must be re-issued.
func ensureCA(p pkiPaths, name, cn string) (ca authority, fresh bool, err error) {
	if ca, err := loadKeyPair(p.crt(name), p.key(name)); err == nil && ca.cert.IsCA && usable(ca.cert) {
		return ca, false, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return authority{}, false, fmt.Errorf("generate %s key: %w", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return authority{}, false, fmt.Errorf("create %s certificate: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return authority{}, false, fmt.Errorf("parse %s certificate: %w", name, err)
	}
	if err := writeKeyPair(p.crt(name), p.key(name), der, key); err != nil {
		return authority{}, false, err
	}
	return authority{cert: cert, key: key}, true, nil
}

// validLeaf reports whether the leaf on disk was signed by ca, matches its key, is
// valid for a while yet and still has the subject, names and usages of spec.
func validLeaf(p pkiPaths, ca authority, spec leafSpec) bool {
	kp, err := loadKeyPair(p.crt(spec.name), p.key(spec.name))
	if err != nil || !usable(kp.cert) || kp.cert.CheckSignatureFrom(ca.cert) != nil {
		return false
	}
	c := kp.cert
	return c.Subject.CommonName == spec.subject.CommonName &&
		slices.Equal(c.Subject.Organization, spec.subject.Organization) &&
		slices.Equal(c.DNSNames, spec.dnsNames) &&
		slices.EqualFunc(c.IPAddresses, spec.ips, func(a, b net.IP) bool { return a.Equal(b) }) &&
		slices.Equal(c.ExtKeyUsage, spec.usage)
}

// writeLeaf issues a new key pair for spec signed by ca.
func writeLeaf(p pkiPaths, ca authority, spec leafSpec) error {
	der, key, err := issue(ca, spec)
	if err != nil {
		return err
	}
	return writeKeyPair(p.crt(spec.name), p.key(spec.name), der, key)
}

// issue creates a certificate for spec signed by ca, returning its DER and key.
func issue(ca authority, spec leafSpec) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate %s key: %w", spec.name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               spec.subject,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(leafValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           spec.usage,
		BasicConstraintsValid: true,
		DNSNames:              spec.dnsNames,
		IPAddresses:           spec.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign %s certificate: %w", spec.name, err)
	}
	return der, key, nil
}

// ensureServiceAccountKey keeps the RSA key that signs service-account tokens
// unless it is unreadable or the cluster CA was just replaced (a new cluster).
func ensureServiceAccountKey(p pkiPaths, force bool) error {
	if !force {
		if b, err := os.ReadFile(p.saKey()); err == nil {
			if k, err := parsePrivateKey(b); err == nil {
				if _, ok := k.(*rsa.PrivateKey); ok {
					if _, err := os.Stat(p.saPub()); err == nil {
						return nil
					}
				}
			}
		}
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("generate service-account key: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode service-account key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("encode service-account public key: %w", err)
	}
	if err := writeFileAtomic(p.saKey(), pemBytes("PRIVATE KEY", keyDER), 0o600); err != nil {
		return err
	}
	return writeFileAtomic(p.saPub(), pemBytes("PUBLIC KEY", pubDER), 0o644)
}

func usable(c *x509.Certificate) bool {
	now := time.Now()
	return now.After(c.NotBefore) && now.Add(minRemaining).Before(c.NotAfter)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand does not fail on Linux; a clock-based serial is still unique here.
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

// loadKeyPair reads a PEM certificate and its key and checks that they match.
func loadKeyPair(certPath, keyPath string) (authority, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return authority{}, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return authority{}, err
	}
	block, _ := pem.Decode(cb)
	if block == nil || block.Type != "CERTIFICATE" {
		return authority{}, fmt.Errorf("%s: no PEM certificate", certPath)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return authority{}, fmt.Errorf("%s: %w", certPath, err)
	}
	k, err := parsePrivateKey(kb)
	if err != nil {
		return authority{}, fmt.Errorf("%s: %w", keyPath, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return authority{}, fmt.Errorf("%s: key cannot sign", keyPath)
	}
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return authority{}, fmt.Errorf("%s: %w", keyPath, err)
	}
	certPub, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil || !bytes.Equal(pub, certPub) {
		return authority{}, fmt.Errorf("%s does not match %s", keyPath, certPath)
	}
	return authority{cert: cert, key: signer}, nil
}

func parsePrivateKey(b []byte) (any, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM key")
	}
	switch block.Type {
	case "PRIVATE KEY":
		return x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		return x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		return x509.ParsePKCS1PrivateKey(block.Bytes)
	}
	return nil, fmt.Errorf("unsupported PEM block %q", block.Type)
}

// encodeKeyPair returns the PEM certificate and PKCS#8 key.
func encodeKeyPair(der []byte, key crypto.Signer) (certPEM, keyPEM []byte, err error) {
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return pemBytes("CERTIFICATE", der), pemBytes("PRIVATE KEY", kd), nil
}

func writeKeyPair(certPath, keyPath string, der []byte, key crypto.Signer) error {
	certPEM, keyPEM, err := encodeKeyPair(der, key)
	if err != nil {
		return fmt.Errorf("%s: %w", keyPath, err)
	}
	// Key first: a certificate on disk without its key would look valid to nobody,
	// but a key without its new certificate is simply replaced next time.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(certPath, certPEM, 0o644)
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writeFileAtomic writes through a temporary file and a rename, so that a reader
// (another process attaching, a component starting) never sees half a file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp, perm)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
