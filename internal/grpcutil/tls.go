package grpcutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// TLS names the files of a service's mutual TLS over TCP: its own key pair
// and the CA that signs its peers. A server with TLS requires and verifies
// a client certificate signed by CA; a client verifies the server's
// certificate against CA (for the host it dials) and presents its own.
// Unix sockets never use TLS: their file mode (0600) guards them. The
// files are read again when they change, at the next handshake (see
// files), so certificates can be rotated in place.
//
// The zero TLS is off: a server then listens on a unix socket only, and a
// client dials TCP only on loopback.
type TLS struct {
	CertFile, KeyFile, CAFile string
}

// ErrPlaintextBeyondLoopback: a TCP address beyond loopback was to be
// dialled without mutual TLS.
var ErrPlaintextBeyondLoopback = errors.New("refusing plaintext gRPC to an address beyond loopback: configure mutual TLS (a certificate, its key and the CA) for this client")

// AddFlags registers --<prefix>tls-cert, --<prefix>tls-key and
// --<prefix>tls-ca on fs, for what (e.g. "the gRPC server").
func (t *TLS) AddFlags(fs *flag.FlagSet, prefix, what string) {
	fs.StringVar(&t.CertFile, prefix+"tls-cert", "", "certificate (PEM) of "+what+" for mutual TLS over TCP")
	fs.StringVar(&t.KeyFile, prefix+"tls-key", "", "private key (PEM) for --"+prefix+"tls-cert")
	fs.StringVar(&t.CAFile, prefix+"tls-ca", "", "CA (PEM) that signs the peers of "+what)
}

// Enabled reports whether any file is named.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" || t.CAFile != "" }

// Validate checks that the files are named all together or not at all.
func (t TLS) Validate() error {
	if t.Enabled() && (t.CertFile == "" || t.KeyFile == "" || t.CAFile == "") {
		return errors.New("mutual TLS needs a certificate, its key and a CA: give all three of --*tls-cert, --*tls-key and --*tls-ca")
	}
	return nil
}

// CheckFlags checks t as the flags --<prefix>tls-* (see AddFlags) for a
// link to or from addr, the value of --addrFlag: the three files are
// named together or not at all, a TCP address beyond loopback has them
// (gRPC leaves the host only over mutual TLS), and they are not given for
// a unix socket, which never uses TLS (its file mode guards it).
func (t TLS) CheckFlags(addrFlag, addr, prefix string) error {
	if err := t.Validate(); err != nil {
		return fmt.Errorf("--%stls-cert, --%stls-key, --%stls-ca: %w", prefix, prefix, prefix, err)
	}
	network, target, err := Split(addr)
	if err != nil {
		return fmt.Errorf("--%s: %w", addrFlag, err)
	}
	switch {
	case network == "tcp" && !t.Enabled() && !IsLoopback(target):
		return fmt.Errorf("--%s %s is beyond loopback, and gRPC leaves the host only over mutual TLS: give --%stls-cert, --%stls-key and --%stls-ca (or use a loopback or unix:// address)",
			addrFlag, addr, prefix, prefix, prefix)
	case network == "unix" && t.Enabled():
		return fmt.Errorf("--%stls-cert, --%stls-key and --%stls-ca are for a tcp:// --%s; %s is a unix socket, guarded by its file mode (0600): drop them",
			prefix, prefix, prefix, addrFlag, addr)
	}
	return nil
}

// CheckServerFlags is CheckFlags for a server's --addrFlag: a tcp://
// address without the TLS files is refused even on loopback
// (ErrPlaintextTCP), before anything is opened.
func (t TLS) CheckServerFlags(addrFlag, addr, prefix string) error {
	if network, _, err := Split(addr); err == nil && network == "tcp" && !t.Enabled() {
		return fmt.Errorf("--%s %s: %w", addrFlag, addr, ErrPlaintextTCP)
	}
	return t.CheckFlags(addrFlag, addr, prefix)
}

func (t TLS) load() (tls.Certificate, *x509.CertPool, error) {
	if err := t.Validate(); err != nil {
		return tls.Certificate{}, nil, err
	}
	pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("TLS key pair %s: %w", t.CertFile, err)
	}
	pem, err := os.ReadFile(t.CAFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return tls.Certificate{}, nil, fmt.Errorf("TLS CA %s: no PEM certificate in it", t.CAFile)
	}
	return pair, pool, nil
}

