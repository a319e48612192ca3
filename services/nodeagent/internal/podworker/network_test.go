package podworker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/instancestest"
)

// fakeNetwork records what the Worker asks of the pod network.
type fakeNetwork struct {
	mu        sync.Mutex
	setups    int
	failFirst int   // Setup fails this many times first
	none      bool  // the node has no pod network (ErrNoPodNetwork)
	serveErr  error // what Serve answers
	served    map[string][]instances.Listener
	servedAt  map[string]Attachment
	teardowns int
	ips       []string // the pod's addresses; default 10.244.0.7 and fd00::7
}

func (n *fakeNetwork) Setup(_ context.Context, pod *v1.Pod) (Attachment, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.setups++
	if n.none {
		return Attachment{}, ErrNoPodNetwork
	}
	if n.setups <= n.failFirst {
		return Attachment{}, errors.New("plugin type=\"bridge\" failed (add): no IP addresses available")
	}
	ips := n.ips
	if ips == nil {
		ips = []string{"10.244.0.7", "fd00::7"}
	}
	return Attachment{NetNS: "/run/netns/" + string(pod.UID), IPs: ips}, nil
}

func (n *fakeNetwork) Serve(_ context.Context, att Attachment, id string, ls []instances.Listener) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.served == nil {
		n.served, n.servedAt = map[string][]instances.Listener{}, map[string]Attachment{}
	}
	n.served[id], n.servedAt[id] = ls, att
	return n.serveErr
}

func (n *fakeNetwork) Teardown(context.Context, *v1.Pod) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.teardowns++
	return nil
}

func (n *fakeNetwork) count() (setups, teardowns int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.setups, n.teardowns
}

func serverPod() *v1.Pod {
	pod := testPod(v1.RestartPolicyAlways, nil, "web")
	pod.Spec.Containers[0].Ports = []v1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: v1.ProtocolTCP}, {ContainerPort: 9090}}
	return pod
}

// A pod that declares ports gets its own addresses in its status, and its
// container's ports are handed to the executor as listeners; a failed
// network setup shows as the kubelet's FailedCreatePodSandBox and is
// retried; deleting the pod takes it off the network.
func TestPodOnTheNetwork(t *testing.T) {
	exec := &instancestest.Fake{Listeners: true, ListenerHandoff: true}
	net := &fakeNetwork{failFirst: 1}
	h := runWith(t, exec, serverPod(), config{backoff: testBackoff, network: net})
	st := h.waitFor("Running", func(st v1.PodStatus) bool { return st.Phase == v1.PodRunning })
	if !h.events.has("FailedCreatePodSandBox: Failed to create pod sandbox: plugin type=\"bridge\" failed") {
		t.Errorf("events %v: want FailedCreatePodSandBox for the failed setup", h.events.all)
	}
	if !h.saw(func(st v1.PodStatus) bool {
		w := st.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "ContainerCreating"
	}) {
		t.Error("no status showed the container waiting in ContainerCreating while the network failed")
	}
	if st.PodIP != "10.244.0.7" || len(st.PodIPs) != 2 || st.PodIPs[1].IP != "fd00::7" || st.HostIP != "10.0.0.1" {
		t.Errorf("podIP %q podIPs %v hostIP %q: want the pod's own addresses and the node's host IP", st.PodIP, st.PodIPs, st.HostIP)
	}
	id := instanceID(h.w.Pod(), "web", 0)
	inst, err := exec.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	want := []instances.Listener{{Name: "http", Port: 8080, Protocol: instances.ProtocolTCP}, {Port: 9090}}
	if !slices.Equal(inst.Spec.Listeners, want) || !inst.Spec.HandedListeners || inst.Spec.NetworkNamespace != "" {
		t.Errorf("spec listeners %+v handed %v netns %q: want %+v handed over", inst.Spec.Listeners, inst.Spec.HandedListeners, inst.Spec.NetworkNamespace, want)
	}
	if !slices.Equal(net.served[id], want) {
		t.Errorf("served %+v for %s", net.served, id)
	}
	h.terminate()
	if setups, teardowns := net.count(); setups != 2 || teardowns != 1 {
		t.Errorf("setups %d teardowns %d: want 2 (one failed) and 1", setups, teardowns)
	}
}

// An executor that cannot be handed sockets is told the pod's namespace to
// open them in.
func TestExecutorListensInPodNamespace(t *testing.T) {
	exec := &instancestest.Fake{Listeners: true}
	net := &fakeNetwork{serveErr: ErrExecutorListens}
	h := runWith(t, exec, serverPod(), config{backoff: testBackoff, network: net})
	h.waitFor("Running", func(st v1.PodStatus) bool { return st.Phase == v1.PodRunning })
	inst, err := exec.Get(context.Background(), instanceID(h.w.Pod(), "web", 0))
	if err != nil {
		t.Fatal(err)
	}
	if inst.Spec.HandedListeners || inst.Spec.NetworkNamespace != "/run/netns/uid-1" || len(inst.Spec.Listeners) != 2 {
		t.Errorf("spec handed %v netns %q listeners %v: want the namespace named", inst.Spec.HandedListeners, inst.Spec.NetworkNamespace, inst.Spec.Listeners)
	}
}

