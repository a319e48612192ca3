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
// containerPort needs none of it and keeps the node's address; so does a
// pod with ports on a node without a pod network, or with hostNetwork:
// its ports are opened on the node's address, as hostPorts would be.
type Network interface {
	// Setup gives the pod its network namespace and addresses; called
	// again, it returns the same. ErrNoPodNetwork: the node has none.
	Setup(ctx context.Context, pod *v1.Pod) (Attachment, error)
	// Serve opens the listeners in the pod's namespace (att.NetNS; empty:
	// the node's own, on the address att.IPs[0]) and hands them to the
	// executor for instance id, before its Create. ErrExecutorListens
	// means this executor cannot be handed sockets and opens them itself
	// (Spec.NetworkNamespace, Spec.ListenAddress); the error's text says
	// what to do should that fail, and is added to the container's
	// status and event when the instance fails ListenFailed.
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

var (
	// ErrExecutorListens: see Network.Serve.
	ErrExecutorListens = errors.New("the executor opens the listeners itself")
	// ErrNoPodNetwork: see Network.Setup.
	ErrNoPodNetwork = errors.New("this node has no pod network")
)

// NeedsNetwork reports whether the pod gets a namespace and an address of
// its own on a node with a pod network: it declares a port and is not
// hostNetwork (which keeps the node's).
func NeedsNetwork(pod *v1.Pod) bool {
	return !pod.Spec.HostNetwork && DeclaresPorts(pod)
}

// DeclaresPorts reports whether a container of the pod declares a port,
// which the node serves (see Network).
func DeclaresPorts(pod *v1.Pod) bool {
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
	if errors.Is(err, ErrNoPodNetwork) {
		if !w.noNetworkSaid {
			w.noNetworkSaid = true
			w.event(v1.EventTypeNormal, "PortsOnNodeAddress", "this node has no pod network: the pod keeps the node's address %s and its containerPorts are opened there, as hostPorts would be (another pod on this node with the same port cannot start until this one ends)", w.deps.NodeIP)
		}
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

// serve readies a container's listeners for the instance id: opened in
// the pod's namespace, or on the node's address when the pod has none
// (no pod network, or hostNetwork), and handed over, or named for the
// executor to open. A container without ports gets none.
func (w *Worker) serve(ctx context.Context, c *ctr, id string, spec *instances.Spec) error {
	listeners := listenersOf(&c.spec)
	if len(listeners) == 0 || w.deps.Network == nil {
		return nil
	}
	att := Attachment{IPs: []string{w.deps.NodeIP}} // the node's own namespace and address
	if w.net != nil {
		att = *w.net
	}
	spec.Listeners = listeners
	err := w.deps.Network.Serve(ctx, att, id, listeners)
	c.selfListen = ""
	switch {
	case err == nil:
		spec.HandedListeners = true
	case errors.Is(err, ErrExecutorListens):
		c.selfListen = err.Error()
		spec.NetworkNamespace = att.NetNS
		if att.NetNS == "" {
			spec.ListenAddress = w.deps.NodeIP
		}
	default:
		return fmt.Errorf("open the container's ports: %w", err)
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