// files are a TLS's files as last loaded: each handshake takes them from
// current, which loads them again once any of the three has changed on
// disk (size or modification time), so that a certificate, key or CA
// rotated in place takes effect at the next connection without a restart.
// A set that does not load (a rotation half written, a key that does not
// match its certificate) leaves the last good set in use until it does.
type files struct {
	t TLS

	mu     sync.Mutex
	stamps [3]fileStamp
	cert   *tls.Certificate
	pool   *x509.CertPool
}

type fileStamp struct {
	size    int64
	modTime time.Time
}

// newFiles loads t's files, which must load now.
func newFiles(t TLS) (*files, error) {
	f := &files{t: t}
	f.stamps = f.stat()
	pair, pool, err := t.load()
	if err != nil {
		return nil, err
	}
	f.cert, f.pool = &pair, pool
	return f, nil
}

func (f *files) stat() (st [3]fileStamp) {
	for i, name := range []string{f.t.CertFile, f.t.KeyFile, f.t.CAFile} {
		if fi, err := os.Stat(name); err == nil {
			st[i] = fileStamp{fi.Size(), fi.ModTime()}
		}
	}
	return st
}

// current returns the key pair and the CA pool, loaded again if the files
// changed since they were last read.
func (f *files) current() (*tls.Certificate, *x509.CertPool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st := f.stat(); st != f.stamps {
		if pair, pool, err := f.t.load(); err == nil {
			f.cert, f.pool, f.stamps = &pair, pool, st
		}
	}
	return f.cert, f.pool
}

// verifyPeer verifies the chain a peer presented against the CA pool as
// the files now have it, for usage and, when name is set, for that host.
// It is what crypto/tls would do with ClientCAs or RootCAs, which are
// fixed when a Config is made.
func (f *files) verifyPeer(cs tls.ConnectionState, name string, usage x509.ExtKeyUsage) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the peer presented no certificate")
	}
	_, pool := f.current()
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: inter, DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage},
	})
	return err
}

// NewServer listens on addr and returns a gRPC server for it. A TCP
// address needs t enabled, and the server then speaks mutual TLS; without
// it a TCP address is refused (ErrPlaintextTCP) and only a unix socket
// (0600, see Listen) is served.
func NewServer(addr string, t TLS, opts ...grpc.ServerOption) (*grpc.Server, net.Listener, error) {
	network, _, err := Split(addr)
	if err != nil {
		return nil, nil, err
	}
	secured := t.Enabled() && network == "tcp"
	if secured {
		f, err := newFiles(t)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				cert, _ := f.current()
				return cert, nil
			},
			// A client certificate is required and verified against the
			// CA as the files now have it (verifyPeer), not a pool fixed
			// here: see files.
			ClientAuth: tls.RequireAnyClientCert,
			VerifyConnection: func(cs tls.ConnectionState) error {
				return f.verifyPeer(cs, "", x509.ExtKeyUsageClientAuth)
			},
			MinVersion: tls.VersionTLS13,
		})))
	}
	l, err := listen(addr, secured)
	if err != nil {
		return nil, nil, err
	}
	opts = append([]grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(KeepaliveEnforcement)}, opts...)
	return grpc.NewServer(opts...), l, nil
}

// DialTLS is Dial, speaking mutual TLS when t is enabled and addr is TCP.
// The server's certificate must name the host of addr. Without TLS, a TCP
// address beyond loopback is refused (ErrPlaintextBeyondLoopback): such an
// address may come from outside the configuration (an executor's
// announcement), and plaintext gRPC never leaves the host.
func DialTLS(addr string, t TLS, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	network, target, err := Split(addr)
	if err != nil {
		return nil, err
	}
	if network == "tcp" && !t.Enabled() && !IsLoopback(target) {
		return nil, fmt.Errorf("dial %s: %w", addr, ErrPlaintextBeyondLoopback)
	}
	if t.Enabled() && network == "tcp" {
		f, err := newFiles(t)
		if err != nil {
			return nil, err
		}
		host, _, _ := net.SplitHostPort(target)
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				cert, _ := f.current()
				return cert, nil
			},
			ServerName: host,
			// The server's certificate is verified for host against the
			// CA as the files now have it (verifyPeer), instead of by
			// crypto/tls against a pool fixed here: see files.
			InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				return f.verifyPeer(cs, host, x509.ExtKeyUsageServerAuth)
			},
			MinVersion: tls.VersionTLS13,
		})))
	}
	return Dial(addr, opts...)
}
