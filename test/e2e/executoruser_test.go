package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
)

// TestSupervisedExecutorUnprivileged: a root node agent runs its
// supervised executor as 65532:65532 by default (--executor-user), as the
// kernel and the executor's GetInfo both say, and a pod still writes its
// emptyDir (also through a subPath), reads a 0400 secret, and its
// directories go with it.
func TestSupervisedExecutorUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the node agent drops its executor to another user only as root")
	}
	state := t.TempDir()
	n := startNode(t, "e2e-unpriv", nil, "--state-dir", state)

	// The kernel's word: the node agent's child executor.
	var child int
	waitFor(t, 30*time.Second, "the supervised executor process", func() (bool, string) {
		tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(n.proc.cmd.Process.Pid) + "/task/*/children")
		for _, f := range tasks {
			b, _ := os.ReadFile(f)
			for _, pid := range strings.Fields(string(b)) {
				if exe, _ := os.Readlink("/proc/" + pid + "/exe"); filepath.Base(exe) == "executor" {
					child, _ = strconv.Atoi(pid)
					return true, ""
				}
			}
		}
		return false, "no executor child"
	})
	status, err := os.ReadFile("/proc/" + strconv.Itoa(child) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	for k, want := range map[string]string{"Uid": "65532 65532 65532 65532", "Gid": "65532 65532 65532 65532", "Groups": ""} {
		if fields[k] != want {
			t.Errorf("executor pid %d: %s %q, want %q", child, k, fields[k], want)
		}
	}
	// The executor's word, as the node agent reads it.
	conn, err := grpcutil.Dial("unix://" + filepath.Join(state, "sockets", "executor", "executor.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := executorv1.NewExecutorServiceClient(conn).GetInfo(ctx, &executorv1.GetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if c := info.GetConfinement(); c.GetUid() != 65532 || c.GetGid() != 65532 {
		t.Errorf("GetInfo confinement: uid %d gid %d (%s); want 65532", c.GetUid(), c.GetGid(), c.GetDescription())
	}
	t.Logf("executor confinement: %s", info.GetConfinement().GetDescription())
	for _, d := range []string{state, filepath.Join(state, "sockets"), filepath.Join(state, "pods")} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm()&0o007 != 0 {
			t.Errorf("%s: mode %v, %v; want nothing for others", d, fi.Mode(), err)
		}
	}

	ns := namespace(t, "e2e-unpriv")
	image := push(t, "examples/hello:v1")
	mustKubectl(t, "create", "secret", "generic", "sec", "-n", ns, "--from-literal=token=s3cret")
	pod := wasmPod("unpriv", n.name, image, v1.RestartPolicyNever,
		v1.EnvVar{Name: "WRITE", Value: "/sub/file=written unprivileged"},
		v1.EnvVar{Name: "CAT", Value: "/sec/token,/sub/file,/work/deep/er/file"})
	secretMode := int32(0o400)
	pod.Spec.Volumes = []v1.Volume{
		{Name: "work", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{}}},
		{Name: "sec", VolumeSource: v1.VolumeSource{Secret: &v1.SecretVolumeSource{SecretName: "sec", DefaultMode: &secretMode}}},
	}
	pod.Spec.Containers[0].VolumeMounts = []v1.VolumeMount{
		{Name: "work", MountPath: "/work"},
		{Name: "work", MountPath: "/sub", SubPath: "deep/er"},
		{Name: "sec", MountPath: "/sec"},
	}
	apply(t, ns, pod)
	waitPhase(t, ns, "unpriv", v1.PodSucceeded, 2*time.Minute)
	logs := mustKubectl(t, "logs", "-n", ns, "unpriv")
	for _, want := range []string{"/sec/token: s3cret", "/sub/file: written unprivileged", "/work/deep/er/file: written unprivileged"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	uid := jsonpath(t, ns, "unpriv", "{.metadata.uid}")
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(state, "pods", uid, "volumes", "work", "deep", "er", "file"), &st); err != nil || st.Uid != 65532 {
		t.Errorf("the module's file: uid %d, %v; want 65532", st.Uid, err)
	}
	mustKubectl(t, "delete", "pod", "-n", ns, "unpriv", "--wait=true")
	waitFor(t, time.Minute, "the pod's volumes removed", func() (bool, string) {
		_, err := os.Stat(filepath.Join(state, "pods", uid, "volumes"))
		return os.IsNotExist(err), "still there"
	})
}
