package podworker

import (
	"os"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func terminated(code int32) v1.ContainerState {
	return v1.ContainerState{Terminated: &v1.ContainerStateTerminated{ExitCode: code}}
}

func TestPodPhase(t *testing.T) {
	running := v1.ContainerState{Running: &v1.ContainerStateRunning{}}
	for _, tc := range []struct {
		name string
		cs   []*ctr
		want v1.PodPhase
	}{
		{"nothing started", []*ctr{{state: waiting("ContainerCreating", "")}}, v1.PodPending},
		{"pull failing", []*ctr{{state: waiting("ErrImagePull", "")}}, v1.PodPending},
		{"one running", []*ctr{{state: running}, {state: waiting("ContainerCreating", "")}}, v1.PodRunning},
		{"crash looping", []*ctr{{state: waiting("CrashLoopBackOff", ""), last: terminated(1)}}, v1.PodRunning},
		{"ended, restart pending", []*ctr{{state: terminated(1)}}, v1.PodRunning},
		{"all done zero", []*ctr{{state: terminated(0), finished: true}, {state: terminated(0), finished: true}}, v1.PodSucceeded},
		{"all done one failed", []*ctr{{state: terminated(0), finished: true}, {state: terminated(3), finished: true}}, v1.PodFailed},
		{"one done one running", []*ctr{{state: terminated(0), finished: true}, {state: running}}, v1.PodRunning},
	} {
		if got := podPhase(tc.cs); got != tc.want {
			t.Errorf("%s: phase %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestBackoffDoublesToMax(t *testing.T) {
	b := Backoff{Initial: 10 * time.Second, Max: 5 * time.Minute}
	c := &ctr{}
	var got []time.Duration
	for range 8 {
		got = append(got, c.nextDelay(b))
	}
	want := []time.Duration{10, 20, 40, 80, 160, 300, 300, 300}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("delays %v, want %v seconds", got, want)
		}
	}
	if d := b.delay(0); d != 10*time.Second {
		t.Errorf("pull delay(0) = %s", d)
	}
	if d := b.delay(10); d != 5*time.Minute {
		t.Errorf("pull delay(10) = %s", d)
	}
}

func TestSetConditionKeepsTransitionTime(t *testing.T) {
	t0 := metav1.NewTime(time.Unix(100, 0))
	t1 := metav1.NewTime(time.Unix(200, 0))
	conds := setCondition(nil, v1.PodReady, v1.ConditionFalse, "ContainersNotReady", t0)
	conds = setCondition(conds, v1.PodReady, v1.ConditionFalse, "ContainersNotReady", t1)
	if !conds[0].LastTransitionTime.Equal(&t0) {
		t.Errorf("transition time moved without a change")
	}
	conds = setCondition(conds, v1.PodReady, v1.ConditionTrue, "", t1)
	if !conds[0].LastTransitionTime.Equal(&t1) || len(conds) != 1 {
		t.Errorf("conditions = %+v", conds)
	}
}

func TestQOSClass(t *testing.T) {
	res := func(req, lim string) v1.ResourceRequirements {
		r := v1.ResourceRequirements{}
		if req != "" {
			r.Requests = v1.ResourceList{v1.ResourceCPU: resource.MustParse(req), v1.ResourceMemory: resource.MustParse(req + "Mi")}
		}
		if lim != "" {
			r.Limits = v1.ResourceList{v1.ResourceCPU: resource.MustParse(lim), v1.ResourceMemory: resource.MustParse(lim + "Mi")}
		}
		return r
	}
	pod := func(r v1.ResourceRequirements) *v1.Pod {
		return &v1.Pod{Spec: v1.PodSpec{Containers: []v1.Container{{Resources: r}}}}
	}
	if q := qosClass(pod(res("", ""))); q != v1.PodQOSBestEffort {
		t.Errorf("no resources: %s", q)
	}
	if q := qosClass(pod(res("1", "1"))); q != v1.PodQOSGuaranteed {
		t.Errorf("equal requests and limits: %s", q)
	}
	if q := qosClass(pod(res("1", "2"))); q != v1.PodQOSBurstable {
		t.Errorf("requests below limits: %s", q)
	}
}

func TestArgv(t *testing.T) {
	c := &v1.Container{Name: "app", Args: []string{"-v"}}
	if got := argv(c); len(got) != 2 || got[0] != "app" || got[1] != "-v" {
		t.Errorf("argv without command = %q", got)
	}
	c.Command = []string{"tool", "run"}
	if got := argv(c); len(got) != 3 || got[0] != "tool" || got[2] != "-v" {
		t.Errorf("argv with command = %q", got)
	}
}

func TestSubPathRefusesEscapes(t *testing.T) {
	dir := t.TempDir()
	for _, bad := range []string{"../x", "/etc", "..", "a/../../b"} {
		if _, err := subPath(dir, bad); err == nil {
			t.Errorf("subPath %q accepted", bad)
		}
	}
	if p, err := subPath(dir, "a/b"); err != nil || p != dir+"/a/b" {
		t.Errorf("subPath a/b = %q, %v", p, err)
	}
	// A module replaced the subPath by a link that climbs out of the
	// volume: the next start must neither follow nor create through it.
	outside := t.TempDir()
	if err := os.Symlink("../../../../../../../../.."+outside, dir+"/x"); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"x", "x/etc"} {
		if p, err := subPath(dir, sub); err == nil || !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("subPath %q through a link = %q, %v", sub, p, err)
		}
	}
	if _, err := os.Stat(outside + "/etc"); err == nil {
		t.Error("subPath created a directory outside the volume")
	}
}
