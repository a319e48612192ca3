package agent

import (
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/record"
)

// quietRecorder drops virtual-kubelet's own success events
// ("ProviderCreateSuccess" and the like): the kubelet sends none, the pod
// worker already reports Pulled/Created/Started, and on a 2-core control
// plane every event is an API write that slows a burst of pod starts.
// Failures pass through.
type quietRecorder struct{ record.EventRecorder }

var droppedReasons = map[string]bool{
	"ProviderCreateSuccess": true,
	"ProviderUpdateSuccess": true,
	"ProviderDeleteSuccess": true,
}

func (r quietRecorder) Event(obj runtime.Object, typ, reason, msg string) {
	if !droppedReasons[reason] {
		r.EventRecorder.Event(obj, typ, reason, msg)
	}
}

func (r quietRecorder) Eventf(obj runtime.Object, typ, reason, format string, args ...any) {
	if !droppedReasons[reason] {
		r.EventRecorder.Eventf(obj, typ, reason, format, args...)
	}
}
