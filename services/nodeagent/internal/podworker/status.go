package podworker

import (
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// containerIDPrefix is the scheme of a wasmlet container's ID.
const containerIDPrefix = "wasmlet://"

// containerState is how an instance shows in its container's status. A
// FAILED instance never ran: as the kubelet does for a container it
// cannot create, the container waits with CreateContainerError (the caller
// retries it under back-off), with neither an exit code nor a restart. A
// time the executor did not send is now (or the start, the end), never
// the zero time.
func containerState(in instances.Instance, now time.Time) v1.ContainerState {
	switch in.State {
	case instances.StateRunning:
		return v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: tsOr(in.StartedAt, now)}}
	case instances.StateFailed:
		return waiting("CreateContainerError", in.Message)
	case instances.StateExited, instances.StateKilled:
		reason := in.Reason
		if reason == "" {
			reason = "Error"
			if in.ExitCode == 0 {
				reason = "Completed"
			}
		}
		finished := tsOr(in.FinishedAt, now)
		return v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
			ExitCode:    in.ExitCode,
			Reason:      reason,
			Message:     in.Message,
			StartedAt:   tsOr(in.StartedAt, finished.Time),
			FinishedAt:  finished,
			ContainerID: containerIDPrefix + in.ID,
		}}
	}
	return waiting("ContainerCreating", "")
}

// tsOr is t as a status time, or fallback when t is unset: a status never
// shows the zero time (1970-01-01).
func tsOr(t time.Time, fallback time.Time) metav1.Time {
	if t.Unix() <= 0 {
		return ts(fallback)
	}
	return ts(t)
}

func ts(t time.Time) metav1.Time { return metav1.NewTime(t.Truncate(time.Second)) }

func waiting(reason, msg string) v1.ContainerState {
	return v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: reason, Message: msg}}
}

// statusInput is what a pod's status is built from.
type statusInput struct {
	pod        *v1.Pod // with the status last built
	inits      []*ctr
	containers []*ctr
	nodeIP     string
	podIPs     []string // the pod's own addresses; none: the node's
	// prepared: modules pulled and volumes set up.
	prepared            bool
	failReason, failMsg string // a pod-level failure
}

// podStatus builds the pod's status from its containers, keeping the
// start time and the conditions' transition times of the previous one.
func podStatus(in statusInput, now metav1.Time) v1.PodStatus {
	pod := in.pod
	st := *pod.Status.DeepCopy()
	st.Phase = podPhase(in.containers)
	st.HostIP = in.nodeIP
	st.HostIPs = []v1.HostIP{{IP: in.nodeIP}}
	// A pod on the pod network has its own addresses; others share the
	// node's.
	st.PodIP = in.nodeIP
	st.PodIPs = []v1.PodIP{{IP: in.nodeIP}}
	if len(in.podIPs) > 0 {
		st.PodIP, st.PodIPs = in.podIPs[0], nil
		for _, ip := range in.podIPs {
			st.PodIPs = append(st.PodIPs, v1.PodIP{IP: ip})
		}
	}
	if st.StartTime == nil {
		st.StartTime = &now
	}
	st.QOSClass = qosClass(pod)
	st.Reason, st.Message = in.failReason, in.failMsg
	if in.failReason != "" {
		st.Phase = v1.PodFailed
	}
	initialized := true
	for _, c := range in.inits {
		initialized = initialized && c.finished && c.state.Terminated != nil && c.state.Terminated.ExitCode == 0
	}
	if !initialized && st.Phase == v1.PodRunning {
		st.Phase = v1.PodPending // containers have not started while inits run
	}
	if len(in.inits) > 0 && !initialized && in.inits[len(in.inits)-1].finished && st.Phase != v1.PodFailed {
		st.Phase = v1.PodFailed // an init container failed for good
	}
	ready := len(in.containers) > 0
	st.InitContainerStatuses = containerStatuses(st.InitContainerStatuses[:0], in.inits)
	st.ContainerStatuses = containerStatuses(st.ContainerStatuses[:0], in.containers)
	for _, c := range in.containers {
		ready = ready && c.state.Running != nil && !c.unready
	}
	terminal := st.Phase == v1.PodSucceeded || st.Phase == v1.PodFailed
	st.Conditions = setCondition(st.Conditions, v1.PodScheduled, v1.ConditionTrue, "", now)
	st.Conditions = setCondition(st.Conditions, v1.PodReadyToStartContainers, boolStatus(in.prepared && !terminal), "", now)
	initReason := ""
	if !initialized {
		initReason = "ContainersNotInitialized"
	}
	st.Conditions = setCondition(st.Conditions, v1.PodInitialized, boolStatus(initialized), initReason, now)
	reason := ""
	if !ready {
		reason = "ContainersNotReady"
		if terminal {
			reason = "PodCompleted"
		}
	}
	st.Conditions = setCondition(st.Conditions, v1.ContainersReady, boolStatus(ready), reason, now)
	st.Conditions = setCondition(st.Conditions, v1.PodReady, boolStatus(ready), reason, now)
	return st
}

