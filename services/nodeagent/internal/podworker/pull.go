package podworker

import (
	"context"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// statusDelay is how long a pod may go without its first status from the
// node, while its module is pulled or its instance created (compiled): a
// module that is cached starts sooner, and then the pod's first status
// write is already Running (one write instead of two).
const statusDelay = 100 * time.Millisecond

// publishingAfter runs fn in the background and, if it takes longer than
// statusDelay, calls publish meanwhile (when publish is not nil): the pod
// is shown ContainerCreating while its module is pulled or compiled rather
// than with no container status at all.
func publishingAfter[T any](publish func(), fn func() T) T {
	done := make(chan T, 1)
	go func() { done <- fn() }()
	select {
	case r := <-done:
		return r
	case <-time.After(statusDelay):
		if publish != nil {
			publish()
		}
		return <-done
	}
}

// resolveAllPublishing resolves in the background and, if that takes
// longer than statusDelay (a pull from the origin), publishes the pod's
// ContainerCreating status meanwhile.
func (w *Worker) resolveAllPublishing(ctx context.Context, pod *v1.Pod, first bool) (*ctr, error) {
	type result struct {
		res    map[*ctr]regcache.Resolved
		failed *ctr
		err    error
	}
	var publish func()
	if first {
		publish = w.publish
	}
	r := publishingAfter(publish, func() result {
		res, failed, err := w.resolveAll(ctx, pod)
		return result{res, failed, err}
	})
	for c, res := range r.res {
		c.image = res
	}
	return r.failed, r.err
}

// createPublishing creates and starts instance id and, if the executor
// takes longer than statusDelay to answer (it compiles a module new to it
// before it replies, seconds for a large one), publishes the pod's status
// meanwhile. publish writes nothing when the status is unchanged (a
// restart).
func (w *Worker) createPublishing(ctx context.Context, id string, spec instances.Spec) (instances.Instance, error) {
	type result struct {
		inst instances.Instance
		err  error
	}
	r := publishingAfter(w.publish, func() result {
		inst, err := w.deps.Executor.Create(ctx, id, spec, true)
		return result{inst, err}
	})
	return r.inst, r.err
}

// resolveAll resolves every container's module that is not yet resolved.
// It runs outside Run's goroutine, so it only reads the containers.
func (w *Worker) resolveAll(ctx context.Context, pod *v1.Pod) (map[*ctr]regcache.Resolved, *ctr, error) {
	out := map[*ctr]regcache.Resolved{}
	creds, err := pullCredentials(ctx, w.deps.Client, pod)
	if err != nil {
		return out, w.all()[0], err
	}
	for _, c := range w.all() {
		if c.image.ModuleDigest != "" {
			continue
		}
		start := time.Now()
		// Like the kubelet, say "Pulling" only for a pull that takes time: a
		// module the cache holds is just reported Pulled.
		pulling := time.AfterFunc(statusDelay, func() {
			w.event(v1.EventTypeNormal, "Pulling", "Pulling image %q", c.spec.Image)
		})
		res, err := w.deps.Cache.Resolve(ctx, regcache.ResolveRequest{
			Reference:   c.spec.Image,
			Policy:      pullPolicy(c.spec.ImagePullPolicy),
			Credentials: creds,
			// Held until the pod is terminated: a cache with a size budget
			// never evicts the module of a pod on the node.
			PinHolder: w.pinHolder(pod),
		})
		pulling.Stop()
		if err != nil {
			return out, c, err
		}
		if res.Warning != "" {
			w.event(v1.EventTypeWarning, "PullWarning", "%s", res.Warning)
		}
		w.event(v1.EventTypeNormal, "Pulled", "Successfully pulled image %q in %s (module %s, %d bytes)",
			c.spec.Image, time.Since(start).Round(time.Millisecond), res.ModuleDigest, res.ModuleSize)
		out[c] = res
	}
	return out, nil, nil
}

func (w *Worker) pinHolder(pod *v1.Pod) string { return "pod/" + string(pod.UID) }

// unpin releases the pod's pins on its modules, where the cache pins.
func (w *Worker) unpin(ctx context.Context) {
	p, ok := w.deps.Cache.(regcache.Pinner)
	if !ok {
		return
	}
	if err := p.Unpin(ctx, regcache.UnpinRequest{Holder: w.pinHolder(w.current())}); err != nil {
		w.log.Warn("unpin modules failed", "err", err)
	}
}

func pullPolicy(p v1.PullPolicy) regcache.PullPolicy {
	switch p {
	case v1.PullAlways:
		return regcache.PullAlways
	case v1.PullNever:
		return regcache.PullNever
	}
	return regcache.PullIfNotPresent
}