// An executor that opens the pod's listeners itself and cannot (a confined
// one may not enter the namespace): the container's status and event say
// what the executor said and what to do about it, as the Network told.
func TestExecutorListensAndCannot(t *testing.T) {
	exec := &instancestest.Fake{Listeners: true, Behave: func(_ string, s instances.Spec) instancestest.Outcome {
		if s.NetworkNamespace != "" {
			return instancestest.FailsWith(instances.ReasonListenFailed, "enter network namespace "+s.NetworkNamespace+": operation not permitted")
		}
		return instancestest.Outcome{}
	}}
	hint := "give the node agent the executor's listener socket"
	net := &fakeNetwork{serveErr: fmt.Errorf("%w: %s", ErrExecutorListens, hint)}
	h := runWith(t, exec, serverPod(), config{backoff: testBackoff, network: net})
	st := h.waitFor("CreateContainerError", func(st v1.PodStatus) bool {
		if len(st.ContainerStatuses) == 0 {
			return false
		}
		w := st.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "CreateContainerError"
	})
	msg := st.ContainerStatuses[0].State.Waiting.Message
	if !strings.Contains(msg, "operation not permitted") || !strings.Contains(msg, hint) {
		t.Errorf("waiting message %q: want the executor's error and what to do", msg)
	}
	h.events.mu.Lock()
	said := slices.ContainsFunc(h.events.all, func(e string) bool {
		return strings.HasPrefix(e, "Failed: Error: enter network namespace") && strings.Contains(e, hint)
	})
	h.events.mu.Unlock()
	if !said {
		t.Errorf("events %v: want one saying what to do", h.events.all)
	}
}

// A pod without ports stays on the node's address and costs no network
// setup; on a node without a pod network, a pod's ports are opened on the
// node's address, and it says so.
func TestNoPortsNoNetwork(t *testing.T) {
	net := &fakeNetwork{}
	h := runWith(t, &instancestest.Fake{}, testPod(v1.RestartPolicyAlways, nil, "c"), config{backoff: testBackoff, network: net})
	st := h.waitFor("Running", func(st v1.PodStatus) bool { return st.Phase == v1.PodRunning })
	h.terminate()
	if setups, teardowns := net.count(); setups+teardowns != 0 || st.PodIP != "10.0.0.1" {
		t.Errorf("setups %d teardowns %d podIP %q: want none and the node's address", setups, teardowns, st.PodIP)
	}

	// No pod network: the ports are opened on the node's address.
	exec := &instancestest.Fake{Listeners: true, ListenerHandoff: true}
	net = &fakeNetwork{none: true}
	h = runWith(t, exec, serverPod(), config{backoff: testBackoff, network: net})
	st = h.waitFor("Running", func(st v1.PodStatus) bool { return st.Phase == v1.PodRunning })
	if !h.events.has("PortsOnNodeAddress: this node has no pod network: the pod keeps the node's address 10.0.0.1") {
		t.Errorf("events %v: want PortsOnNodeAddress", h.events.all)
	}
	id := instanceID(h.w.Pod(), "web", 0)
	net.mu.Lock()
	att, ls := net.servedAt[id], net.served[id]
	net.mu.Unlock()
	if att.NetNS != "" || !slices.Equal(att.IPs, []string{"10.0.0.1"}) || len(ls) != 2 || st.PodIP != "10.0.0.1" {
		t.Errorf("served %+v at %+v, podIP %q: want both ports on the node's address", ls, att, st.PodIP)
	}
	if inst, _ := exec.Get(context.Background(), id); !inst.Spec.HandedListeners {
		t.Errorf("spec %+v: want the listeners handed over", inst.Spec)
	}
	h.terminate()

	// A worker given no Network serves no ports.
	exec = &instancestest.Fake{}
	h = runWith(t, exec, serverPod(), config{backoff: testBackoff})
	h.waitFor("Running", func(st v1.PodStatus) bool { return st.Phase == v1.PodRunning })
	if !h.events.has("PortsNotServed: containerPorts are not served") {
		t.Errorf("events %v: want PortsNotServed", h.events.all)
	}
	inst, _ := exec.Get(context.Background(), instanceID(h.w.Pod(), "web", 0))
	if len(inst.Spec.Listeners) != 0 {
		t.Errorf("listeners %v without a pod network", inst.Spec.Listeners)
	}
}
