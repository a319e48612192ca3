package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
)

// applyObject sends any object to kubectl apply.
func applyObject(t *testing.T, ns string, obj any) {
	t.Helper()
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := kubectlIn(t, b, "apply", "-n", ns, "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// template is a pod template asking for one wasmlet node.
func template(labels map[string]string, nodeName, image string, policy v1.RestartPolicy, env ...v1.EnvVar) v1.PodTemplateSpec {
	pod := wasmPod("", nodeName, image, policy, env...)
	return v1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: pod.Spec}
}

func int32p(i int32) *int32 { return &i }

func TestDeploymentRollingUpdate(t *testing.T) {
	n := startNode(t, "e2e-deploy", nil)
	ns := namespace(t, "e2e-deploy")
	v1ref := push(t, "examples/hello:v1")
	v2ref := pushModule(t, "hello-v2.wasm", "examples/hello:v2")
	labels := map[string]string{"app": "web"}
	long := []v1.EnvVar{{Name: "COUNT", Value: "1000000"}, {Name: "SLEEP", Value: "200ms"}}
	dep := &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: int32p(3),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: template(labels, n.name, v1ref, v1.RestartPolicyAlways, long...),
		},
	}
	dep.Spec.Template.Spec.TerminationGracePeriodSeconds = new(int64)
	applyObject(t, ns, dep)
	waitRollout(t, ns, "web")

	dep.Spec.Template = template(labels, n.name, v2ref, v1.RestartPolicyAlways, long...)
	dep.Spec.Template.Spec.TerminationGracePeriodSeconds = new(int64)
	applyObject(t, ns, dep)
	waitRollout(t, ns, "web")
	waitFor(t, 2*time.Minute, "only v2 pods, all running", func() (bool, string) {
		out, _ := kubectl(t, "get", "pods", "-n", ns, "-l", "app=web", "-o",
			`jsonpath={range .items[*]}{.spec.containers[0].image} {.status.phase}{"\n"}{end}`)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 {
			return false, out
		}
		for _, l := range lines {
			if l != v2ref+" Running" {
				return false, out
			}
		}
		return true, out
	})
	pods := strings.Fields(mustKubectl(t, "get", "pods", "-n", ns, "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"))
	waitFor(t, 30*time.Second, "v2 output", func() (bool, string) {
		logs, _ := kubectl(t, "logs", "-n", ns, pods[0])
		return strings.Contains(logs, "version v2"), logs
	})
}

