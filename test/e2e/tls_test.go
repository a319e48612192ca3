package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/natsutil/natsserver"
	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

// TestMutualTLSAcrossServices runs the registry cache and an executor as
// services of their own on TCP with mutual TLS (as across hosts, on
// loopback ports here), the executor a client of the registry cache over
// mutual TLS too, and a node agent pointed at both with a client
// certificate: a pod runs to completion and its logs are read. A plaintext
// client and one whose certificate another CA signed are refused by both
// servers.
func TestMutualTLSAcrossServices(t *testing.T) {
	bin := binaries(t)
	reg := sharedRegistry(t)
	pki := t.TempDir()
	ca, err := testpki.NewCA(pki, "wasmlet-ca")
	if err != nil {
		t.Fatal(err)
	}
	other, err := testpki.NewCA(pki, "other-ca")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *testpki.CA, name string, hosts ...string) grpcutil.TLS {
		kp, err := ca.Issue(name, hosts...)
		if err != nil {
			t.Fatal(err)
		}
		return grpcutil.TLS{CertFile: kp.Cert, KeyFile: kp.Key, CAFile: ca.CertFile}
	}
	regTLS := issue(ca, "registry-cache", "127.0.0.1")
	execTLS := issue(ca, "executor", "127.0.0.1") // serves, and is the registry cache's client
	agentTLS := issue(ca, "nodeagent")
	stranger := issue(other, "stranger")
	stranger.CAFile = ca.CertFile // trusts the servers; its own certificate is another CA's
	flags := func(prefix string, t grpcutil.TLS) []string {
		return []string{"--" + prefix + "tls-cert", t.CertFile, "--" + prefix + "tls-key", t.KeyFile, "--" + prefix + "tls-ca", t.CAFile}
	}

	nats, err := natsserver.Start(natsserver.Config{StoreDir: t.TempDir(), Token: "tls-token"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nats.Shutdown)
	env := []string{"WASMLET_NATS_TOKEN=tls-token"}
	registryAddr := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	executorAddr := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	startProcess(t, "registry-cache", filepath.Join(bin, "registry-cache"), nil, append([]string{
		"serve", "--listen", registryAddr, "--dir", t.TempDir(), "--insecure-registry", reg.Host,
	}, flags("", regTLS)...)...)
	startProcess(t, "executor", filepath.Join(bin, "executor"), env, append(append([]string{
		"--listen", executorAddr, "--registry", registryAddr, "--nats", nats.URL, "--state-dir", t.TempDir(), "--mount-root", mountRoot(t),
	}, flags("", execTLS)...), flags("registry-", execTLS)...)...)

	// health checks what a client with tls (nil: plaintext) gets from addr.
	health := func(addr string, tls *grpcutil.TLS, wait time.Duration) error {
		var t2 grpcutil.TLS
		if tls != nil {
			t2 = *tls
		}
		conn, err := grpcutil.DialTLS(addr, t2)
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if tls != nil && wait > 5*time.Second {
			return grpcutil.WaitHealthy(ctx, conn)
		}
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	for name, addr := range map[string]string{"registry cache": registryAddr, "executor": executorAddr} {
		if err := health(addr, &agentTLS, 60*time.Second); err != nil {
			t.Fatalf("%s at %s with the node agent's certificate: %v", name, addr, err)
		}
		if err := health(addr, nil, 5*time.Second); err == nil {
			t.Errorf("%s at %s answered a plaintext client", name, addr)
		} else {
			t.Logf("%s refused a plaintext client: %v", name, err)
		}
		if err := health(addr, &stranger, 5*time.Second); err == nil {
			t.Errorf("%s at %s answered a client whose certificate another CA signed", name, addr)
		} else {
			t.Logf("%s refused a client with another CA's certificate: %v", name, err)
		}
	}

	n := startNode(t, "e2e-tls", env, append([]string{
		"--nats", nats.URL, "--registry-cache", registryAddr, "--executor", "wasmtime=" + executorAddr,
	}, flags("grpc-", agentTLS)...)...)
	ns := namespace(t, "e2e-tls")
	image := push(t, "examples/hello:v1")
	apply(t, ns, wasmPod("tls", n.name, image, v1.RestartPolicyNever))
	waitPhase(t, ns, "tls", v1.PodSucceeded, 2*time.Minute)
	if logs := mustKubectl(t, "logs", "-n", ns, "tls"); !strings.Contains(logs, "running as pod tls") {
		t.Errorf("logs through services reached over mutual TLS:\n%s", logs)
	}
}
