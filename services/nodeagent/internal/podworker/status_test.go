package podworker

import (
	"os"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
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

func TestContainerState(t *testing.T) {
	now := time.Unix(1000, 0)
	t0, t1 := time.Unix(500, 0), time.Unix(600, 0)
	if s := containerState(instances.Instance{ID: "i", State: instances.StateCreated}, now); s.Waiting == nil || s.Waiting.Reason != "ContainerCreating" {
		t.Errorf("created: %+v", s)
	}
	s := containerState(instances.Instance{ID: "i", State: instances.StateRunning, StartedAt: t0}, now)
	if s.Running == nil || !s.Running.StartedAt.Time.Equal(t0) {
		t.Errorf("running: %+v", s)
	}
	if s := containerState(instances.Instance{ID: "i", State: instances.StateRunning}, now); !s.Running.StartedAt.Time.Equal(now) {
		t.Errorf("running without a start time: %v, want now", s.Running.StartedAt)
	}
	// FAILED never ran: CreateContainerError with the executor's words.
	s = containerState(instances.Instance{ID: "i", State: instances.StateFailed, Reason: "ModuleInvalid", Message: "not a Wasm module"}, now)
	if s.Waiting == nil || s.Waiting.Reason != "CreateContainerError" || s.Waiting.Message != "not a Wasm module" || s.Terminated != nil {
		t.Errorf("failed: %+v", s)
	}
	for _, tc := range []struct {
		in     instances.Instance
		reason string
		start  time.Time
		end    time.Time
	}{
		{instances.Instance{State: instances.StateExited, ExitCode: 0, StartedAt: t0, FinishedAt: t1}, "Completed", t0, t1},
		{instances.Instance{State: instances.StateExited, ExitCode: 2, StartedAt: t0, FinishedAt: t1}, "Error", t0, t1},
		{instances.Instance{State: instances.StateKilled, ExitCode: 137, Reason: "OOMKilled", StartedAt: t0, FinishedAt: t1}, "OOMKilled", t0, t1},
		// No zero timestamps: a missing end is now, a missing start the end.
		{instances.Instance{State: instances.StateExited, ExitCode: 1}, "Error", now, now},
		{instances.Instance{State: instances.StateExited, ExitCode: 1, FinishedAt: t1}, "Error", t1, t1},
	} {
		tc.in.ID = "i"
		s := containerState(tc.in, now).Terminated
		if s == nil || s.Reason != tc.reason || s.ExitCode != tc.in.ExitCode || s.ContainerID != "wasmlet://i" ||
			!s.StartedAt.Time.Equal(tc.start) || !s.FinishedAt.Time.Equal(tc.end) {
			t.Errorf("%+v: terminated %+v", tc.in, s)
		}
	}
}

func TestPodStatus(t *testing.T) {
	now := metav1.NewTime(time.Unix(1000, 0))
	running := v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: now}}
	pod := &v1.Pod{Spec: v1.PodSpec{Containers: []v1.Container{{Name: "a"}}}}
	cond := func(st v1.PodStatus, typ v1.PodConditionType) v1.ConditionStatus {
		for _, c := range st.Conditions {
			if c.Type == typ {
				return c.Status
			}
		}
		return ""
	}
	st := podStatus(statusInput{pod: pod, nodeIP: "10.0.0.1", prepared: true,
		containers: []*ctr{{spec: v1.Container{Name: "a"}, state: running, instanceID: "u-a-0", restarts: 2}}}, now)
	if st.Phase != v1.PodRunning || st.PodIP != "10.0.0.1" || st.StartTime == nil || st.QOSClass != v1.PodQOSBestEffort {
		t.Errorf("running pod: %+v", st)
	}
	if cs := st.ContainerStatuses[0]; !cs.Ready || cs.ContainerID != "wasmlet://u-a-0" || cs.RestartCount != 2 || !*cs.Started {
		t.Errorf("container status %+v", cs)
	}
	if cond(st, v1.PodReady) != v1.ConditionTrue || cond(st, v1.PodReadyToStartContainers) != v1.ConditionTrue || cond(st, v1.PodInitialized) != v1.ConditionTrue {
		t.Errorf("conditions %+v", st.Conditions)
	}

	// An init container that failed for good fails the pod; its
	// containers never started.
	pod.Spec.InitContainers = []v1.Container{{Name: "i"}}
	st = podStatus(statusInput{pod: pod, prepared: true,
		inits:      []*ctr{{spec: v1.Container{Name: "i"}, init: true, state: terminated(1), finished: true}},
		containers: []*ctr{{spec: v1.Container{Name: "a"}, state: waiting("PodInitializing", ""), finished: true}}}, now)
	if st.Phase != v1.PodFailed || cond(st, v1.PodInitialized) != v1.ConditionFalse || len(st.InitContainerStatuses) != 1 {
		t.Errorf("failed init: phase %s, %+v", st.Phase, st.Conditions)
	}
	// While an init container runs the pod is Pending.
	st = podStatus(statusInput{pod: pod, prepared: true,
		inits:      []*ctr{{spec: v1.Container{Name: "i"}, init: true, state: running}},
		containers: []*ctr{{spec: v1.Container{Name: "a"}, state: running}}}, now)
	if st.Phase != v1.PodPending {
		t.Errorf("init running: phase %s", st.Phase)
	}
	// A pod-level failure (DeadlineExceeded) is the pod's phase and reason.
	st = podStatus(statusInput{pod: &v1.Pod{}, failReason: "DeadlineExceeded", failMsg: "too long",
		containers: []*ctr{{state: terminated(137), finished: true}}}, now)
	if st.Phase != v1.PodFailed || st.Reason != "DeadlineExceeded" || cond(st, v1.PodReady) != v1.ConditionFalse {
		t.Errorf("deadline: %+v", st)
	}
	for _, c := range st.Conditions {
		if c.Type == v1.PodReady && c.Reason != "PodCompleted" {
			t.Errorf("ready reason of an ended pod %q", c.Reason)
		}
	}
}