func waitRollout(t *testing.T, ns, name string) {
	t.Helper()
	if out, err := kubectl(t, "rollout", "status", "-n", ns, "deployment/"+name, "--timeout=120s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

func TestJobCompletionsAndBackoffLimit(t *testing.T) {
	n := startNode(t, "e2e-job", nil)
	ns := namespace(t, "e2e-job")
	image := push(t, "examples/hello:v1")
	job := func(name string, completions, parallelism, backoff int32, env ...v1.EnvVar) *batchv1.Job {
		return &batchv1.Job{
			TypeMeta:   metav1.TypeMeta{APIVersion: "batch/v1", Kind: "Job"},
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: batchv1.JobSpec{
				Completions: int32p(completions), Parallelism: int32p(parallelism), BackoffLimit: int32p(backoff),
				Template: template(nil, n.name, image, v1.RestartPolicyNever, env...),
			},
		}
	}
	applyObject(t, ns, job("ok", 5, 2, 6))
	applyObject(t, ns, job("fails", 1, 1, 2, v1.EnvVar{Name: "EXIT_CODE", Value: "1"}))
	if out, err := kubectl(t, "wait", "-n", ns, "--for=condition=Complete", "job/ok", "--timeout=180s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := mustKubectl(t, "get", "job", "-n", ns, "ok", "-o", "jsonpath={.status.succeeded}"); got != "5" {
		t.Errorf("succeeded = %s, want 5", got)
	}
	if out, err := kubectl(t, "wait", "-n", ns, "--for=condition=Failed", "job/fails", "--timeout=180s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	reason := mustKubectl(t, "get", "job", "-n", ns, "fails", "-o", `jsonpath={.status.conditions[?(@.type=="Failed")].reason} {.status.failed}`)
	if reason != "BackoffLimitExceeded 3" {
		t.Errorf("failed job = %q, want BackoffLimitExceeded after 3 failed pods", reason)
	}
}

func TestDaemonSetNeedsToleration(t *testing.T) {
	n := startNode(t, "e2e-ds", nil)
	ns := namespace(t, "e2e-ds")
	image := push(t, "examples/hello:v1")
	ds := func(name string, tolerate bool) *appsv1.DaemonSet {
		labels := map[string]string{"ds": name}
		tmpl := template(labels, n.name, image, v1.RestartPolicyAlways, v1.EnvVar{Name: "COUNT", Value: "1000000"}, v1.EnvVar{Name: "SLEEP", Value: "1s"})
		if !tolerate {
			tmpl.Spec.Tolerations = nil
		}
		return &appsv1.DaemonSet{
			TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: tmpl},
		}
	}
	applyObject(t, ns, ds("wasm-agent", true))
	applyObject(t, ns, ds("system-agent", false))
	if out, err := kubectl(t, "rollout", "status", "-n", ns, "daemonset/wasm-agent", "--timeout=120s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := mustKubectl(t, "get", "ds", "-n", ns, "wasm-agent", "-o", "jsonpath={.status.desiredNumberScheduled} {.status.numberReady}"); got != "1 1" {
		t.Errorf("tolerating DaemonSet: desired/ready = %q, want 1 1", got)
	}
	// A DaemonSet without the toleration (kube-proxy, a CNI) never lands here.
	time.Sleep(3 * time.Second)
	if got := mustKubectl(t, "get", "ds", "-n", ns, "system-agent", "-o", "jsonpath={.status.desiredNumberScheduled} {.status.currentNumberScheduled}"); got != "0 0" {
		t.Errorf("non-tolerating DaemonSet: desired/current = %q, want 0 0", got)
	}
}

func TestPrivateRegistryPullSecret(t *testing.T) {
	bin := binaries(t)
	reg := testregistry.New(t, testregistry.Options{Auth: true})
	ref := reg.Host + "/private/hello:v1"
	cmd := exec.Command(filepath.Join(bin, "registry-cache"), "push", "--ca-file", reg.CAFile,
		"--username", reg.Username, "--password-stdin", filepath.Join(bin, "hello.wasm"), ref)
	cmd.Stdin = strings.NewReader(reg.Password)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("push to the private registry: %v\n%s", err, out)
	}
	n := startNode(t, "e2e-private", nil, "--registry-ca-file", reg.CAFile)
	ns := namespace(t, "e2e-private")
	mustKubectl(t, "create", "secret", "docker-registry", "regcred", "-n", ns,
		"--docker-server="+reg.Host, "--docker-username="+reg.Username, "--docker-password="+reg.Password)

	// Without the secret the pull is refused, with a reason that says so.
	// (Checked before the module is in the node's cache: as with the
	// kubelet's IfNotPresent, a module cached for one pod is not pulled
	// again for another.)
	apply(t, ns, wasmPod("denied", n.name, ref, v1.RestartPolicyNever))
	waitFor(t, time.Minute, "the pod without the secret refused", func() (bool, string) {
		got := jsonpath(t, ns, "denied", "{.status.phase}|{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}")
		return strings.HasPrefix(got, "Pending|") && strings.Contains(strings.ToLower(got), "unauthorized"), got
	})
	allowed := wasmPod("allowed", n.name, ref, v1.RestartPolicyNever)
	allowed.Spec.ImagePullSecrets = []v1.LocalObjectReference{{Name: "regcred"}}
	apply(t, ns, allowed)
	waitPhase(t, ns, "allowed", v1.PodSucceeded, 2*time.Minute)
	if strings.Contains(mustKubectl(t, "get", "events", "-n", ns, "-o", "jsonpath={.items[*].message}"), reg.Password) {
		t.Error("an event shows the registry password")
	}
}

// TestVolumeRefreshAndWorkingDir: a config map's new data reaches a running
// pod's volume, and workingDir is where relative paths resolve.
func TestVolumeRefreshAndWorkingDir(t *testing.T) {
	state := t.TempDir()
	n := startNode(t, "e2e-refresh", nil, "--state-dir", state, "--volume-refresh", "1s")
	ns := namespace(t, "e2e-refresh")
	image := push(t, "examples/hello:v1")
	mustKubectl(t, "create", "configmap", "cfg", "-n", ns, "--from-literal=greeting.txt=one")
	pod := wasmPod("reader", n.name, image, v1.RestartPolicyAlways,
		v1.EnvVar{Name: "WRITE", Value: "relative.txt=written by a relative path"},
		v1.EnvVar{Name: "CAT", Value: "/work/relative.txt,/cfg/greeting.txt"},
		v1.EnvVar{Name: "COUNT", Value: "100000"}, v1.EnvVar{Name: "SLEEP", Value: "100ms"})
	pod.Spec.Volumes = []v1.Volume{
		{Name: "work", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{}}},
		{Name: "cfg", VolumeSource: v1.VolumeSource{ConfigMap: &v1.ConfigMapVolumeSource{LocalObjectReference: v1.LocalObjectReference{Name: "cfg"}}}},
	}
	pod.Spec.Containers[0].WorkingDir = "/work"
	pod.Spec.Containers[0].VolumeMounts = []v1.VolumeMount{{Name: "work", MountPath: "/work"}, {Name: "cfg", MountPath: "/cfg", ReadOnly: true}}
	apply(t, ns, pod)
	waitPhase(t, ns, "reader", v1.PodRunning, 2*time.Minute)
	waitFor(t, 30*time.Second, "the module's output", func() (bool, string) {
		logs, _ := kubectl(t, "logs", "-n", ns, "reader")
		return strings.Contains(logs, "/work/relative.txt: written by a relative path") && strings.Contains(logs, "/cfg/greeting.txt: one"), logs
	})

	uid := jsonpath(t, ns, "reader", "{.metadata.uid}")
	file := filepath.Join(state, "pods", uid, "volumes", "cfg", "greeting.txt")
	if out, err := kubectlIn(t, []byte(`{"data":{"greeting.txt":"two"}}`), "patch", "configmap", "cfg", "-n", ns, "--type=merge", "--patch-file=/dev/stdin"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	waitFor(t, 30*time.Second, "the new data in the running pod's volume", func() (bool, string) {
		b, err := os.ReadFile(file)
		return err == nil && string(b) == "two", fmt.Sprint(string(b), err)
	})
}

// TestEmptyDirSizeLimitEvicts: a module that writes past its emptyDir's
// sizeLimit is evicted, as the kubelet does.
func TestEmptyDirSizeLimitEvicts(t *testing.T) {
	n := startNode(t, "e2e-sizelimit", nil, "--volume-refresh", "1s")
	ns := namespace(t, "e2e-sizelimit")
	image := push(t, "examples/hello:v1")
	pod := wasmPod("filler", n.name, image, v1.RestartPolicyNever,
		v1.EnvVar{Name: "WRITE", Value: "/scratch/big=" + strings.Repeat("x", 4096)},
		v1.EnvVar{Name: "COUNT", Value: "100000"}, v1.EnvVar{Name: "SLEEP", Value: "100ms"})
	limit := resource.MustParse("1Ki")
	pod.Spec.Volumes = []v1.Volume{{Name: "scratch", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{SizeLimit: &limit}}}}
	pod.Spec.Containers[0].VolumeMounts = []v1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}}
	apply(t, ns, pod)
	waitPhase(t, ns, "filler", v1.PodFailed, 2*time.Minute)
	if got := jsonpath(t, ns, "filler", "{.status.reason}: {.status.message}"); !strings.HasPrefix(got, "Evicted: ") || !strings.Contains(got, `"scratch"`) {
		t.Errorf("status = %q, want Evicted naming the volume", got)
	}
}