// containerStatuses renders containers' statuses into out.
func containerStatuses(out []v1.ContainerStatus, cs []*ctr) []v1.ContainerStatus {
	for _, c := range cs {
		running := c.state.Running != nil
		imageID := ""
		if c.image.ManifestDigest != "" {
			imageID = c.image.Reference + "@" + c.image.ManifestDigest
		}
		s := v1.ContainerStatus{
			Name:                 c.spec.Name,
			Image:                c.spec.Image,
			ImageID:              imageID,
			State:                c.state,
			LastTerminationState: c.last,
			Ready:                running && !c.unready || (c.init && c.finished && c.state.Terminated != nil && c.state.Terminated.ExitCode == 0),
			RestartCount:         c.restarts,
			Started:              &running,
		}
		if c.instanceID != "" {
			s.ContainerID = containerIDPrefix + c.instanceID
		}
		out = append(out, s)
	}
	return out
}

// podPhase derives the pod's phase from its containers, as the kubelet does:
// Pending until a container has run, Succeeded/Failed once every container
// has ended for good, Running otherwise.
func podPhase(cs []*ctr) v1.PodPhase {
	if len(cs) == 0 {
		return v1.PodPending
	}
	started, allDone, allZero := false, true, true
	for _, c := range cs {
		if c.state.Running != nil || c.state.Terminated != nil || c.last.Terminated != nil {
			started = true
		}
		if !c.finished {
			allDone = false
		}
		if t := c.state.Terminated; t == nil || t.ExitCode != 0 {
			allZero = false
		}
	}
	switch {
	case allDone && allZero:
		return v1.PodSucceeded
	case allDone:
		return v1.PodFailed
	case started:
		return v1.PodRunning
	}
	return v1.PodPending
}

// setCondition sets a condition, keeping its transition time when its
// status does not change.
func setCondition(conds []v1.PodCondition, t v1.PodConditionType, status v1.ConditionStatus, reason string, now metav1.Time) []v1.PodCondition {
	for i := range conds {
		if conds[i].Type != t {
			continue
		}
		if conds[i].Status != status {
			conds[i].LastTransitionTime = now
		}
		conds[i].Status, conds[i].Reason = status, reason
		return conds
	}
	return append(conds, v1.PodCondition{Type: t, Status: status, Reason: reason, LastTransitionTime: now})
}

func boolStatus(b bool) v1.ConditionStatus {
	if b {
		return v1.ConditionTrue
	}
	return v1.ConditionFalse
}

// qosClass follows the Kubernetes rules: BestEffort with no requests or
// limits at all, Guaranteed when every container's cpu and memory limits are
// set and equal their requests, Burstable otherwise.
func qosClass(pod *v1.Pod) v1.PodQOSClass {
	any, guaranteed := false, true
	for _, c := range pod.Spec.Containers {
		if len(c.Resources.Requests) > 0 || len(c.Resources.Limits) > 0 {
			any = true
		}
		for _, r := range []v1.ResourceName{v1.ResourceCPU, v1.ResourceMemory} {
			l, ok := c.Resources.Limits[r]
			if !ok {
				guaranteed = false
				continue
			}
			if req, ok := c.Resources.Requests[r]; ok && req.Cmp(l) != 0 {
				guaranteed = false
			}
		}
	}
	switch {
	case !any:
		return v1.PodQOSBestEffort
	case guaranteed:
		return v1.PodQOSGuaranteed
	}
	return v1.PodQOSBurstable
}
