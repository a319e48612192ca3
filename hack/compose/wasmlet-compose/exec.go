package main

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func runExec(args []string) error {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	var envFiles listFlag
	fs.Var(&envFiles, "env-file", "file of KEY=VALUE lines added to the environment (repeatable)")
	mint := fs.String("mint", "", "directory to write tls.crt (with its issuer) and tls.key into, issued for this container's address")
	issuer := fs.String("issuer", "", "issuing CA for --mint: PREFIX.crt and PREFIX.key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	argv := fs.Args()
	if len(argv) == 0 {
		return errors.New("want PROGRAM ARGS... after the flags")
	}
	ip, err := containerIP()
	if err != nil {
		return err
	}
	host, err := os.Hostname()
	if err != nil {
		return err
	}
	env := os.Environ()
	for _, f := range envFiles {
		kv, err := readEnvFile(f)
		if err != nil {
			return err
		}
		env = append(env, kv...)
	}
	if *mint != "" {
		if err := mintPair(*mint, *issuer, ip, host); err != nil {
			return err
		}
	}
	r := strings.NewReplacer("{ip}", ip, "{hostname}", host)
	for i := range argv {
		argv[i] = r.Replace(argv[i])
	}
	return syscall.Exec(argv[0], argv, env)
}

// peerEnv names a host on the network whose address {ip} must be: a
// container on several networks (node agents and executors are also on the
// NATS network, which a test cuts) has one address per network, and the
// interfaces' order is not the networks' order.
const peerEnv = "WASMLET_COMPOSE_IP_PEER"

// containerIP is the container's IPv4 address on the network of the host
// named by $WASMLET_COMPOSE_IP_PEER, or with none named, of its first
// interface but loopback: its address on the compose network.
func containerIP() (string, error) {
	var peers []net.IP
	if peer := os.Getenv(peerEnv); peer != "" {
		ips, err := net.LookupIP(peer)
		if err != nil {
			return "", fmt.Errorf("%s=%s: %w", peerEnv, peer, err)
		}
		peers = ips
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return "", err
	}
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback != 0 || i.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := i.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok || n.IP.To4() == nil {
				continue
			}
			if len(peers) == 0 {
				return n.IP.String(), nil
			}
			for _, p := range peers {
				if n.Contains(p) {
					return n.IP.String(), nil
				}
			}
		}
	}
	if len(peers) > 0 {
		return "", fmt.Errorf("no interface on the network of %s=%s (%v)", peerEnv, os.Getenv(peerEnv), peers)
	}
	return "", errors.New("no IPv4 address on any interface but loopback")
}

func readEnvFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.Contains(line, "=") {
			return nil, fmt.Errorf("%s: %q is not KEY=VALUE", path, line)
		}
		out = append(out, line)
	}
	return out, sc.Err()
}

// mintPair issues this container a key pair for its address, for server
// and client use, and writes it with its issuer's certificate, so that a
// peer that trusts only the root verifies the chain.
func mintPair(dir, issuer, ip, host string) error {
	if issuer == "" {
		return errors.New("--mint needs --issuer")
	}
	c, err := testpki.LoadPair(issuer+".crt", issuer+".key")
	if err != nil {
		return fmt.Errorf("issuer %s: %w", issuer, err)
	}
	pair, err := c.Issue(leaf{
		name:    "tls",
		subject: pkix.Name{CommonName: "executor " + host},
		usage:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		hosts:   []string{ip},
	}.spec())
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keyPEM, err := pair.KeyPEM()
	if err != nil {
		return err
	}
	if err := testpki.WriteFile(filepath.Join(dir, "tls.key"), keyPEM, 0o600); err != nil {
		return err
	}
	chain := append(pair.CertPEM(), c.CertPEM()...)
	return testpki.WriteFile(filepath.Join(dir, "tls.crt"), chain, 0o644)
}
