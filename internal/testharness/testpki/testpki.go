// Package testpki makes the certificate authorities, key pairs, service-account
// keys and kubeconfigs of wasmlet's tests and development set-ups: the local
// control plane (localcluster), the compose stack's init (hack/compose) and the
// TLS tests. Nothing here is fit for production use (no revocation, keys kept
// in plain files).
//
// It owns the mechanics — a P-256 key and certificate from a template, PEM
// encoding (certificates, PKCS#8 keys), loading a pair back and checking that
// it matches, atomic writes with fixed permissions (keys 0600, certificates
// 0644). Its callers own which certificates exist, their names, subjects,
// paths and when a file on disk is reused.
//
//	ca, err := testpki.NewRoot("wasmlet-local-ca", testpki.CAValidity)
//	dns, ips := testpki.Hosts("localhost", "127.0.0.1")
//	leaf, err := ca.Issue(testpki.Spec{Subject: pkix.Name{CommonName: "apiserver"},
//		Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, DNSNames: dns, IPs: ips, Validity: testpki.LeafValidity})
//	err = leaf.Write("pki/apiserver.crt", "pki/apiserver.key")
//	ca, err = testpki.LoadPair("pki/ca.crt", "pki/ca.key")
//
// For a test that only wants files, NewCA and CA.Issue write short-lived pairs
// into a directory:
//
//	ca, err := testpki.NewCA(dir, "wasmlet-test-ca")
//	files, err := ca.Issue("executor", "127.0.0.1", "localhost")
//	// files.Cert, files.Key, ca.CertFile
package testpki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The validities of the long-lived PKIs (localcluster's, the compose
// stack's): a CA outlives every leaf it signs.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 365 * 24 * time.Hour
)

// Pair is a certificate and its private key, in memory. A CA's Pair signs
// others with Issue.
type Pair struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Spec is what a leaf certificate says.
type Spec struct {
	Subject  pkix.Name
	Usage    []x509.ExtKeyUsage
	DNSNames []string
	IPs      []net.IP
	Validity time.Duration // from now; NotBefore is an hour ago, for clock skew
}

// Hosts splits host names and IP addresses, for Spec.DNSNames and Spec.IPs.
func Hosts(hosts ...string) (dnsNames []string, ips []net.IP) {
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dnsNames = append(dnsNames, h)
		}
	}
	return dnsNames, ips
}

// CATemplate is the template of a CA named cn, valid for validity. A caller
// may constrain it further (path length, name constraints) before Sign.
func CATemplate(cn string, validity time.Duration) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

// NewRoot makes a self-signed CA named cn, valid for validity.
func NewRoot(cn string, validity time.Duration) (Pair, error) {
	return Sign(CATemplate(cn, validity), nil)
}

// Issue makes a new key and a leaf certificate for it, signed by p.
func (p Pair) Issue(s Spec) (Pair, error) {
	now := time.Now()
	return Sign(&x509.Certificate{
		SerialNumber:          serial(),
		Subject:               s.Subject,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(s.Validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           s.Usage,
		BasicConstraintsValid: true,
		DNSNames:              s.DNSNames,
		IPAddresses:           s.IPs,
	}, &p)
}

// Sign makes a new ECDSA P-256 key and a certificate for it from tmpl, signed
// by parent, or self-signed when parent is nil.
func Sign(tmpl *x509.Certificate, parent *Pair) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, fmt.Errorf("generate key for %s: %w", tmpl.Subject.CommonName, err)
	}
	signer, signerKey := tmpl, crypto.Signer(key)
	if parent != nil {
		signer, signerKey = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, key.Public(), signerKey)
	if err != nil {
		return Pair{}, fmt.Errorf("sign certificate for %s: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Pair{}, fmt.Errorf("parse certificate for %s: %w", tmpl.Subject.CommonName, err)
	}
	return Pair{Cert: cert, Key: key}, nil
}

// CertPEM is the certificate in PEM.
func (p Pair) CertPEM() []byte { return pemBytes("CERTIFICATE", p.Cert.Raw) }

// KeyPEM is the private key in PEM, as PKCS#8.
func (p Pair) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(p.Key)
	if err != nil {
		return nil, fmt.Errorf("encode key of %s: %w", p.Cert.Subject.CommonName, err)
	}
	return pemBytes("PRIVATE KEY", der), nil
}

// Write writes the key (0600) and then the certificate (0644), each
// atomically: a key without its new certificate is simply replaced next time,
// whereas a new certificate beside an old key would be a broken pair.
func (p Pair) Write(certPath, keyPath string) error {
	keyPEM, err := p.KeyPEM()
	if err != nil {
		return fmt.Errorf("%s: %w", keyPath, err)
	}
	if err := WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return WriteFile(certPath, p.CertPEM(), 0o644)
}

