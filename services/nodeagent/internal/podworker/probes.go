package podworker

import (
	"context"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/services/nodeagent/internal/prober"
)

// probing is a container instance's probes (package prober): one prober
// per running instance, made anew for each (a new instance starts unready,
// with fresh counts, as a new container does on the kubelet).
type probing struct {
	instance string
	w        *prober.Worker
	done     chan struct{} // closed when the prober is stopped
	killing  bool          // a failed liveness or startup probe stops the instance
}

// admitProbes refuses, before anything runs, a pod whose probes cannot
// run: exec probes (a module has no processes) and probes that could never
// succeed. The pod fails, its status and a Warning event saying why.
func (w *Worker) admitProbes() bool {
	pod := w.current()
	for _, cs := range [][]v1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			// The address is checked when the probes start: any one will do.
			if _, err := prober.New(prober.Config{Container: &cs[i], PodIP: w.deps.NodeIP}); err != nil {
				msg := fmt.Sprintf("Pod was rejected: %v", err)
				w.event(v1.EventTypeWarning, "UnsupportedProbe", "%s", msg)
				w.mu.Lock()
				w.failReason, w.failMsg = "UnsupportedProbe", msg
				w.mu.Unlock()
				return false
			}
		}
	}
	return true
}

// syncProbes starts the probes of containers that run, stops those of
// containers that do not, reads what they found (c.unready), and stops an
// instance whose liveness or startup probe failed for good: its end then
// goes through the restart policy.
func (w *Worker) syncProbes(ctx context.Context) {
	for _, c := range w.containers {
		running := c.state.Running != nil && c.instanceID != ""
		if p := c.probes; p != nil && (!running || p.instance != c.instanceID) {
			w.stopProbes(c)
		}
		if !running {
			c.unready = false
			continue
		}
		if c.probes == nil && hasProbes(&c.spec) {
			w.startProbes(c)
		}
		if c.probes == nil {
			continue
		}
		st := c.probes.w.Status()
		c.unready = !st.Ready
		if st.Restart && !c.probes.killing {
			c.probes.killing = true
			c.probeKilled = c.instanceID
			w.event(v1.EventTypeNormal, "Killing", "%s", prober.KillingMessage(c.spec.Name, st.RestartKind))
			grace := w.gracePeriod()
			if s := st.TerminationGracePeriodSeconds; s != nil {
				grace = time.Duration(*s) * time.Second
			}
			id := c.instanceID
			go func() {
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace+30*time.Second)
				defer cancel()
				if _, err := w.deps.Executor.Stop(sctx, id, grace); err != nil {
					w.log.Warn("stop instance after a failed probe", "instance", id, "err", err)
				}
			}()
		}
	}
}

func hasProbes(c *v1.Container) bool {
	return c.ReadinessProbe != nil || c.LivenessProbe != nil || c.StartupProbe != nil
}

func (w *Worker) startProbes(c *ctr) {
	ip := w.deps.NodeIP
	if ips := w.podIPs(); len(ips) > 0 {
		ip = ips[0]
	}
	pw, err := prober.New(prober.Config{
		Container: &c.spec,
		PodIP:     ip,
		StartedAt: c.state.Running.StartedAt.Time,
		Record:    func(e prober.Event) { w.event(e.Type, e.Reason, "%s", e.Message) },
	})
	if err != nil { // admitted: cannot happen but for a changed spec
		w.log.Warn("probes not run", "container", c.spec.Name, "err", err)
		return
	}
	p := &probing{instance: c.instanceID, w: pw, done: make(chan struct{})}
	c.probes = p
	pw.Start()
	go func() {
		for {
			select {
			case <-pw.Changed():
				w.poke()
			case <-p.done:
				return
			}
		}
	}()
}

func (w *Worker) stopProbes(c *ctr) {
	if c.probes == nil {
		return
	}
	c.probes.w.Stop()
	close(c.probes.done)
	c.probes = nil
}

// gracePeriod is the pod's terminationGracePeriodSeconds (default 30 s).
func (w *Worker) gracePeriod() time.Duration {
	if s := w.current().Spec.TerminationGracePeriodSeconds; s != nil {
		return time.Duration(*s) * time.Second
	}
	return 30 * time.Second
}
