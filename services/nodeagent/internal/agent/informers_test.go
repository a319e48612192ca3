package agent

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

func basePod() *v1.Pod {
	grace := int64(30)
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "apps", UID: "u1", ResourceVersion: "10",
			Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"a": "1"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: v1.PodSpec{NodeName: "n1", TerminationGracePeriodSeconds: &grace,
			Containers:  []v1.Container{{Name: "app", Image: "reg/app:1", Env: []v1.EnvVar{{Name: "A", Value: "1"}}}},
			Tolerations: []v1.Toleration{{Key: "k", Operator: v1.TolerationOpExists}}},
		Status: v1.PodStatus{Phase: v1.PodPending},
	}
}

func TestOnlyStatusChanged(t *testing.T) {
	now := metav1.NewTime(time.Unix(1700000000, 0))
	grace := int64(0)
	for _, c := range []struct {
		name   string
		change func(*v1.Pod)
		want   bool
	}{
		{"status, resourceVersion and managedFields", func(p *v1.Pod) {
			p.Status.Phase = v1.PodRunning
			p.Status.ContainerStatuses = []v1.ContainerStatus{{Name: "app", Ready: true}}
			p.ResourceVersion = "11"
			p.ManagedFields = append(p.ManagedFields, metav1.ManagedFieldsEntry{Manager: "wasmlet"})
		}, true},
		{"nothing", func(*v1.Pod) {}, true},
		{"image", func(p *v1.Pod) { p.Spec.Containers[0].Image = "reg/app:2" }, false},
		{"env", func(p *v1.Pod) { p.Spec.Containers[0].Env[0].Value = "2" }, false},
		{"toleration added", func(p *v1.Pod) {
			p.Spec.Tolerations = append(p.Spec.Tolerations, v1.Toleration{Key: "other", Operator: v1.TolerationOpExists})
		}, false},
		{"active deadline", func(p *v1.Pod) { d := int64(5); p.Spec.ActiveDeadlineSeconds = &d }, false},
		{"label", func(p *v1.Pod) { p.Labels["app"] = "api" }, false},
		{"annotation added", func(p *v1.Pod) { p.Annotations["b"] = "2" }, false},
		{"finalizer", func(p *v1.Pod) { p.Finalizers = []string{"x"} }, false},
		{"deletion", func(p *v1.Pod) { p.DeletionTimestamp = &now; p.DeletionGracePeriodSeconds = &grace }, false},
		{"another pod of the name", func(p *v1.Pod) { p.UID = "u2" }, false},
	} {
		old, pod := basePod(), basePod() // decoded apart, as a watch's are
		c.change(pod)
		if got := onlyStatusChanged(old, pod); got != c.want {
			t.Errorf("%s: onlyStatusChanged = %v, want %v", c.name, got, c.want)
		}
	}
	p := basePod()
	if !onlyStatusChanged(p, p) {
		t.Error("a resync (the same pod twice) is not status only")
	}
	// The deletion's grace alone (a second delete with a shorter one).
	old, pod := basePod(), basePod()
	old.DeletionTimestamp, pod.DeletionTimestamp = &now, &now
	g1, g2 := int64(30), int64(0)
	old.DeletionGracePeriodSeconds, pod.DeletionGracePeriodSeconds = &g1, &g2
	if onlyStatusChanged(old, pod) {
		t.Error("a shorter deletion grace period is status only")
	}
}

type recordingHandler struct{ adds, updates, deletes int }

func (h *recordingHandler) OnAdd(any, bool)   { h.adds++ }
func (h *recordingHandler) OnUpdate(any, any) { h.updates++ }
func (h *recordingHandler) OnDelete(any)      { h.deletes++ }
func (h *recordingHandler) counts() [3]int    { return [3]int{h.adds, h.updates, h.deletes} }

var _ cache.ResourceEventHandler = (*recordingHandler)(nil)

// TestStatusOnlyHandler: virtual-kubelet's handler gets adds, deletes and
// updates that change more than the status; not the echo of a status write.
func TestStatusOnlyHandler(t *testing.T) {
	rec := &recordingHandler{}
	h := statusOnlyHandler{rec}
	old, echo, relabelled := basePod(), basePod(), basePod()
	echo.Status.Phase, echo.ResourceVersion = v1.PodRunning, "11"
	relabelled.Labels["tier"] = "front"
	h.OnAdd(old, false)
	h.OnUpdate(old, echo)
	h.OnUpdate(echo, echo)
	h.OnUpdate(old, relabelled)
	h.OnUpdate(old, "not a pod")
	h.OnDelete(old)
	if got, want := rec.counts(), [3]int{1, 2, 1}; got != want {
		t.Fatalf("adds, updates, deletes = %v, want %v", got, want)
	}
}

// BenchmarkOnlyStatusChanged is the filter's cost per status write echoed
// back (virtual-kubelet's go-cmp comparison it spares was ~60 µs per pod
// start in the profile of a burst of 1,000).
func BenchmarkOnlyStatusChanged(b *testing.B) {
	old, pod := basePod(), basePod()
	pod.Status.Phase = v1.PodRunning
	for b.Loop() {
		if !onlyStatusChanged(old, pod) {
			b.Fatal("changed")
		}
	}
}