// LoadPair reads a PEM certificate and its key (PKCS#8, SEC 1 or PKCS#1) and
// checks that they belong together.
func LoadPair(certPath, keyPath string) (Pair, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return Pair{}, err
	}
	block, _ := pem.Decode(cb)
	if block == nil || block.Type != "CERTIFICATE" {
		return Pair{}, fmt.Errorf("%s: no PEM certificate", certPath)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return Pair{}, fmt.Errorf("%s: %w", certPath, err)
	}
	k, err := ReadPrivateKey(keyPath)
	if err != nil {
		return Pair{}, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return Pair{}, fmt.Errorf("%s: key cannot sign", keyPath)
	}
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return Pair{}, fmt.Errorf("%s: %w", keyPath, err)
	}
	certPub, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil || !bytes.Equal(pub, certPub) {
		return Pair{}, fmt.Errorf("%s does not match %s", keyPath, certPath)
	}
	return Pair{Cert: cert, Key: signer}, nil
}

// ReadPrivateKey reads a PEM private key: PKCS#8, SEC 1 (EC) or PKCS#1 (RSA).
func ReadPrivateKey(path string) (any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM key", path)
	}
	var k any
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		err = fmt.Errorf("unsupported PEM block %q", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// WriteServiceAccountKey makes the RSA 2048 key that signs service-account
// tokens and writes it (PKCS#8, 0600) and its public half (PKIX, 0644).
func WriteServiceAccountKey(keyPath, pubPath string) error {
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
	if err := WriteFile(keyPath, pemBytes("PRIVATE KEY", keyDER), 0o600); err != nil {
		return err
	}
	return WriteFile(pubPath, pemBytes("PUBLIC KEY", pubDER), 0o644)
}

// Kubeconfig is a self-contained kubeconfig: one cluster, user and context,
// everything inline, so that the file can be copied or mounted on its own.
type Kubeconfig struct {
	Name   string // of the cluster and the context
	Server string
	CA     []byte // PEM
	User   string
	Cert   []byte // PEM
	Key    []byte // PEM
	// Token, when set, is the user's bearer token instead of Cert and Key.
	Token string
}

// WriteKubeconfig writes k to path (0600). It is written as text rather than
// with client-go, which the TLS tests that use this package need not build.
func WriteKubeconfig(path string, k Kubeconfig) error {
	b64 := base64.StdEncoding.EncodeToString
	user := fmt.Sprintf("    client-certificate-data: %s\n    client-key-data: %s\n", b64(k.Cert), b64(k.Key))
	if k.Token != "" {
		user = fmt.Sprintf("    token: %q\n", k.Token)
	}
	kc := fmt.Sprintf(`apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: %s
    server: %q
  name: %q
contexts:
- context:
    cluster: %q
    user: %q
  name: %q
current-context: %q
kind: Config
users:
- name: %q
  user:
%s`, b64(k.CA), k.Server, k.Name, k.Name, k.User, k.Name, k.Name, k.User, user)
	return WriteFile(path, []byte(kc), 0o600)
}

// WriteFile writes through a temporary file and a rename, so that a reader
// (a process attaching, a container or component starting) never sees half a
// file; the file has perm whatever the umask.
func WriteFile(path string, data []byte, perm os.FileMode) error {
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

// CA is a short-lived CA for a test, whose certificate is at CertFile.
type CA struct {
	CertFile string
	dir      string
	pair     Pair
}

// KeyPair names a certificate and its key on disk.
type KeyPair struct{ Cert, Key string }

const testValidity = 24 * time.Hour

// NewCA makes a CA named cn, valid for a day, and writes its certificate into
// dir as cn.crt.
func NewCA(dir, cn string) (*CA, error) {
	p, err := NewRoot(cn, testValidity)
	if err != nil {
		return nil, fmt.Errorf("testpki: %w", err)
	}
	ca := &CA{CertFile: filepath.Join(dir, cn+".crt"), dir: dir, pair: p}
	if err := WriteFile(ca.CertFile, p.CertPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("testpki: %w", err)
	}
	return ca, nil
}

// Issue makes a key pair for name, valid for a day for both server and client
// authentication, for hosts (IP addresses or DNS names), and writes it into
// the CA's directory as name.crt and name.key.
func (ca *CA) Issue(name string, hosts ...string) (KeyPair, error) {
	dns, ips := Hosts(hosts...)
	p, err := ca.pair.Issue(Spec{
		Subject:  pkix.Name{CommonName: name},
		Usage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames: dns, IPs: ips, Validity: testValidity,
	})
	if err != nil {
		return KeyPair{}, fmt.Errorf("testpki: %w", err)
	}
	kp := KeyPair{Cert: filepath.Join(ca.dir, name+".crt"), Key: filepath.Join(ca.dir, name+".key")}
	if err := p.Write(kp.Cert, kp.Key); err != nil {
		return KeyPair{}, fmt.Errorf("testpki: %w", err)
	}
	return kp, nil
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand does not fail on Linux; a clock-based serial is still unique here.
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}
