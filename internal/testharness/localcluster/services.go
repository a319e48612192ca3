package localcluster

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

// StartService starts a long-running program beside the control plane, the
// way its components are started: detached in its own session, output
// appended to dir/logs/<name>.log, PID in dir/pids/<name>.pid, so that
// another command can stop it with StopService. name must be the binary's
// base name (it is checked against the PID before signalling). env is added
// to a minimal environment.
func StartService(dir, name, bin string, args, env []string) (pid int, err error) {
	for _, d := range []string{"logs", "pids"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return 0, fmt.Errorf("start %s: %w", name, err)
		}
	}
	p, err := startProcess(dir, name, bin, args, env, false)
	if err != nil {
		return 0, err
	}
	return p.pid, nil
}

// RecordService writes the PID of a program started otherwise, so that
// StopService can stop it.
func RecordService(dir, name string, pid int) error {
	if err := os.MkdirAll(filepath.Join(dir, "pids"), 0o755); err != nil {
		return err
	}
	return testpki.WriteFile(pidPath(dir, name), []byte(fmt.Sprintf("%d\n", pid)), 0o644)
}

// StopService stops a program recorded under dir (SIGTERM to its process
// group, then SIGKILL). Stopping one that is not running is not an error.
func StopService(dir, name string) error { return stopOne(dir, name) }

// ServiceLog is where StartService sends a program's output.
func ServiceLog(dir, name string) string { return filepath.Join(dir, "logs", name+".log") }

// KubeletClientCert returns the API server's client certificate and key
// towards kubelets: what a kubelet API must accept (O=system:masters).
func (c *Cluster) KubeletClientCert() (certFile, keyFile string) {
	return c.pki().crt(kubeletClientName), c.pki().key(kubeletClientName)
}

// ServingCert issues (or reuses, while valid) a serving certificate signed by
// the cluster CA for a program run beside the control plane, e.g. an
// aggregated API server that kube-apiserver must verify (an APIService's
// caBundle is then CACertPath's content). name must be a plain file name; the
// pair is kept as pki/<name>.crt and .key.
func (c *Cluster) ServingCert(name string, dnsNames []string, ips []net.IP) (certFile, keyFile string, err error) {
	if name == "" || filepath.Base(name) != name || name == caName {
		return "", "", fmt.Errorf("serving certificate %q: want a plain file name", name)
	}
	c.nodeMu.Lock()
	defer c.nodeMu.Unlock()
	p := c.pki()
	ca, err := testpki.LoadPair(p.crt(caName), p.key(caName))
	if err != nil {
		return "", "", fmt.Errorf("serving certificate %s: load cluster CA: %w", name, err)
	}
	spec := newLeafSpec(name, pkix.Name{CommonName: name}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, dnsNames, ips)
	if err := ensureLeaf(p, ca, spec, false); err != nil {
		return "", "", fmt.Errorf("serving certificate: %w", err)
	}
	return p.crt(name), p.key(name), nil
}
