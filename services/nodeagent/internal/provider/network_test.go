package provider

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podnet"
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
