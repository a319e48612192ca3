package agent

import (
	"bytes"
	"maps"
	"reflect"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/informers/internalinterfaces"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// coreFactory makes core/v1 informers (all the node agent and
// virtual-kubelet use) without client-go's informers.SharedInformerFactory,
// which links an informer and a lister for every API group and version
// (about 1 MB of the node agent's binary, issue 7). Like that factory, it
// keeps one informer per type and Start runs those not yet running.
type coreFactory struct {
	client kubernetes.Interface
	resync time.Duration

	mu        sync.Mutex
	informers map[reflect.Type]cache.SharedIndexInformer
	started   map[reflect.Type]bool
}

var _ internalinterfaces.SharedInformerFactory = (*coreFactory)(nil)

// newCoreInformers returns the core/v1 informers of a new coreFactory;
// tweak, when set, narrows every list and watch (e.g. to the node's pods).
func newCoreInformers(client kubernetes.Interface, resync time.Duration, tweak internalinterfaces.TweakListOptionsFunc) (coreinformers.Interface, *coreFactory) {
	f := &coreFactory{client: client, resync: resync,
		informers: map[reflect.Type]cache.SharedIndexInformer{}, started: map[reflect.Type]bool{}}
	return coreinformers.New(f, "", tweak), f
}

func (f *coreFactory) InformerFor(obj runtime.Object, newFunc internalinterfaces.NewInformerFunc) cache.SharedIndexInformer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := reflect.TypeOf(obj)
	if inf, ok := f.informers[t]; ok {
		return inf
	}
	inf := newFunc(f.client, f.resync)
	f.informers[t] = inf
	return inf
}

// Start runs every informer made so far that is not running yet, until
// stop is closed.
func (f *coreFactory) Start(stop <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for t, inf := range f.informers {
		if !f.started[t] {
			go inf.Run(stop)
			f.started[t] = true
		}
	}
}

// statusOnlyFiltered is the pod informer virtual-kubelet's pod controller
// is given: its event handler does not see an update that changes nothing
// but the pod's status (and resourceVersion, managedFields), nor a resync.
//
// Such an update is, on this node, nearly always the echo of a status
// write of its own, one or two per pod start. virtual-kubelet (v1.13)
// compares each update by reflection (go-cmp: the containers,
// tolerations, labels and annotations, 3% of the node agent's CPU in a
// burst of 1,000 pod starts) to find, for these, nothing to do: it syncs
// the pod into the provider only when those fields or the deletion
// changed, and resends a status only when it had skipped the provider's
// last one as equal to the one before — which never happens here, since
// a pod worker notifies only a status that changed (podworker's publish).
// Every other update, add and delete reaches it unchanged.
type statusOnlyFiltered struct{ coreinformers.PodInformer }

func (f statusOnlyFiltered) Informer() cache.SharedIndexInformer {
	return statusOnlyInformer{f.PodInformer.Informer()}
}

// statusOnlyInformer filters the handlers added with AddEventHandler,
// the one way virtual-kubelet adds its handler.
type statusOnlyInformer struct{ cache.SharedIndexInformer }

func (i statusOnlyInformer) AddEventHandler(h cache.ResourceEventHandler) (cache.ResourceEventHandlerRegistration, error) {
	return i.SharedIndexInformer.AddEventHandler(statusOnlyHandler{h})
}

type statusOnlyHandler struct{ cache.ResourceEventHandler }

func (h statusOnlyHandler) OnUpdate(oldObj, newObj any) {
	old, ok1 := oldObj.(*v1.Pod)
	pod, ok2 := newObj.(*v1.Pod)
	if ok1 && ok2 && onlyStatusChanged(old, pod) {
		return
	}
	h.ResourceEventHandler.OnUpdate(oldObj, newObj)
}

// onlyStatusChanged reports whether pod differs from old in nothing but
// its status, resourceVersion and managedFields. The specs are compared
// as their protobuf encoding (generated code, and what the API server
// stores), the metadata virtual-kubelet reads field by field; a spec that
// cannot be encoded counts as changed.
func onlyStatusChanged(old, pod *v1.Pod) bool {
	if old == pod {
		return true // a resync
	}
	if old.UID != pod.UID || old.Name != pod.Name || old.Namespace != pod.Namespace ||
		!old.DeletionTimestamp.Equal(pod.DeletionTimestamp) ||
		!ptrEqual(old.DeletionGracePeriodSeconds, pod.DeletionGracePeriodSeconds) ||
		!maps.Equal(old.Labels, pod.Labels) || !maps.Equal(old.Annotations, pod.Annotations) ||
		!slices.Equal(old.Finalizers, pod.Finalizers) {
		return false
	}
	a, err := old.Spec.Marshal()
	if err != nil {
		return false
	}
	b, err := pod.Spec.Marshal()
	return err == nil && bytes.Equal(a, b)
}

func ptrEqual[T comparable](a, b *T) bool {
	return a == b || (a != nil && b != nil && *a == *b)
}
