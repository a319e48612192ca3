// Package noopnode is the benchmarks' yardstick: a node on virtual-kubelet's
// node library whose provider marks every pod Running the moment it is
// created, with the same raised client and queue limits as wasmlet's node
// agent. Whatever time a pod takes to start on it is the control plane's
// and virtual-kubelet's, not a runtime's. Unlike virtual-kubelet's bundled
// mock provider, its pod map is guarded, so concurrent workers are safe.
package noopnode

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"golang.org/x/time/rate"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

// Labels and taint of the no-op node: the same shape as a wasmlet node's,
// so that the same pods can be pointed at either by hostname.
var (
	Labels = map[string]string{"kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/os": "wasip1"}
	Taints = []v1.Taint{
		{Key: "kubernetes.io/arch", Value: "wasm32-wasi", Effect: v1.TaintEffectNoSchedule},
		{Key: "kubernetes.io/arch", Value: "wasm32-wasi", Effect: v1.TaintEffectNoExecute},
	}
)

// Run registers a node called name with the node identity in cfg and runs
// it until ctx ends. ready is closed once the node is registered.
func Run(ctx context.Context, cfg *rest.Config, name string, workers int, ready chan<- struct{}) error {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 500, 1000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	labels := map[string]string{"kubernetes.io/hostname": name}
	for k, v := range Labels {
		labels[k] = v
	}
	capacity := v1.ResourceList{
		v1.ResourceCPU:    resource.MustParse("64"),
		v1.ResourceMemory: resource.MustParse("256Gi"),
		v1.ResourcePods:   resource.MustParse("10000"),
	}
	now := metav1.Now()
	n := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       v1.NodeSpec{Taints: Taints},
		Status: v1.NodeStatus{
			Capacity: capacity, Allocatable: capacity,
			Addresses:  []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "127.0.0.1"}},
			Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}},
			NodeInfo:   v1.NodeSystemInfo{KubeletVersion: "v0.0.0-noop"},
		},
	}
	p := &provider{pods: map[string]*v1.Pod{}}
	eb := record.NewBroadcaster()
	eb.StartRecordingToSink(&corev1client.EventSinkImpl{Interface: client.CoreV1().Events(v1.NamespaceAll)})
	defer eb.Shutdown()
	factory := informers.NewSharedInformerFactoryWithOptions(client, time.Minute, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", name).String()
	}))
	unstarted := informers.NewSharedInformerFactory(client, 0)
	limiter := func() workqueue.TypedRateLimiter[any] {
		return workqueue.NewTypedMaxOfRateLimiter(
			workqueue.NewTypedItemExponentialFailureRateLimiter[any](5*time.Millisecond, 30*time.Second),
			&workqueue.TypedBucketRateLimiter[any]{Limiter: rate.NewLimiter(rate.Limit(1000), 1000)},
		)
	}
	pc, err := node.NewPodController(node.PodControllerConfig{
		PodClient: client.CoreV1(), PodInformer: factory.Core().V1().Pods(),
		EventRecorder:     eb.NewRecorder(scheme.Scheme, v1.EventSource{Component: "noop-node", Host: name}),
		Provider:          p,
		ConfigMapInformer: unstarted.Core().V1().ConfigMaps(), SecretInformer: unstarted.Core().V1().Secrets(),
		ServiceInformer: unstarted.Core().V1().Services(), SkipDownwardAPIResolution: true,
		SyncPodsFromKubernetesRateLimiter: limiter(), DeletePodsFromKubernetesRateLimiter: limiter(),
		SyncPodStatusFromProviderRateLimiter: limiter(),
	})
	if err != nil {
		return err
	}
	nc, err := node.NewNodeController(node.NaiveNodeProvider{}, n, client.CoreV1().Nodes(),
		node.WithNodeEnableLeaseV1(client.CoordinationV1().Leases(v1.NamespaceNodeLease), node.DefaultLeaseDuration))
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	errc := make(chan error, 2)
	go func() { errc <- pc.Run(ctx, workers) }() // as many workers as wasmlet's node agent
	select {
	case <-pc.Ready():
	case err := <-errc:
		return fmt.Errorf("noop pod controller: %w", err)
	}
	go func() { errc <- nc.Run(ctx) }()
	select {
	case <-nc.Ready():
		close(ready)
	case err := <-errc:
		return fmt.Errorf("noop node controller: %w", err)
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

type provider struct {
	mu     sync.Mutex
	pods   map[string]*v1.Pod
	notify func(*v1.Pod)
}

func key(ns, name string) string { return ns + "/" + name }

func (p *provider) NotifyPods(_ context.Context, cb func(*v1.Pod)) {
	p.mu.Lock()
	p.notify = cb
	p.mu.Unlock()
}

// CreatePod marks the pod Running with every container running, at once.
func (p *provider) CreatePod(_ context.Context, pod *v1.Pod) error {
	now := metav1.Now()
	pod = pod.DeepCopy()
	pod.Status.Phase = v1.PodRunning
	pod.Status.HostIP, pod.Status.PodIP = "127.0.0.1", "127.0.0.1"
	pod.Status.StartTime = &now
	pod.Status.Conditions = []v1.PodCondition{
		{Type: v1.PodScheduled, Status: v1.ConditionTrue, LastTransitionTime: now},
		{Type: v1.PodInitialized, Status: v1.ConditionTrue, LastTransitionTime: now},
		{Type: v1.ContainersReady, Status: v1.ConditionTrue, LastTransitionTime: now},
		{Type: v1.PodReady, Status: v1.ConditionTrue, LastTransitionTime: now},
	}
	pod.Status.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, v1.ContainerStatus{
			Name: c.Name, Image: c.Image, Ready: true,
			State: v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: now}},
		})
	}
	p.mu.Lock()
	p.pods[key(pod.Namespace, pod.Name)] = pod
	cb := p.notify
	p.mu.Unlock()
	if cb != nil {
		cb(pod)
	}
	return nil
}

func (p *provider) UpdatePod(context.Context, *v1.Pod) error { return nil }

// DeletePod ends the pod's containers at once.
func (p *provider) DeletePod(_ context.Context, pod *v1.Pod) error {
	p.mu.Lock()
	stored, ok := p.pods[key(pod.Namespace, pod.Name)]
	cb := p.notify
	p.mu.Unlock()
	if !ok {
		return errdefs.NotFound("pod not found")
	}
	done := stored.DeepCopy()
	now := metav1.Now()
	done.Status.Phase = v1.PodSucceeded
	for i := range done.Status.ContainerStatuses {
		done.Status.ContainerStatuses[i].Ready = false
		done.Status.ContainerStatuses[i].State = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{Reason: "Completed", StartedAt: now, FinishedAt: now}}
	}
	p.mu.Lock()
	delete(p.pods, key(pod.Namespace, pod.Name))
	p.mu.Unlock()
	if cb != nil {
		cb(done)
	}
	return nil
}

func (p *provider) GetPod(_ context.Context, ns, name string) (*v1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pod, ok := p.pods[key(ns, name)]
	if !ok {
		return nil, errdefs.NotFound("pod not found")
	}
	return pod.DeepCopy(), nil
}

func (p *provider) GetPodStatus(ctx context.Context, ns, name string) (*v1.PodStatus, error) {
	pod, err := p.GetPod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

func (p *provider) GetPods(context.Context) ([]*v1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*v1.Pod, 0, len(p.pods))
	for _, pod := range p.pods {
		out = append(out, pod.DeepCopy())
	}
	return out, nil
}
