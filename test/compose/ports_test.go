package compose

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

const serverRef = "registry:5000/examples/httpserver:v1"

// servePort runs the example HTTP server as a pod with a containerPort on
// the wazero node, whose executor runs in a container of its own: the
// node agent opens the port on the node's address (the stack has no pod
// network) and hands the listener over on the executor's announced
// listener socket, in the sockets volume they share. It is reached as a
// user of the stack would: at <node IP>:8080 from another container on
// the stack's network, and with kubectl port-forward from the host.
func (s *stack) servePort() {
	s.t.Helper()
	s.step("a pod serving a containerPort on wasmlet-2 (executor-wazero in its own container)")
	wasm := filepath.Join(s.root, "bin", "compose", "wasm", "httpserver.wasm")
	if _, err := os.Stat(wasm); err != nil {
		s.t.Fatalf("%v: run make compose-images", err)
	}
	s.t.Logf("pushed %s", strings.TrimSpace(s.push(wasm, serverRef)))
	start := time.Now()
	s.kubectlIn(serverManifest("web-wazero", "wazero"), "apply", "-f", "-")
	s.waitFor(3*time.Minute, "web-wazero Ready", func() bool {
		return s.kubectlQuiet("get", "pod", "web-wazero", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`) == "True"
	})
	s.t.Logf("TIMING port: web-wazero Ready %.1fs after it was applied", time.Since(start).Seconds())
	ips := strings.Fields(s.kubectl("get", "pod", "web-wazero", "-o", "jsonpath={.spec.nodeName} {.status.podIP} {.status.hostIP}"))
	if len(ips) != 3 || ips[0] != "wasmlet-2" || ips[1] != ips[2] {
		s.t.Fatalf("web-wazero node, podIP, hostIP = %v: want wasmlet-2, on the node's address", ips)
	}
	want := "Hello from WebAssembly, pod web-wazero!"

	// Over the node's address, from another node's container.
	url := fmt.Sprintf("http://%s:8080/", ips[1])
	if out, err := s.try(nil, "docker", "exec", s.one("nodeagent-1"), "/bin/wasmlet-compose", "probe", "http", url); err != nil {
		s.t.Errorf("GET %s from nodeagent-1's container: %v %s", url, err, out)
	} else {
		s.t.Logf("GET %s from nodeagent-1's container: 200", url)
	}

	// With kubectl port-forward, from the host.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	local := freePort(s.t)
	pf := exec.CommandContext(ctx, "kubectl", "--kubeconfig", s.kubeconfig, "port-forward", "pod/web-wazero", fmt.Sprintf("%d:http", local))
	pf.Env = s.env
	stdout, err := pf.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	var pfErr strings.Builder
	pf.Stderr = &pfErr
	if err := pf.Start(); err != nil {
		s.t.Fatal(err)
	}
	defer func() { cancel(); _ = pf.Wait() }()
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if !strings.HasPrefix(line, "Forwarding from") {
		s.t.Errorf("kubectl port-forward pod/web-wazero %d:http: %q %s", local, line, pfErr.String())
	} else if body, err := get(ctx, fmt.Sprintf("http://127.0.0.1:%d/", local)); err != nil || !strings.Contains(body, want) {
		s.t.Errorf("GET / through kubectl port-forward: %q %v (%s), want %q", body, err, pfErr.String(), want)
	} else {
		s.t.Logf("GET / through kubectl port-forward: %q", strings.TrimSpace(body))
	}
	s.kubectl("delete", "pod", "web-wazero", "--wait=true", "--timeout=60s")
}

func get(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

// serverManifest is examples/httpserver/pod.yaml on a RuntimeClass.
func serverManifest(name, runtimeClass string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  runtimeClassName: %s
  containers:
    - name: httpserver
      image: %s
      ports:
        - {name: http, containerPort: 8080, protocol: TCP}
      readinessProbe:
        httpGet: {path: /healthz, port: http}
        periodSeconds: 2
      env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
`, name, runtimeClass, serverRef))
}
