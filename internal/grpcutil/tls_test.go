package grpcutil

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

// TestMutualTLS serves the health service with mutual TLS on loopback TCP
// and checks who gets in: a client with a certificate from the servers'
// CA does; one without a certificate, one with another CA's certificate,
// and one that does not trust the server do not.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := testpki.NewCA(dir, "wasmlet-ca")
	if err != nil {
		t.Fatal(err)
	}
	other, err := testpki.NewCA(dir, "other-ca")
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.Issue("server", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue("client")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.Issue("stranger")
	if err != nil {
		t.Fatal(err)
	}

	addr := serveHealth(t, TLS{CertFile: server.Cert, KeyFile: server.Key, CAFile: ca.CertFile})
	if err := checkHealth(t, addr, TLS{CertFile: client.Cert, KeyFile: client.Key, CAFile: ca.CertFile}); err != nil {
		t.Errorf("a client with a certificate from the CA was refused: %v", err)
	}
	for _, c := range []struct {
		name string
		tls  TLS
	}{
		{"plaintext client", TLS{}},
		{"client with another CA's certificate", TLS{CertFile: stranger.Cert, KeyFile: stranger.Key, CAFile: ca.CertFile}},
		{"client that does not trust the server's CA", TLS{CertFile: client.Cert, KeyFile: client.Key, CAFile: other.CertFile}},
	} {
		if err := checkHealth(t, addr, c.tls); err == nil {
			t.Errorf("%s: got in", c.name)
		}
	}
}

// serveHealth serves the health service on loopback TCP with t until the
// test ends, and returns its address.
func serveHealth(t *testing.T, tlsCfg TLS) string {
	t.Helper()
	srv, l, err := NewServer("tcp://127.0.0.1:0", tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, srv, l, time.Second) }()
	t.Cleanup(func() { cancel(); <-done })
	return Address(l)
}

// checkHealth calls the health service at addr as a client with tlsCfg
// (the zero TLS: plaintext, on loopback).
func checkHealth(t *testing.T, addr string, tlsCfg TLS) error {
	t.Helper()
	conn, err := DialTLS(addr, tlsCfg)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// TestServerRefusesPlaintextTCP: a gRPC server does not listen on TCP
// without mutual TLS, on loopback or beyond; with it, any address is
// allowed.
func TestServerRefusesPlaintextTCP(t *testing.T) {
	// 192.0.2.1 (TEST-NET-1) is not on this host: nothing is bound either way.
	for _, addr := range []string{"tcp://127.0.0.1:0", "localhost:0", "tcp://[::1]:0", "tcp://192.0.2.1:0"} {
		if _, _, err := NewServer(addr, TLS{}); !errors.Is(err, ErrPlaintextTCP) {
			t.Errorf("NewServer(%s) without TLS: %v, want ErrPlaintextTCP", addr, err)
		}
		if _, err := Listen(addr); !errors.Is(err, ErrPlaintextTCP) {
			t.Errorf("Listen(%s): %v, want ErrPlaintextTCP", addr, err)
		}
	}
	if !strings.Contains(ErrPlaintextTCP.Error(), "unix socket") || !strings.Contains(ErrPlaintextTCP.Error(), "--tls-cert") {
		t.Errorf("the refusal does not say what to do instead: %v", ErrPlaintextTCP)
	}
	dir := t.TempDir()
	ca, err := testpki.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	kp, err := ca.Issue("server", "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = NewServer("tcp://192.0.2.1:0", TLS{CertFile: kp.Cert, KeyFile: kp.Key, CAFile: ca.CertFile})
	if err == nil || errors.Is(err, ErrPlaintextTCP) {
		t.Errorf("with TLS: %v, want the address allowed (and the bind to fail: it is not this host's)", err)
	}
	if _, _, err := NewServer("tcp://127.0.0.1:0", TLS{CertFile: kp.Cert}); err == nil || !strings.Contains(err.Error(), "all three") {
		t.Errorf("a certificate without key and CA: %v, want an error naming the three flags", err)
	}
}

// TestUnixSocketMode: a server's unix socket is 0600 whatever the umask
// gives a new socket, a stale one is replaced, nothing else is left in its
// directory, and Close removes it.
func TestUnixSocketMode(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	srv, l, err := NewServer("unix://"+path, TLS{})
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket of mode 0600", fi.Mode())
	}
	if got := Address(l); got != "unix://"+path {
		t.Errorf("Address = %s, want unix://%s", got, path)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, srv, l, time.Second) }()
	if err := checkHealth(t, "unix://"+path, TLS{}); err != nil {
		t.Errorf("health over the socket: %v", err)
	}
	cancel()
	<-done
	if es, _ := os.ReadDir(dir); len(es) != 0 {
		t.Errorf("left in the socket's directory after Close: %v", es)
	}
}

