package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
)

// TestSubPathSymlinkCannotReachHost is the kubelet's CVE-2017-1002101 on a
// wasmlet node: a module mounts one emptyDir at /d and its subPath x at
// /x, replaces /d/x by a link climbing to the host's root and fails; at the
// restart /x must not be the host's root.
func TestSubPathSymlinkCannotReachHost(t *testing.T) {
	n := startNode(t, "e2e-subpath", nil)
	ns := namespace(t, "e2e-subpath")
	image := pushFile(t, wasmbuild.Build(t, "hello"), "probe/hello:v1")
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	pod := wasmPod("escape", n.name, image, v1.RestartPolicyOnFailure,
		v1.EnvVar{Name: "LINK", Value: "/d/x=" + strings.Repeat("../", 20)},
		v1.EnvVar{Name: "READ_FILE", Value: "/x/etc/hostname"})
	pod.Spec.Volumes = []v1.Volume{{Name: "d", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{}}}}
	pod.Spec.Containers[0].VolumeMounts = []v1.VolumeMount{{Name: "d", MountPath: "/d"}, {Name: "d", MountPath: "/x", SubPath: "x"}}
	apply(t, ns, pod)
	waitFor(t, 2*time.Minute, "the subPath through a link refused", func() (bool, string) {
		got := jsonpath(t, ns, "escape", "{.status.phase}|{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}")
		return strings.Contains(got, "|CreateContainerConfigError|") && strings.Contains(got, "symbolic link"), got
	})
	logs, _ := kubectl(t, "logs", "-n", ns, "escape", "--previous")
	cur, _ := kubectl(t, "logs", "-n", ns, "escape")
	if !strings.Contains(logs+cur, "linked: /d/x") {
		t.Errorf("the module did not make its link (logs %q %q): the test shows nothing", logs, cur)
	}
	if strings.Contains(logs+cur, "read: "+host) {
		t.Fatalf("the module read the host's /etc/hostname: %q %q", logs, cur)
	}
	if got := jsonpath(t, ns, "escape", "{.status.phase}"); got == string(v1.PodSucceeded) {
		t.Fatalf("phase %s", got)
	}
}

// TestModuleThatCannotRunNeverSucceeds: bytes that are not Wasm, a
// truncated module and a module importing what the executor lacks are
// containers that cannot be created, as the kubelet reports them: Waiting
// with CreateContainerError and the reason, a Warning event, retried; the
// pod never Succeeded (a Job would count it), no 1970 timestamps.
func TestModuleThatCannotRunNeverSucceeds(t *testing.T) {
	n := startNode(t, "e2e-badmod", nil)
	ns := namespace(t, "e2e-badmod")
	dir := t.TempDir()
	good, err := os.ReadFile(filepath.Join(binaries(t), "hello.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	mods := map[string][]byte{
		"notwasm":   []byte("#!/bin/sh\necho this is not wasm\n"),
		"truncated": good[:len(good)/2],
		"import":    mustRead(t, wasmbuild.Wat(t, `(module (import "env" "nope" (func)) (memory (export "memory") 1) (func (export "_start") (call 0)))`)),
	}
	want := map[string]string{"notwasm": "", "truncated": "", "import": "nope"}
	for name, b := range mods {
		p := filepath.Join(dir, name+".wasm")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		apply(t, ns, wasmPod(name, n.name, pushFile(t, p, "bad/"+name+":v1"), v1.RestartPolicyNever))
	}
	for name := range mods {
		waitFor(t, 2*time.Minute, name+" waiting with CreateContainerError", func() (bool, string) {
			got := jsonpath(t, ns, name, "{.status.phase}|{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}")
			return strings.HasPrefix(got, "Pending|CreateContainerError|") && strings.Contains(got, want[name]) && len(got) > len("Pending|CreateContainerError|"), got
		})
	}
	// A retry later, still not a success, and no zero time anywhere.
	time.Sleep(3 * time.Second)
	for name := range mods {
		out := mustKubectl(t, "get", "pod", "-n", ns, name, "-o", "json")
		if strings.Contains(out, "1970-01-01") {
			t.Errorf("%s: a zero timestamp in its status:\n%s", name, out)
		}
		if got := jsonpath(t, ns, name, "{.status.phase} {.status.containerStatuses[0].restartCount}"); !strings.HasPrefix(got, "Pending ") {
			t.Errorf("%s: phase/restarts %q, want Pending", name, got)
		}
		events := mustKubectl(t, "get", "events", "-n", ns, "--field-selector", "involvedObject.name="+name+",type=Warning", "-o", "jsonpath={.items[*].reason}")
		if !strings.Contains(events, "Failed") {
			t.Errorf("%s: Warning events %q, want Failed", name, events)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLogsFollowEndsAndHugeTail: `kubectl logs -f` ends after the last
// line once the container has ended, whether it ended while followed or
// before; a tail of 2^62 lines neither crashes nor exhausts the node agent.
func TestLogsFollowEndsAndHugeTail(t *testing.T) {
	n := startNode(t, "e2e-follow", nil)
	ns := namespace(t, "e2e-follow")
	image := push(t, "examples/hello:v1")
	apply(t, ns, wasmPod("follow", n.name, image, v1.RestartPolicyNever,
		v1.EnvVar{Name: "COUNT", Value: "6"}, v1.EnvVar{Name: "SLEEP", Value: "1s"}))
	waitPhase(t, ns, "follow", v1.PodRunning, 2*time.Minute)

	t0 := time.Now()
	out, err := kubectl(t, "logs", "-f", "-n", ns, "follow")
	if err != nil || !strings.Contains(out, "count 6") {
		t.Fatalf("kubectl logs -f while it runs: %v\n%s", err, out)
	}
	t.Logf("followed to its end in %v", time.Since(t0))
	waitPhase(t, ns, "follow", v1.PodSucceeded, time.Minute)

	t0 = time.Now()
	if out, err := kubectl(t, "logs", "-f", "-n", ns, "follow"); err != nil || !strings.Contains(out, "count 6") {
		t.Fatalf("kubectl logs -f after the end: %v\n%s", err, out)
	}
	if d := time.Since(t0); d > 20*time.Second {
		t.Errorf("kubectl logs -f of an ended container took %v", d)
	}

	out, err = kubectl(t, "logs", "--tail=4611686018427387904", "-n", ns, "follow")
	if err == nil && !strings.Contains(out, "count 6") {
		t.Errorf("kubectl logs --tail=2^62: %q", out)
	}
	t.Logf("kubectl logs --tail=2^62: err %v, %d bytes", err, len(out))
	select {
	case <-n.proc.exited:
		t.Fatal("the node agent exited")
	default:
	}
	if got := strings.TrimSpace(mustKubectl(t, "logs", "--tail=1", "-n", ns, "follow")); got != "count 6" {
		t.Errorf("kubectl logs --tail=1 afterwards = %q", got)
	}
}
