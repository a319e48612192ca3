package podworker

import (
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

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
