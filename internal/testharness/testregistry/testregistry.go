// Package testregistry runs a real OCI registry (Debian's docker-registry,
// distribution 2.8) for tests and for a local development stack.
//
// It owns the registry process it starts, that process's config, storage,
// TLS material and htpasswd file, all under one directory; it touches
// nothing else. Tests use New, which skips when the binary is missing and
// stops the process at cleanup; other programs use Start and Stop.
//
//	reg := testregistry.New(t, testregistry.Options{})
//	ref := reg.Host + "/hello:v1" // plain HTTP
//
//	reg := testregistry.New(t, testregistry.Options{Auth: true})
//	// HTTPS with basic auth: trust reg.CAFile, log in as reg.Username/reg.Password.
package testregistry

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Binary is where Debian installs the registry.
const Binary = "/usr/bin/docker-registry"

// Options choose how the registry is reached.
type Options struct {
	// Auth serves HTTPS with a generated self-signed CA and requires HTTP
	// basic auth (htpasswd). Without it the registry speaks plain HTTP and
	// accepts anyone.
	Auth bool
	// Username and Password for Auth; defaults "wasmlet" and a random
	// password.
	Username string
	Password string
	// Binary overrides the registry executable (default Binary).
	Binary string
	// Stderr receives the registry's log; default discarded.
	Stderr *os.File
}

// Registry is a running docker-registry process.
type Registry struct {
	// Host is "127.0.0.1:port", the registry part of a reference.
	Host string
	// URL is the base URL ("http://..." or "https://...").
	URL string
	// PlainHTTP is true unless Options.Auth was set.
	PlainHTTP bool
	// CAFile is the PEM file of the CA that signed the serving cert (Auth only).
	CAFile string
	// Username and Password for basic auth (Auth only).
	Username string
	Password string
	// Dir holds config.yml, storage/, and the TLS and htpasswd files.
	Dir string

	cmd    *exec.Cmd
	done   chan struct{}
	client *http.Client
}

// New starts a registry for the test in t.TempDir() and stops it at
// cleanup. It skips the test when the registry binary is missing.
func New(t testing.TB, opts Options) *Registry {
	t.Helper()
	bin := opts.Binary
	if bin == "" {
		bin = Binary
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("testregistry: %s is missing (install Debian's docker-registry package): %v", bin, err)
	}
	r, err := Start(t.TempDir(), opts)
	if err != nil {
		t.Fatalf("testregistry: %v", err)
	}
	t.Cleanup(r.Stop)
	return r
}

// Start runs a registry with its files under dir, on a free loopback port,
// and returns once GET /v2/ answers. Call Stop to end it.
func Start(dir string, opts Options) (*Registry, error) {
	if opts.Binary == "" {
		opts.Binary = Binary
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create registry dir: %w", err)
	}
	if opts.Auth {
		if opts.Username == "" {
			opts.Username = "wasmlet"
		}
		if opts.Password == "" {
			opts.Password = randomHex(12)
		}
	}
	var lastErr error
	// A free port can be taken between probing and the registry binding
	// it; try a few.
	for range 3 {
		r, err := start(dir, opts)
		if err == nil {
			return r, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func start(dir string, opts Options) (*Registry, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &Registry{
		Host:      fmt.Sprintf("127.0.0.1:%d", port),
		PlainHTTP: !opts.Auth,
		Dir:       dir,
		done:      make(chan struct{}),
		client:    &http.Client{Timeout: 5 * time.Second},
	}
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: %s
`, filepath.Join(dir, "storage"), r.Host, randomHex(16))
	if opts.Auth {
		r.Username, r.Password = opts.Username, opts.Password
		certFile, keyFile, caPEM, err := writeTLS(dir)
		if err != nil {
			return nil, err
		}
		r.CAFile = filepath.Join(dir, "ca.pem")
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		r.client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := writeHtpasswd(htpasswd, r.Username, r.Password); err != nil {
			return nil, err
		}
		cfg += fmt.Sprintf(`  tls:
    certificate: %s
    key: %s
auth:
  htpasswd:
    realm: wasmlet-test
    path: %s
`, certFile, keyFile, htpasswd)
		r.URL = "https://" + r.Host
	} else {
		r.URL = "http://" + r.Host
	}
	cfgFile := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		return nil, fmt.Errorf("write registry config: %w", err)
	}

	r.cmd = exec.Command(opts.Binary, "serve", cfgFile)
	// The registry reads REGISTRY_* variables as config overrides: keep
	// the environment clean of them.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REGISTRY_") {
			r.cmd.Env = append(r.cmd.Env, kv)
		}
	}
	if opts.Stderr != nil {
		r.cmd.Stdout, r.cmd.Stderr = opts.Stderr, opts.Stderr
	}
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", opts.Binary, err)
	}
	var waitErr error
	go func() { waitErr = r.cmd.Wait(); close(r.done) }()

	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := r.client.Get(r.URL + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return r, nil
			}
		}
		select {
		case <-r.done:
			return nil, fmt.Errorf("docker-registry on %s exited before serving: %v", r.Host, waitErr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.Stop()
			return nil, fmt.Errorf("docker-registry on %s did not answer GET /v2/ within 15s (last error: %v)", r.Host, err)
		}
	}
}

// Stop kills the registry process by its PID and waits for it to exit.
// It may be called more than once.
func (r *Registry) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(3 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// BlobPath is the file in the registry's storage that holds a blob (e.g.
// to tamper with it in a test).
func (r *Registry) BlobPath(digest string) string {
	hexpart := strings.TrimPrefix(digest, "sha256:")
	if len(hexpart) < 2 {
		return ""
	}
	return filepath.Join(r.Dir, "storage", "docker", "registry", "v2", "blobs", "sha256", hexpart[:2], hexpart, "data")
}

// HTTPClient returns a client that trusts the registry's CA.
func (r *Registry) HTTPClient() *http.Client { return r.client }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// writeHtpasswd uses apache2-utils' htpasswd for the bcrypt hash, which is
// the only scheme the registry accepts; the password goes on stdin.
func writeHtpasswd(path, user, password string) error {
	cmd := exec.Command("htpasswd", "-niB", user)
	cmd.Stdin = strings.NewReader(password + "\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("htpasswd (install apache2-utils): %w: %s", err, stderr.String())
	}
	return os.WriteFile(path, out, 0o600)
}

// writeTLS generates a CA and a serving certificate for 127.0.0.1 and
// localhost, and writes ca.pem, server.pem and server-key.pem into dir.
func writeTLS(dir string) (certFile, keyFile string, caPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "wasmlet test registry CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", nil, fmt.Errorf("create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return "", "", nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return "", "", nil, fmt.Errorf("create serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", nil, err
	}
	caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certFile = filepath.Join(dir, "server.pem")
	keyFile = filepath.Join(dir, "server-key.pem")
	files := map[string][]byte{
		filepath.Join(dir, "ca.pem"): caPEM,
		certFile:                     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyFile:                      pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
	for name, data := range files {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			return "", "", nil, fmt.Errorf("write %s: %w", name, err)
		}
	}
	return certFile, keyFile, caPEM, nil
}

// PID is the registry process's ID (0 before it started).
func (r *Registry) PID() int {
	if r.cmd == nil || r.cmd.Process == nil {
		return 0
	}
	return r.cmd.Process.Pid
}
