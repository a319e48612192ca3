package podworker

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Only a pod with something to refresh is woken by the volume sync: at
// 5,000 pods without volumes, a wake-up each a minute was most of an idle
// node agent's CPU.
func TestRefreshes(t *testing.T) {
	limit := resource.MustParse("1Mi")
	for _, tc := range []struct {
		name string
		vols []v1.Volume
		want bool
	}{
		{"none", nil, false},
		{"emptyDir", []v1.Volume{{Name: "a", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{}}}}, false},
		{"emptyDir with a limit", []v1.Volume{{Name: "a", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{SizeLimit: &limit}}}}, true},
		{"configMap", []v1.Volume{{Name: "a", VolumeSource: v1.VolumeSource{ConfigMap: &v1.ConfigMapVolumeSource{}}}}, true},
		{"projected", []v1.Volume{{Name: "a", VolumeSource: v1.VolumeSource{Projected: &v1.ProjectedVolumeSource{}}}}, true},
	} {
		pod := &v1.Pod{Spec: v1.PodSpec{Volumes: tc.vols}}
		if got := refreshes(pod); got != tc.want {
			t.Errorf("%s: refreshes %v, want %v", tc.name, got, tc.want)
		}
	}
}