// TestCheckFlags: what each service's flag validation refuses, and that the
// message names the flags to give.
func TestCheckFlags(t *testing.T) {
	on := TLS{CertFile: "c.pem", KeyFile: "k.pem", CAFile: "ca.pem"}
	for _, c := range []struct {
		name, addr string
		tls        TLS
		want       string // "" for no error; else a substring of it
	}{
		{"loopback without TLS", "tcp://127.0.0.1:7000", TLS{}, ""},
		{"localhost without TLS", "localhost:7000", TLS{}, ""},
		{"unix without TLS", "unix:///run/x.sock", TLS{}, ""},
		{"beyond loopback with TLS", "tcp://10.0.0.5:7000", on, ""},
		{"beyond loopback without TLS", "tcp://10.0.0.5:7000", TLS{}, "give --registry-tls-cert, --registry-tls-key and --registry-tls-ca"},
		{"all interfaces without TLS", "0.0.0.0:7000", TLS{}, "beyond loopback"},
		{"a certificate alone", "tcp://10.0.0.5:7000", TLS{CertFile: "c.pem"}, "give all three"},
		{"TLS for a unix socket", "unix:///run/x.sock", on, "drop them"},
	} {
		err := c.tls.CheckFlags("registry", c.addr, "registry-")
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v, want accepted", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
	// A server's address: TCP only with mutual TLS, on loopback too.
	for _, c := range []struct {
		name, addr string
		tls        TLS
		want       string
	}{
		{"loopback without TLS", "tcp://127.0.0.1:7000", TLS{}, "even on loopback"},
		{"localhost without TLS", "localhost:7000", TLS{}, "even on loopback"},
		{"beyond loopback without TLS", "tcp://10.0.0.5:7000", TLS{}, "give --tls-cert, --tls-key and --tls-ca"},
		{"loopback with TLS", "tcp://127.0.0.1:7000", on, ""},
		{"beyond loopback with TLS", "tcp://10.0.0.5:7000", on, ""},
		{"unix without TLS", "unix:///run/x.sock", TLS{}, ""},
		{"TLS for a unix socket", "unix:///run/x.sock", on, "drop them"},
		{"a certificate alone", "tcp://127.0.0.1:7000", TLS{CertFile: "c.pem"}, "give all three"},
	} {
		err := c.tls.CheckServerFlags("listen", c.addr, "")
		switch {
		case c.want == "" && err != nil:
			t.Errorf("server %s: %v, want accepted", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("server %s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

// TestDialTLSRefusesPlaintextBeyondLoopback: an address that did not come
// through flag validation (an announcement) is not dialled in plaintext.
func TestDialTLSRefusesPlaintextBeyondLoopback(t *testing.T) {
	if _, err := DialTLS("tcp://192.0.2.1:7000", TLS{}); !errors.Is(err, ErrPlaintextBeyondLoopback) {
		t.Errorf("DialTLS beyond loopback without TLS: %v, want ErrPlaintextBeyondLoopback", err)
	}
	conn, err := DialTLS("tcp://127.0.0.1:7000", TLS{})
	if err != nil {
		t.Fatalf("DialTLS on loopback without TLS: %v", err)
	}
	conn.Close()
}

// TestTLSFilesReloaded rotates a server's key pair and CA in place (to
// another CA's) and checks that the next connections follow the files:
// a client of the new CA gets in, one of the old does not; then a broken
// rotation (a key that is not PEM) leaves the last good set in use.
func TestTLSFilesReloaded(t *testing.T) {
	dir := t.TempDir()
	oldCA, err := testpki.NewCA(dir, "old-ca")
	if err != nil {
		t.Fatal(err)
	}
	newCA, err := testpki.NewCA(dir, "new-ca")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *testpki.CA, name string, hosts ...string) testpki.KeyPair {
		kp, err := ca.Issue(name, hosts...)
		if err != nil {
			t.Fatal(err)
		}
		return kp
	}
	oldServer, newServer := issue(oldCA, "old-server", "127.0.0.1"), issue(newCA, "new-server", "127.0.0.1")
	oldClient, newClient := issue(oldCA, "old-client"), issue(newCA, "new-client")

	// The server's files, at paths of their own that rotation rewrites.
	srvDir := filepath.Join(dir, "server")
	if err := os.Mkdir(srvDir, 0o700); err != nil {
		t.Fatal(err)
	}
	srvTLS := TLS{CertFile: filepath.Join(srvDir, "tls.crt"), KeyFile: filepath.Join(srvDir, "tls.key"), CAFile: filepath.Join(srvDir, "ca.crt")}
	step := 0
	install := func(pairs ...[2]string) { // [from, to]
		step++
		for _, p := range pairs {
			b, err := os.ReadFile(p[0])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p[1], b, 0o600); err != nil {
				t.Fatal(err)
			}
			// A modification time of its own per step, whatever the
			// file system's timestamp granularity.
			at := time.Now().Add(time.Duration(step) * time.Minute)
			if err := os.Chtimes(p[1], at, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	install([2]string{oldServer.Cert, srvTLS.CertFile}, [2]string{oldServer.Key, srvTLS.KeyFile}, [2]string{oldCA.CertFile, srvTLS.CAFile})

	addr := serveHealth(t, srvTLS)
	check := func(c TLS) error { return checkHealth(t, addr, c) }
	oldSide := TLS{CertFile: oldClient.Cert, KeyFile: oldClient.Key, CAFile: oldCA.CertFile}
	newSide := TLS{CertFile: newClient.Cert, KeyFile: newClient.Key, CAFile: newCA.CertFile}
	if err := check(oldSide); err != nil {
		t.Fatalf("before rotation, a client of the old CA was refused: %v", err)
	}
	if check(newSide) == nil {
		t.Fatal("before rotation, a client of the new CA got in")
	}

	install([2]string{newServer.Cert, srvTLS.CertFile}, [2]string{newServer.Key, srvTLS.KeyFile}, [2]string{newCA.CertFile, srvTLS.CAFile})
	if err := check(newSide); err != nil {
		t.Fatalf("after rotation, a client of the new CA was refused: %v", err)
	}
	if check(oldSide) == nil {
		t.Fatal("after rotation, a client of the old CA got in")
	}

	garbage := filepath.Join(dir, "garbage.key")
	if err := os.WriteFile(garbage, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	install([2]string{garbage, srvTLS.KeyFile})
	if err := check(newSide); err != nil {
		t.Fatalf("a broken rotation was taken up (the last good key pair should stay): %v", err)
	}
}
