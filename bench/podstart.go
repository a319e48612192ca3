package bench

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// PodStarter creates pods on one node and times each from the create call
// (the client's clock: creationTimestamp has 1 s resolution) to the watch
// event that shows all its containers running — the Kubernetes pod-start
// SLO's method.
type PodStarter struct {
	Client    kubernetes.Interface
	Namespace string
	Node      string // the pods are pinned to it by hostname
	Image     string
	Env       []v1.EnvVar
	// Ports are the container's ports (none: the pod keeps the node's
	// address).
	Ports []v1.ContainerPort
	// WatchClient, when set, is used for the watch: a connection of its own,
	// so that a burst of creates does not hold up the events.
	WatchClient kubernetes.Interface
}

// pod is a pod that tolerates the wasm taint and selects one node.
func (s *PodStarter) pod(name string) *v1.Pod {
	tol := func(e v1.TaintEffect) v1.Toleration {
		return v1.Toleration{Key: "kubernetes.io/arch", Operator: v1.TolerationOpEqual, Value: "wasm32-wasi", Effect: e}
	}
	grace := int64(0)
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"bench": "podstart"}},
		Spec: v1.PodSpec{
			NodeSelector:                  map[string]string{"kubernetes.io/hostname": s.Node},
			Tolerations:                   []v1.Toleration{tol(v1.TaintEffectNoSchedule), tol(v1.TaintEffectNoExecute)},
			TerminationGracePeriodSeconds: &grace,
			AutomountServiceAccountToken:  new(bool),
			Containers:                    []v1.Container{{Name: "app", Image: s.Image, Env: s.Env, Ports: s.Ports}},
		},
	}
}

func allRunning(p *v1.Pod) bool {
	if len(p.Status.ContainerStatuses) != len(p.Spec.Containers) || len(p.Spec.Containers) == 0 {
		return false
	}
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Running == nil {
			return false
		}
	}
	return true
}

// watcher records when each pod was first seen with all containers running.
type watcher struct {
	mu      sync.Mutex
	running map[string]time.Time
	changed chan struct{}
}

// watch follows the namespace's benchmark pods until ctx ends.
//
// The API server closes a watch whose reader it finds behind: on this
// 2-core machine, in about half the 100-pod bursts, it closes every pod
// watch at once, its own components' too (apiserver_terminated_watchers_total,
// which the burst figures report). The watch then resumes from the last
// resourceVersion it delivered, as client-go's reflector does, and the
// events it missed come from the API server's watch cache, each recorded
// as it arrives. Only when that version has left the cache (410 Gone), or
// none was delivered yet, are the pods listed, those already running
// recorded at the time of the list, and the watch resumed from the list.
func (s *PodStarter) watch(ctx context.Context) (*watcher, error) {
	client := s.Client
	if s.WatchClient != nil {
		client = s.WatchClient
	}
	pods := client.CoreV1().Pods(s.Namespace)
	opts := metav1.ListOptions{LabelSelector: "bench=podstart", AllowWatchBookmarks: true}
	w, err := pods.Watch(ctx, opts)
	if err != nil {
		return nil, err
	}
	wt := &watcher{running: map[string]time.Time{}, changed: make(chan struct{}, 1)}
	seen := func(p *v1.Pod, at time.Time) {
		if !allRunning(p) {
			return
		}
		wt.mu.Lock()
		if _, ok := wt.running[p.Name]; !ok {
			wt.running[p.Name] = at
		}
		wt.mu.Unlock()
		select {
		case wt.changed <- struct{}{}:
		default:
		}
	}
	go func() {
		rv := "" // the last resourceVersion delivered
		for {
			for ev := range w.ResultChan() {
				switch o := ev.Object.(type) {
				case *v1.Pod:
					rv = o.ResourceVersion
					if ev.Type != watch.Bookmark {
						seen(o, time.Now())
					}
				case *metav1.Status:
					if o.Code == http.StatusGone {
						rv = ""
					}
				}
			}
			w.Stop()
			for ctx.Err() == nil {
				if rv != "" {
					o := opts
					o.ResourceVersion = rv
					if w, err = pods.Watch(ctx, o); err == nil {
						break
					}
					if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
						rv = ""
					} else {
						time.Sleep(100 * time.Millisecond)
					}
					continue
				}
				list, err := pods.List(ctx, metav1.ListOptions{LabelSelector: opts.LabelSelector})
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				now := time.Now()
				for i := range list.Items {
					seen(&list.Items[i], now)
				}
				rv = list.ResourceVersion
			}
			if ctx.Err() != nil {
				return
			}
		}
	}()
	return wt, nil
}

func (wt *watcher) wait(ctx context.Context, names []string) (map[string]time.Time, error) {
	for {
		wt.mu.Lock()
		done := 0
		for _, n := range names {
			if _, ok := wt.running[n]; ok {
				done++
			}
		}
		out := map[string]time.Time{}
		for _, n := range names {
			out[n] = wt.running[n]
		}
		wt.mu.Unlock()
		if done == len(names) {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%d of %d pods running: %w", done, len(names), ctx.Err())
		case <-wt.changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Singles starts n pods one after another and returns each one's latency.
func (s *PodStarter) Singles(ctx context.Context, prefix string, n int) ([]time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wt, err := s.watch(ctx)
	if err != nil {
		return nil, err
	}
	var out []time.Duration
	for i := range n {
		name := fmt.Sprintf("%s-%d", prefix, i)
		start := time.Now()
		if _, err := s.Client.CoreV1().Pods(s.Namespace).Create(ctx, s.pod(name), metav1.CreateOptions{}); err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		got, err := wt.wait(wctx, []string{name})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("pod %s: %w", name, err)
		}
		out = append(out, got[name].Sub(start))
	}
	return out, nil
}

// Burst creates n pods at once (64 creators in parallel) and returns the
// time from the first create to the last pod running, and each pod's latency.
func (s *PodStarter) Burst(ctx context.Context, prefix string, n int, timeout time.Duration) (time.Duration, []time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wt, err := s.watch(ctx)
	if err != nil {
		return 0, nil, err
	}
	names := make([]string, n)
	starts := make([]time.Time, n)
	jobs := make(chan int)
	errc := make(chan error, n)
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				starts[i] = time.Now()
				if _, err := s.Client.CoreV1().Pods(s.Namespace).Create(ctx, s.pod(names[i]), metav1.CreateOptions{}); err != nil {
					errc <- err
				}
			}
		}()
	}
	for i := range n {
		names[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	first := time.Now()
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return 0, nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	got, err := wt.wait(wctx, names)
	if err != nil {
		return 0, nil, err
	}
	var last time.Time
	lat := make([]time.Duration, n)
	for i, name := range names {
		lat[i] = got[name].Sub(starts[i])
		if got[name].After(last) {
			last = got[name]
		}
	}
	return last.Sub(first), lat, nil
}

// DeleteAll removes the benchmark's pods in the namespace at once.
func (s *PodStarter) DeleteAll(ctx context.Context) error {
	zero := int64(0)
	return s.Client.CoreV1().Pods(s.Namespace).DeleteCollection(ctx,
		metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{LabelSelector: "bench=podstart"})
}
