package podworker

import (
	"os"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

func TestInstanceSpec(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(dir+"/data", 0o750); err != nil {
		t.Fatal(err)
	}
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u1"},
		Spec: v1.PodSpec{Volumes: []v1.Volume{
			{Name: "data", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{}}},
			{Name: "conf", VolumeSource: v1.VolumeSource{ConfigMap: &v1.ConfigMapVolumeSource{}}},
		}},
	}
	c := &v1.Container{
		Name: "app", Image: "reg/app:1", Args: []string{"-v"}, WorkingDir: "/data",
		VolumeMounts: []v1.VolumeMount{
			{Name: "data", MountPath: "/data", SubPath: "sub"},
			{Name: "conf", MountPath: "/conf"},
			{Name: "missing", MountPath: "/x"},
		},
		Resources: v1.ResourceRequirements{Limits: v1.ResourceList{
			v1.ResourceMemory: resource.MustParse("64Mi"), v1.ResourceCPU: resource.MustParse("250m"),
		}},
	}
	spec, err := instanceSpec(pod, c, specInput{
		digest: "sha256:abc", env: [][2]string{{"A", "1"}}, logSubject: "logs.x",
		volumes: map[string]string{"data": dir + "/data", "conf": dir + "/conf"}, restarts: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	if spec.Module != (instances.Module{Digest: "sha256:abc", Reference: "reg/app:1"}) || spec.LogSubject != "logs.x" {
		t.Errorf("module %+v, subject %q", spec.Module, spec.LogSubject)
	}
	if !slices.Equal(spec.Args, []string{"app", "-v"}) {
		t.Errorf("args %q", spec.Args)
	}
	if !slices.Equal(spec.Env, []instances.EnvVar{{Name: "A", Value: "1"}, {Name: "PWD", Value: "/data"}}) {
		t.Errorf("env %+v", spec.Env)
	}
	want := []instances.Preopen{
		{HostPath: dir + "/data/sub", GuestPath: "/data"},
		{HostPath: dir + "/conf", GuestPath: "/conf", ReadOnly: true}, // configMap volumes are read-only
	}
	if !slices.Equal(spec.Preopens, want) {
		t.Errorf("preopens %+v, want %+v", spec.Preopens, want)
	}
	if spec.MemoryLimitBytes != 64<<20 || spec.CPULimitMillis != 250 {
		t.Errorf("limits %d bytes, %dm", spec.MemoryLimitBytes, spec.CPULimitMillis)
	}
	for k, v := range map[string]string{LabelNamespace: "ns", LabelPod: "p", LabelPodUID: "u1", LabelContainer: "app", LabelRestartCount: "3"} {
		if spec.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, spec.Labels[k], v)
		}
	}
	if id := instanceID(pod, "app", 3); id != "u1-app-3" {
		t.Errorf("instance id %q", id)
	}

	c.VolumeMounts = []v1.VolumeMount{{Name: "data", MountPath: "/d", SubPath: "../up"}}
	if _, err := instanceSpec(pod, c, specInput{volumes: map[string]string{"data": dir}}); err == nil {
		t.Error("a subPath out of the volume was accepted")
	}
	c.Env, c.WorkingDir = nil, "/w"
	spec, _ = instanceSpec(pod, c, specInput{env: [][2]string{{"PWD", "/mine"}}})
	if !slices.Equal(spec.Env, []instances.EnvVar{{Name: "PWD", Value: "/mine"}}) {
		t.Errorf("an explicit PWD was overridden: %+v", spec.Env)
	}
}

func TestAttempt(t *testing.T) {
	pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{UID: "u1"}}
	for _, tc := range []struct {
		name string
		in   instances.Instance
		want int32
		ok   bool
	}{
		{"label", instances.Instance{ID: "u1-app-0", Spec: instances.Spec{Labels: map[string]string{LabelRestartCount: "4"}}}, 4, true},
		{"bad label", instances.Instance{ID: "u1-app-4", Spec: instances.Spec{Labels: map[string]string{LabelRestartCount: "x"}}}, 0, false},
		{"older node agent: from the id", instances.Instance{ID: "u1-app-7"}, 7, true},
		{"foreign id", instances.Instance{ID: "other"}, 0, false},
		{"another container's id", instances.Instance{ID: "u1-app-x-1"}, 0, false},
	} {
		got, ok := attempt(pod, "app", tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: %d, %v; want %d, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}
