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
	files, err := listenIn(podworker.Attachment{NetNS: ns}, ls)
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
	_, err = listenIn(podworker.Attachment{NetNS: ns}, ls[:1])
	if err == nil || !strings.Contains(err.Error(), "port 18080 (http) is already in use in the pod") {
		t.Errorf("a port taken in the pod: %v", err)
	}
	if _, err := listenIn(podworker.Attachment{NetNS: ns}, []instances.Listener{{Port: 53, Protocol: instances.ProtocolUDP}}); err == nil || !strings.Contains(err.Error(), "only TCP") {
		t.Errorf("a UDP port: %v", err)
	}
}

// A pod without an address of its own (no pod network, or hostNetwork)
// has its ports opened on the node's address, and only there; a port
// another pod or process holds is refused, saying where and why.
func TestListenOnNodeAddress(t *testing.T) {
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := int32(free.Addr().(*net.TCPAddr).Port)
	free.Close()
	att := podworker.Attachment{IPs: []string{"127.0.0.1"}}
	files, err := listenIn(att, []instances.Listener{{Name: "http", Port: port}})
	if err != nil {
		t.Fatal(err)
	}
	defer files[0].File.Close()
	l, err := net.FileListener(files[0].File)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := l.Addr().String(); got != fmt.Sprintf("127.0.0.1:%d", port) {
		t.Errorf("listening on %s, want the node's address only", got)
	}
	_, err = listenIn(att, []instances.Listener{{Name: "web", Port: port}})
	if want := fmt.Sprintf("port %d (web) is already in use on the node's address 127.0.0.1 (the pod has no address of its own", port); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a port taken on the node's address: %v; want %q", err, want)
	}
	if _, err := listenIn(podworker.Attachment{}, []instances.Listener{{Port: port}}); err == nil {
		t.Error("no namespace and no address: no error")
	}
}

// kubectl port-forward reaches a pod's port at the pod's own address, or
// at the node's for the ports a pod without one declares; a pod that has
// neither is refused with a 400 saying why.
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
	worker := func(podIP string, ports ...int32) *podworker.Worker {
		c := v1.Container{Name: "c"}
		for _, p := range ports {
			c.Ports = append(c.Ports, v1.ContainerPort{ContainerPort: p})
		}
		return podworker.New(podworker.Deps{Log: slog.New(slog.DiscardHandler)}, &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "u"},
			Spec:       v1.PodSpec{Containers: []v1.Container{c}},
			Status:     v1.PodStatus{PodIP: podIP},
		})
	}
	p := &Provider{cfg: Config{NodeIP: "10.0.0.1"}, pods: map[string]*entry{}}

	p.pods["ns/p"] = &entry{uid: "u", worker: worker("10.0.0.1")}
	if _, err := p.Forwardable(context.Background(), "ns", "p"); !errdefs.IsInvalidInput(err) || !strings.Contains(err.Error(), "has no address of its own and declares no containerPorts") {
		t.Errorf("a pod on the node's address without ports: %v; want InvalidInput saying it serves no port", err)
	}
	if _, err := p.Forwardable(context.Background(), "ns", "other"); !errdefs.IsNotFound(err) {
		t.Errorf("an unknown pod: %v; want NotFound", err)
	}

	// On the node's address (no pod network), only the declared ports.
	onNode := &Provider{cfg: Config{NodeIP: "127.0.0.1"}, pods: map[string]*entry{"ns/p": {uid: "u", worker: worker("127.0.0.1", int32(port))}}}
	if uid, err := onNode.Forwardable(context.Background(), "ns", "p"); err != nil || uid != "u" {
		t.Fatalf("a pod serving a port on the node's address: %q, %v", uid, err)
	}
	_, undeclared := net.Pipe()
	if err := onNode.Forward(context.Background(), "ns", "p", int32(port+1), undeclared); err == nil || !strings.Contains(err.Error(), "does not declare port") {
		t.Errorf("forward to a port the pod does not declare, on the node's address: %v", err)
	}
	forwardEcho(t, onNode, port)

	p.pods["ns/p"] = &entry{uid: "u", worker: worker("127.0.0.1")}
	if uid, err := p.Forwardable(context.Background(), "ns", "p"); err != nil || uid != "u" {
		t.Fatalf("a pod with its own address: %q, %v", uid, err)
	}
	forwardEcho(t, p, port)
}

// forwardEcho forwards to pod ns/p's port, where an echo server answers.
func forwardEcho(t *testing.T, p *Provider, port int) {
	t.Helper()
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
