// Package provider adapts wasmlet's pod workers to virtual-kubelet's pod
// controller: it implements node.PodLifecycleHandler with the PodNotifier
// extension (status is pushed, never polled) and the kubelet API's pod
// handlers (logs; exec, attach and port-forward answer "not supported").
// It owns the map of pod workers and routes executor events to them; the
// pod lifecycle itself is podworker's.
package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/proxy"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/executors"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/kubeletapi"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podlogs"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podnet"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podworker"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// Config is what the provider needs; all fields are required unless noted.
type Config struct {
	Client   kubernetes.Interface
	Cache    regcache.Cache
	Pool     *executors.Pool
	Recorder record.EventRecorder
	Logs     *podlogs.Reader
	NodeName string
	NodeIP   string
	StateDir string // pods' volumes live under StateDir/pods/<uid>
	Backoff  podworker.Backoff
	// VolumeRefresh is how often API-backed volumes are rewritten (optional).
	VolumeRefresh time.Duration
	// InstanceResync is how often each pod's instances are listed again
	// (optional: podworker.DefaultResync).
	InstanceResync time.Duration
	// AllowedHostPaths are the roots hostPath volumes may use (optional).
	AllowedHostPaths []string
	// Network, optional, puts pods that declare ports on the pod network;
	// their listeners are handed to the replicas that have a listener
	// socket (executors.Executor.ListenerSocket).
	Network *podnet.Manager
	// ProcDir is where the node's CPU and memory figures are read (default /proc).
	ProcDir string
	Log     *slog.Logger
}

type entry struct {
	worker *podworker.Worker
	uid    string
	// binding is the replica holding the pod's instances: every call the
	// worker makes goes there, and only its events reach the worker.
	binding *executors.Binding
	// changed, when not nil, is closed at the pod's next status (and
	// then cleared): followers of its logs wait on it. Guarded by
	// Provider.mu.
	changed chan struct{}
	// deleted: DeletePod was called; the pod is stopping or stopped, and
	// a pod made again under its name is another (GetPod). Guarded by
	// Provider.mu.
	deleted bool
}

// Provider runs pods with pod workers.
type Provider struct {
	cfg Config
	ctx context.Context // lives as long as the node agent

	mu     sync.Mutex
	pods   map[string]*entry // namespace/name
	notify func(*v1.Pod)

	statsMu sync.Mutex
	cpuPrev map[string]cpuReading // by instance, pod and node: the last reading, for rates
}

// New returns a provider whose workers live until ctx ends.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	switch {
	case cfg.Client == nil, cfg.Cache == nil, cfg.Pool == nil, cfg.Logs == nil:
		return nil, errors.New("provider: Client, Cache, Pool and Logs are required")
	case cfg.NodeName == "", cfg.StateDir == "":
		return nil, errors.New("provider: NodeName and StateDir are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.ProcDir == "" {
		cfg.ProcDir = "/proc"
	}
	return &Provider{cfg: cfg, ctx: ctx, pods: map[string]*entry{}, cpuPrev: map[string]cpuReading{}}, nil
}

func key(ns, name string) string { return ns + "/" + name }

// NotifyPods registers virtual-kubelet's status callback.
func (p *Provider) NotifyPods(_ context.Context, cb func(*v1.Pod)) {
	p.mu.Lock()
	p.notify = cb
	p.mu.Unlock()
}

func (p *Provider) notifyPod(pod *v1.Pod) {
	p.mu.Lock()
	cb := p.notify
	e := p.pods[key(pod.Namespace, pod.Name)]
	if e != nil && e.uid != string(pod.UID) {
		// A pod made again under the name replaced this one, whose worker
		// is still stopping: its status is not the new pod's.
		p.mu.Unlock()
		return
	}
	if e != nil && e.changed != nil {
		close(e.changed)
		e.changed = nil
	}
	p.mu.Unlock()
	if cb != nil {
		cb(pod)
	}
}

