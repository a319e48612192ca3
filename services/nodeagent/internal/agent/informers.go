package agent

import (
	"reflect"
	"sync"
	"time"

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
