package podworker

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// Network puts a pod on the pod network and serves its ports: the node's
// CNI attachments (package podnet) and the hand-over of listening sockets
// to the pod's executor, wired by the agent. A pod that declares no
// containerPort needs none of it and keeps the node's address.
type Network interface {
	// Setup gives the pod its network namespace and addresses; called
	// again, it returns the same.
	Setup(ctx context.Context, pod *v1.Pod) (Attachment, error)
	// Serve opens the listeners in the pod's namespace and hands them to
	// the executor for instance id, before its Create. ErrExecutorListens
	// means this executor cannot be handed sockets and opens them itself
	// in the namespace (Spec.NetworkNamespace).
	Serve(ctx context.Context, att Attachment, id string, listeners []instances.Listener) error
	// Teardown removes the pod's namespace and addresses; a pod without
	// them is no error.
	Teardown(ctx context.Context, pod *v1.Pod) error
}

// Attachment is a pod's place on the network.
type Attachment struct {
	NetNS string   // the namespace's path
	IPs   []string // status.podIPs, in order
}

// ErrExecutorListens: see Network.Serve.
var ErrExecutorListens = errors.New("the executor opens the listeners itself")

// NeedsNetwork reports whether the pod declares a port, and so gets a
// namespace and an address of its own (a hostNetwork pod keeps the
// node's).
func NeedsNetwork(pod *v1.Pod) bool {
	if pod.Spec.HostNetwork {
		return false
	}
	for _, cs := range [][]v1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			if len(c.Ports) > 0 {
				return true
			}
		}
	}
	return false
}

// listenersOf is what a container's ports become: a listener per TCP
// port, named as the port (unnamed: port-<n>). Other protocols are refused
// by the executor, with the port named.
func listenersOf(c *v1.Container) []instances.Listener {
	var out []instances.Listener
	for _, p := range c.Ports {
		out = append(out, instances.Listener{Name: p.Name, Port: p.ContainerPort, Protocol: instances.Protocol(p.Protocol)})
	}
	return out
}

// setupNetwork puts a pod that declares ports on the network. It reports
// false, after publishing why and waiting out a back-off, when that
// failed: the kubelet's FailedCreatePodSandBox, with the containers
// waiting in ContainerCreating.
func (w *Worker) setupNetwork(ctx context.Context) bool {
	pod := w.current()
	if w.net != nil || !NeedsNetwork(pod) {
		return true
	}
	if w.deps.Network == nil {
		if !w.noNetworkSaid {
			w.noNetworkSaid = true
			w.event(v1.EventTypeWarning, "PortsNotServed", "containerPorts are not served: this node has no pod network (give the node agent a CNI config); the pod runs with the node's address")
		}
		return true
	}
	att, err := w.deps.Network.Setup(ctx, pod)
	if err == nil {
		w.net = &att
		w.netAttempt = 0
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	msg := fmt.Sprintf("Failed to create pod sandbox: %v", err)
	w.log.Warn("pod network setup failed", "err", err)
	w.event(v1.EventTypeWarning, "FailedCreatePodSandBox", "%s", msg)
	for _, c := range w.all() {
		c.state = waiting("ContainerCreating", msg)
	}
	w.publish()
	sleep(ctx, w.deps.Backoff.Delay(w.netAttempt))
	w.netAttempt++
	return false
}

// serve readies a container's listeners for the instance id: handed over
// in the pod's namespace, or named for the executor to open there. A
// container without ports, or a pod off the network, gets none.
func (w *Worker) serve(ctx context.Context, c *ctr, id string, spec *instances.Spec) error {
	listeners := listenersOf(&c.spec)
	if len(listeners) == 0 || w.net == nil {
		return nil
	}
	spec.Listeners = listeners
	err := w.deps.Network.Serve(ctx, *w.net, id, listeners)
	switch {
	case err == nil:
		spec.HandedListeners = true
	case errors.Is(err, ErrExecutorListens):
		spec.NetworkNamespace = w.net.NetNS
	default:
		return fmt.Errorf("open the container's ports in the pod's network: %w", err)
	}
	return nil
}

// teardownNetwork takes the pod off the network once its instances have
// stopped, trying for a while: an address left behind is lost to the node
// until the node agent's next start cleans it up.
func (w *Worker) teardownNetwork(ctx context.Context) {
	if w.deps.Network == nil || !NeedsNetwork(w.current()) {
		return
	}
	for attempt := 0; ; attempt++ {
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		err := w.deps.Network.Teardown(tctx, w.current())
		cancel()
		if err == nil {
			w.net = nil
			return
		}
		w.log.Warn("pod network teardown failed", "err", err, "attempt", attempt)
		if attempt == 2 || !sleep(ctx, w.deps.Backoff.Delay(attempt)) {
			w.event(v1.EventTypeWarning, "FailedKillPod", "error killing pod: failed to destroy network for sandbox: %v", err)
			return
		}
	}
}

// podIPs are the pod's own addresses, if it is on the network.
func (w *Worker) podIPs() []string {
	if w.net == nil {
		return nil
	}
	return w.net.IPs
}