// CreatePod starts a worker for the pod and returns at once; pulling and
// starting happen in the worker and show in the pod's status. It may be
// called again for a pod it already runs.
func (p *Provider) CreatePod(ctx context.Context, pod *v1.Pod) error {
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	if e, ok := p.pods[k]; ok && e.uid == string(pod.UID) {
		p.mu.Unlock()
		e.worker.Update(pod)
		return nil
	}
	p.mu.Unlock()

	flavour, err := p.route(ctx, pod)
	if err != nil {
		return err
	}
	binding := p.cfg.Pool.Bind(ctx, flavour, map[string]string{podworker.LabelPodUID: string(pod.UID)},
		len(pod.Spec.InitContainers)+len(pod.Spec.Containers))
	network := &podNetwork{net: p.cfg.Network, binding: binding}
	w := podworker.New(podworker.Deps{
		Client:           p.cfg.Client,
		Cache:            p.cfg.Cache,
		Executor:         proxy.New(binding),
		Recorder:         p.cfg.Recorder,
		NodeIP:           p.cfg.NodeIP,
		LogSubject:       func(ns, pod, c string) string { return subjects.Logs(p.cfg.NodeName, ns, pod, c) },
		VolumeDir:        filepath.Join(p.cfg.StateDir, "pods", string(pod.UID), "volumes"),
		Backoff:          p.cfg.Backoff,
		AllowedHostPaths: p.cfg.AllowedHostPaths,
		VolumeRefresh:    p.cfg.VolumeRefresh,
		Resync:           p.cfg.InstanceResync,
		Network:          network,
		Notify:           p.notifyPod,
		Log:              p.cfg.Log,
	}, pod)
	e := &entry{worker: w, uid: string(pod.UID), binding: binding}
	p.mu.Lock()
	p.pods[k] = e
	p.mu.Unlock()
	go func() {
		w.Run(p.ctx)
		if p.ctx.Err() != nil {
			return
		}
		binding.Release()
		// Keep the final status readable until virtual-kubelet has written
		// it and removed the pod.
		time.AfterFunc(endedKept, func() {
			p.mu.Lock()
			if p.pods[k] == e {
				delete(p.pods, k)
			}
			p.mu.Unlock()
		})
	}()
	return nil
}

// endedKept is how long a terminated pod's worker stays known, its final
// status readable.
const endedKept = time.Minute

// route picks the pod's executor flavour from its RuntimeClass's handler.
func (p *Provider) route(ctx context.Context, pod *v1.Pod) (string, error) {
	handler := ""
	if rc := pod.Spec.RuntimeClassName; rc != nil && *rc != "" {
		obj, err := p.cfg.Client.NodeV1().RuntimeClasses().Get(ctx, *rc, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("runtimeClass %q: %w", *rc, err)
		}
		handler = obj.Handler
	}
	flavour, err := p.cfg.Pool.Flavour(pod, handler)
	if err != nil || handler != "" || !podworker.DeclaresPorts(pod) || podworker.HandlesRequests(pod) {
		return flavour, err
	}
	// A pod that names no RuntimeClass and declares ports runs where its
	// ports can be served (a pod in handler mode anywhere: the executor
	// serves its ports itself).
	if serving, ok := p.cfg.Pool.ServingFlavour(flavour); ok && serving != flavour {
		p.cfg.Recorder.Eventf(pod, v1.EventTypeNormal, "ServingFlavour",
			"the pod declares ports, which executors of flavour %q cannot hand to a module (their engine has no socket preopen): it runs on flavour %q", flavour, serving)
		return serving, nil
	}
	return flavour, nil
}

// UpdatePod passes a newer version of the pod to its worker; a pod made
// again under the name of one deleted here is created.
func (p *Provider) UpdatePod(ctx context.Context, pod *v1.Pod) error {
	e, err := p.get(pod.Namespace, pod.Name)
	if err != nil {
		return err
	}
	if e.uid != string(pod.UID) {
		return p.CreatePod(ctx, pod)
	}
	e.worker.Update(pod)
	return nil
}

// DeletePod stops the pod within its grace period; the worker then notifies
// the terminal status. It may be called more than once.
func (p *Provider) DeletePod(_ context.Context, pod *v1.Pod) error {
	e, err := p.get(pod.Namespace, pod.Name)
	if err != nil {
		return err
	}
	if pod.UID != "" && e.uid != string(pod.UID) {
		// An older pod of the name, already replaced here.
		return errdefs.NotFoundf("pod %s/%s (uid %s) is not known to this node", pod.Namespace, pod.Name, pod.UID)
	}
	p.mu.Lock()
	e.deleted = true
	p.mu.Unlock()
	grace := 30 * time.Second
	if s := pod.Spec.TerminationGracePeriodSeconds; s != nil {
		grace = time.Duration(*s) * time.Second
	}
	if s := pod.DeletionGracePeriodSeconds; s != nil {
		grace = time.Duration(*s) * time.Second
	}
	e.worker.Update(pod)
	e.worker.Terminate(grace)
	return nil
}

