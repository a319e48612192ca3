package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
)

// runProbe is a container's healthcheck: it exits 0 when the thing named
// answers as healthy within --timeout.
//
//	probe http  URL                              # 200
//	probe https URL --ca F [--cert F --key F]    # 200, server verified
//	probe grpc  ADDR --cert F --key F --ca F     # standard health service SERVING ({ip} expanded)
//	probe node  --kubeconfig F --node NAME       # the Node's Ready condition is True
func runProbe(args []string) error {
	if len(args) == 0 {
		return errors.New("want http, https, grpc or node")
	}
	kind := args[0]
	fs := flag.NewFlagSet("probe "+kind, flag.ContinueOnError)
	timeout := fs.Duration("timeout", 5*time.Second, "give up after")
	var t grpcutil.TLS
	fs.StringVar(&t.CertFile, "cert", "", "client certificate")
	fs.StringVar(&t.KeyFile, "key", "", "client key")
	fs.StringVar(&t.CAFile, "ca", "", "CA that signs the server")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig (node)")
	node := fs.String("node", "", "Node name (node)")
	// The target comes first (probe http URL --flags): flag stops at it.
	rest, target := args[1:], ""
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		target, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return err
	}
	if target == "" && fs.NArg() == 1 {
		target = fs.Arg(0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	switch kind {
	case "http", "https":
		if target == "" {
			return errors.New("want a URL")
		}
		return probeHTTP(ctx, target, t)
	case "grpc":
		if target == "" {
			return errors.New("want an address")
		}
		addr := target
		if strings.Contains(addr, "{ip}") {
			ip, err := containerIP()
			if err != nil {
				return err
			}
			addr = strings.ReplaceAll(addr, "{ip}", ip)
		}
		return probeGRPC(ctx, addr, t)
	case "node":
		return probeNode(ctx, *kubeconfig, *node)
	}
	return fmt.Errorf("unknown probe %q", kind)
}

func probeHTTP(ctx context.Context, url string, t grpcutil.TLS) error {
	tr := &http.Transport{}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		cfg := &tls.Config{RootCAs: pool}
		if t.CertFile != "" {
			pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
			if err != nil {
				return err
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		tr.TLSClientConfig = cfg
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, body)
	}
	return nil
}

func probeGRPC(ctx context.Context, addr string, t grpcutil.TLS) error {
	conn, err := grpcutil.DialTLS(addr, t)
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := grpc_health_v1.NewHealthClient(conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	if resp.Status != grpc_health_v1.HealthCheckResponse_SERVING {
		return fmt.Errorf("%s: %s", addr, resp.Status)
	}
	return nil
}

func probeNode(ctx context.Context, kubeconfig, name string) error {
	c, err := newKubeClient(kubeconfig)
	if err != nil {
		return err
	}
	var n struct {
		Status struct {
			Conditions []struct{ Type, Status, Message string }
		}
	}
	if err := c.do(ctx, http.MethodGet, "/api/v1/nodes/"+name, nil, &n); err != nil {
		return err
	}
	for _, c := range n.Status.Conditions {
		if c.Type == "Ready" {
			if c.Status == "True" {
				return nil
			}
			return fmt.Errorf("node %s: Ready=%s: %s", name, c.Status, c.Message)
		}
	}
	return fmt.Errorf("node %s: no Ready condition yet", name)
}
