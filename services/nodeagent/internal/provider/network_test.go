package provider

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podnet"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podworker"
)

// The listeners a pod's ports become are opened inside the pod's network
// namespace (reachable there, not on the host's loopback); a port taken
// in the pod is refused naming it.
func TestListenInPodNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("WASMLET_REQUIRE_CLUSTER") != "" {
			t.Fatal("needs root to make a network namespace")
		}
		t.Skip("needs root to make a network namespace")
	}
	name := fmt.Sprintf("wlt-prov-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", name).Run() })
	ns := "/var/run/netns/" + name
	if out, err := exec.Command("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	ls := []instances.Listener{{Name: "http", Port: 18080}, {Port: 18081}}
	files, err := listenIn(ns, ls)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, h := range files {
			h.File.Close()
		}
	}()
	if len(files) != 2 || files[0].Name != "http" || files[1].Name != "port-18081" {
		t.Fatalf("handed %+v", files)
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:18080", time.Second); err == nil {
		c.Close()
		t.Error("the pod's port answers on the host's loopback")
	}
	err = podnet.InNamespace(ns, func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.1:18080", time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		t.Errorf("the pod's port does not answer inside its namespace: %v", err)
	}
	_, err = listenIn(ns, ls[:1])
	if err == nil || !strings.Contains(err.Error(), "port 18080 (http) is already in use in the pod") {
		t.Errorf("a port taken in the pod: %v", err)
	}
	if _, err := listenIn(ns, []instances.Listener{{Port: 53, Protocol: instances.ProtocolUDP}}); err == nil || !strings.Contains(err.Error(), "only TCP") {
		t.Errorf("a UDP port: %v", err)
	}
}

// kubectl port-forward reaches a pod's port at the pod's own address; a
// pod without one (it declares no ports, or the node has no pod network)
// is refused with a 400 saying why.
func TestPortForwardNeedsPodAddress(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	port := echo.Addr().(*net.TCPAddr).Port
	worker := func(podIP string) *podworker.Worker {
		return podworker.New(podworker.Deps{Log: slog.New(slog.DiscardHandler)}, &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "u"},
			Status:     v1.PodStatus{PodIP: podIP},
		})
	}
	p := &Provider{cfg: Config{NodeIP: "10.0.0.1"}, pods: map[string]*entry{}}

	p.pods["ns/p"] = &entry{uid: "u", worker: worker("10.0.0.1")}
	if _, err := p.Forwardable(context.Background(), "ns", "p"); !errdefs.IsInvalidInput(err) || !strings.Contains(err.Error(), "has no address of its own") {
		t.Errorf("a pod on the node's address: %v; want InvalidInput saying it has no address of its own", err)
	}
	if _, err := p.Forwardable(context.Background(), "ns", "other"); !errdefs.IsNotFound(err) {
		t.Errorf("an unknown pod: %v; want NotFound", err)
	}

	p.pods["ns/p"] = &entry{uid: "u", worker: worker("127.0.0.1")}
	if uid, err := p.Forwardable(context.Background(), "ns", "p"); err != nil || uid != "u" {
		t.Fatalf("a pod with its own address: %q, %v", uid, err)
	}
	client, stream := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- p.Forward(context.Background(), "ns", "p", int32(port), stream) }()
	client.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "ping" {
		t.Fatalf("through the forward: %q, %v", got, err)
	}
	client.Close()
	if err := <-done; err != nil {
		t.Errorf("Forward: %v", err)
	}
}