func (p *Provider) get(ns, name string) (*entry, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.pods[key(ns, name)]
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not known to this node", ns, name)
	}
	return e, nil
}

// GetPod returns the pod with its latest status. A pod deleted here is not
// found: virtual-kubelet asks by name, and a pod made again under the name
// (kubectl replace --force, a StatefulSet's) is created only when none is
// (with the same spec, it was taken for the old one and stayed Pending).
func (p *Provider) GetPod(_ context.Context, ns, name string) (*v1.Pod, error) {
	e, err := p.get(ns, name)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	deleted := e.deleted
	p.mu.Unlock()
	if deleted {
		return nil, errdefs.NotFoundf("pod %s/%s was deleted on this node", ns, name)
	}
	return e.worker.Pod(), nil
}

// GetPodStatus returns the pod's latest status.
func (p *Provider) GetPodStatus(ctx context.Context, ns, name string) (*v1.PodStatus, error) {
	pod, err := p.GetPod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods returns every pod the node runs.
func (p *Provider) GetPods(context.Context) ([]*v1.Pod, error) {
	p.mu.Lock()
	entries := make([]*entry, 0, len(p.pods))
	for _, e := range p.pods {
		entries = append(entries, e)
	}
	p.mu.Unlock()
	out := make([]*v1.Pod, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.worker.Pod())
	}
	return out, nil
}

// InstanceChanged routes a replica's instance event to its pod's worker,
// if the pod is bound to that replica.
func (p *Provider) InstanceChanged(replica string, inst instances.Instance) {
	l := inst.Spec.Labels
	p.mu.Lock()
	e, ok := p.pods[key(l[podworker.LabelNamespace], l[podworker.LabelPod])]
	p.mu.Unlock()
	if !ok || e.uid != l[podworker.LabelPodUID] || e.binding.Replica() != replica {
		return
	}
	e.worker.InstanceChanged(inst)
}

// ExecutorLost tells every pod bound to that replica that its instances
// are gone; their next start is placed on a live replica.
func (p *Provider) ExecutorLost(replica, reason string) {
	p.mu.Lock()
	var ws []*podworker.Worker
	for _, e := range p.pods {
		if e.binding.WasOn(replica) {
			ws = append(ws, e.worker)
		}
	}
	p.mu.Unlock()
	for _, w := range ws {
		w.InstancesLost(reason)
	}
}

// GetContainerLogs serves kubectl logs from NATS.
func (p *Provider) GetContainerLogs(ctx context.Context, ns, name, container string, opts kubeletapi.LogOptions) (io.ReadCloser, error) {
	e, err := p.get(ns, name)
	if err != nil {
		return nil, err
	}
	current, previous, ok := e.worker.InstanceIDs(container)
	if !ok {
		var names []string
		for _, c := range e.worker.Pod().Spec.Containers {
			names = append(names, c.Name)
		}
		return nil, errdefs.InvalidInputf("container %s is not valid for pod %s/%s: choose one of %v", container, ns, name, names)
	}
	id := current
	if opts.Previous {
		if previous == "" {
			return nil, errdefs.InvalidInputf("previous terminated container %q in pod %s/%s not found", container, ns, name)
		}
		id = previous
	}
	if id == "" {
		return nil, errdefs.InvalidInputf("container %q in pod %s/%s is waiting to start", container, ns, name)
	}
	o := podlogs.Options{Tail: opts.Tail, LimitBytes: opts.LimitBytes, Timestamps: opts.Timestamps, Follow: opts.Follow, Since: opts.SinceTime}
	if opts.Follow {
		o.Ended = p.ended(ctx, e, e.worker, container, id, opts.Previous)
	}
	if opts.SinceSeconds > 0 {
		o.Since = time.Now().Add(-time.Duration(opts.SinceSeconds) * time.Second)
	}
	rc, err := p.cfg.Logs.Open(ctx, ns, name, container, id, o)
	if errors.Is(err, podlogs.ErrUnavailable) {
		err = kubeletapi.Unavailable(err)
	}
	return rc, err
}

