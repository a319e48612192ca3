package podworker

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func runningStatus() v1.PodStatus {
	at := metav1.NewTime(time.Unix(1700000000, 0))
	return v1.PodStatus{
		Phase:      v1.PodRunning,
		Conditions: []v1.PodCondition{{Type: v1.PodReady, Status: v1.ConditionTrue, LastTransitionTime: at}},
		HostIP:     "10.0.0.1", PodIP: "10.0.0.1", StartTime: &at, QOSClass: v1.PodQOSBestEffort,
		ContainerStatuses: []v1.ContainerStatus{{Name: "app", Ready: true, ContainerID: "wasmlet://i1",
			State: v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: at}}}},
	}
}

// TestStatusEqual: statuses that the API server would store alike are
// equal; any stored difference is not.
func TestStatusEqual(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(*v1.PodStatus)
		want   bool
	}{
		{"same", func(*v1.PodStatus) {}, true},
		{"nil and empty lists", func(s *v1.PodStatus) { s.InitContainerStatuses, s.PodIPs = []v1.ContainerStatus{}, []v1.PodIP{} }, true},
		{"a time within its second (stored to the second)", func(s *v1.PodStatus) {
			s.StartTime = &metav1.Time{Time: s.StartTime.Add(300 * time.Millisecond)}
		}, true},
		{"phase", func(s *v1.PodStatus) { s.Phase = v1.PodSucceeded }, false},
		{"condition", func(s *v1.PodStatus) { s.Conditions[0].Status = v1.ConditionFalse }, false},
		{"condition's time", func(s *v1.PodStatus) { s.Conditions[0].LastTransitionTime.Time = time.Unix(1700000001, 0) }, false},
		{"container state", func(s *v1.PodStatus) {
			s.ContainerStatuses[0].State = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{ExitCode: 1}}
		}, false},
		{"restart count", func(s *v1.PodStatus) { s.ContainerStatuses[0].RestartCount = 1 }, false},
		{"message", func(s *v1.PodStatus) { s.Message = "x" }, false},
		{"pod IP", func(s *v1.PodStatus) { s.PodIP = "10.1.0.5" }, false},
	} {
		a, b := runningStatus(), runningStatus()
		c.change(&b)
		if got := statusEqual(&a, &b); got != c.want {
			t.Errorf("%s: statusEqual = %v, want %v", c.name, got, c.want)
		}
	}
}