// ended returns a channel closed once instance id of the container has
// ended (its executor publishes its last log records before it records the
// end), so that a follow ends after them, as the kubelet's does. A previous
// instance has ended. It watches the pod's status until ctx ends.
func (p *Provider) ended(ctx context.Context, e *entry, w statusSource, container, id string, previous bool) <-chan struct{} {
	ch := make(chan struct{})
	if previous {
		close(ch)
		return ch
	}
	go func() {
		for {
			p.mu.Lock()
			if e.changed == nil {
				e.changed = make(chan struct{})
			}
			changed := e.changed
			p.mu.Unlock()
			current, _, _ := w.InstanceIDs(container)
			if current != id || instanceEnded(w.Pod(), container, id) {
				close(ch) // replaced by a newer instance: this one ended first
				return
			}
			select {
			case <-changed:
			case <-w.Done():
				close(ch)
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

// statusSource is what ended reads of a pod worker.
type statusSource interface {
	InstanceIDs(container string) (current, previous string, ok bool)
	Pod() *v1.Pod
	Done() <-chan struct{}
}

var _ statusSource = (*podworker.Worker)(nil)

// instanceEnded reports whether pod's status shows instance id of the
// container ended: terminated, or waiting to be created again (a start
// that failed).
func instanceEnded(pod *v1.Pod, container, id string) bool {
	cid := containerIDPrefix + id
	for _, ss := range [][]v1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for _, s := range ss {
			if s.Name != container {
				continue
			}
			if t := s.State.Terminated; t != nil && t.ContainerID == cid {
				return true
			}
			if t := s.LastTerminationState.Terminated; t != nil && t.ContainerID == cid {
				return true
			}
			w := s.State.Waiting
			return s.ContainerID == cid && w != nil && w.Reason != "ContainerCreating" && w.Reason != "PodInitializing"
		}
	}
	return false
}

// containerIDPrefix is the scheme of a wasmlet container's ID in a pod's
// status.
const containerIDPrefix = "wasmlet://"

// unsupportedFormat is the refusal of a request a module cannot serve.
const unsupportedFormat = "%s is not supported for Wasm pods: a WebAssembly module has no shell or process to %s"

// Refuse answers exec and attach, which no Wasm pod supports, and
// port-forward where the kubelet API is given no PortForwarder.
func (p *Provider) Refuse(_ context.Context, action, _, _, _ string) error {
	switch action {
	case "exec":
		return errdefs.InvalidInputf(unsupportedFormat, "exec", "run a command in")
	case "attach":
		return errdefs.InvalidInputf(unsupportedFormat, "attach", "attach to")
	default:
		return errdefs.InvalidInput("port-forward is not served by this node agent")
	}
}

// RemoveOrphanVolumes removes the directories of pods that are not bound
// to this node any more (deleted while the node agent was away), with
// their memory-backed volumes, so that no secret of a gone pod stays.
func (p *Provider) RemoveOrphanVolumes(bound func(uid string) bool) {
	root := filepath.Join(p.cfg.StateDir, "pods")
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.IsDir() || bound(e.Name()) {
			continue
		}
		dir := filepath.Join(root, e.Name())
		p.cfg.Log.Info("removing volumes of a deleted pod", "uid", e.Name())
		if err := podworker.RemoveVolumes(filepath.Join(dir, "volumes")); err != nil {
			p.cfg.Log.Warn("remove volumes of a deleted pod failed", "uid", e.Name(), "err", err)
			continue
		}
		_ = os.RemoveAll(dir)
	}
}

// RemoveOrphans deletes every instance, on every executor, whose pod no
// longer exists (deleted while the node agent was away). exists reports
// whether a pod with that namespace, name and UID is bound to this node.
func (p *Provider) RemoveOrphans(ctx context.Context, exists func(ns, name, uid string) bool) {
	for _, e := range p.cfg.Pool.All() {
		list, _, err := e.Runtime.List(ctx, nil)
		if err != nil {
			p.cfg.Log.Warn("list instances for orphan clean-up failed", "executor", e.ID, "err", err)
			continue
		}
		for _, inst := range list {
			l := inst.Spec.Labels
			uid := l[podworker.LabelPodUID]
			if uid == "" || exists(l[podworker.LabelNamespace], l[podworker.LabelPod], uid) {
				continue
			}
			p.cfg.Log.Info("removing instance of a deleted pod", "instance", inst.ID, "pod", l[podworker.LabelNamespace]+"/"+l[podworker.LabelPod])
			if err := e.Runtime.Delete(ctx, inst.ID, true); err != nil {
				p.cfg.Log.Warn("delete orphan instance failed", "instance", inst.ID, "err", err)
			}
		}
	}
}
