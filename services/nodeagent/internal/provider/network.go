package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/handoff"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/executors"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podnet"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podworker"
)

// podNetwork is one pod's podworker.Network: its CNI attachment (podnet)
// and its listeners, opened by the node agent inside the pod's namespace
// (or on the node's address, for a pod without one) and handed to the
// replica holding the pod over that replica's listener socket
// (executors.Executor.ListenerSocket: the supervised executor's, one given
// with --executor FLAVOUR=ADDRESS,listener-socket=PATH, or one announced).
// A replica without one is told the namespace and opens them itself, which
// needs the right to enter it.
type podNetwork struct {
	net     *podnet.Manager // nil: the node has no pod network
	binding *executors.Binding
}

var _ podworker.Network = (*podNetwork)(nil)

func (n *podNetwork) Setup(ctx context.Context, pod *v1.Pod) (podworker.Attachment, error) {
	if n.net == nil {
		return podworker.Attachment{}, podworker.ErrNoPodNetwork
	}
	att, err := n.net.Setup(ctx, podnet.PodOf(pod), podnet.HostPorts(&pod.Spec))
	if err != nil {
		return podworker.Attachment{}, err
	}
	out := podworker.Attachment{NetNS: att.NetNS}
	for _, ip := range att.IPs {
		out.IPs = append(out.IPs, ip.String())
	}
	return out, nil
}

func (n *podNetwork) Teardown(ctx context.Context, pod *v1.Pod) error {
	if n.net == nil {
		return nil
	}
	return n.net.Teardown(ctx, podnet.PodOf(pod))
}

func (n *podNetwork) Serve(ctx context.Context, att podworker.Attachment, id string, listeners []instances.Listener) error {
	socket := n.binding.ListenerSocket()
	if socket == "" {
		return fmt.Errorf("%w: executor %s has no listener socket known to the node agent, so it must open the pod's ports itself, which only an executor allowed to enter network namespaces can (root, --confine=false); "+
			"rather, start the executor with --listener-socket PATH on a filesystem it shares with the node agent and tell the node agent that path: --executor FLAVOUR=ADDRESS,listener-socket=PATH, or, for an executor that announces itself, the same --listener-socket is announced",
			podworker.ErrExecutorListens, n.binding)
	}
	files, err := listenIn(att, listeners)
	defer func() {
		for _, h := range files {
			h.File.Close()
		}
	}()
	if err != nil {
		return err
	}
	if err := handoff.Send(ctx, socket, id, files); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: the node agent sees no socket at %s, the listener socket of executor %s: the executor must be started with --listener-socket %s and share that directory with the node agent (one host, or a volume mounted at the same path in both containers)", err, socket, n.binding, socket)
		}
		return err
	}
	return nil
}

// listenIn opens a TCP listener for each of listeners on every address of
// the pod's namespace, or, for a pod without one (att.NetNS empty), on the
// node's address att.IPs[0] in the node agent's own; it returns them as
// files (the listeners themselves are closed: the files hold the sockets).
func listenIn(att podworker.Attachment, listeners []instances.Listener) ([]handoff.Handed, error) {
	host, where := "", "in the pod"
	open := func(f func() error) error { return podnet.InNamespace(att.NetNS, f) }
	if att.NetNS == "" {
		if len(att.IPs) == 0 || att.IPs[0] == "" {
			return nil, errors.New("the pod has no network namespace and the node no address to open its ports on")
		}
		host = att.IPs[0]
		where = "on the node's address " + host + " (the pod has no address of its own: the node has no pod network, or the pod uses hostNetwork), by another pod or process"
		open = func(f func() error) error { return f() }
	}
	var out []handoff.Handed
	err := open(func() error {
		for _, l := range listeners {
			if l.Protocol != "" && l.Protocol != instances.ProtocolTCP {
				return fmt.Errorf("port %d/%s: only TCP ports are served (WASI preview 1 accepts stream connections only)", l.Port, l.Protocol)
			}
			tl, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(int(l.Port))))
			if err != nil {
				if errors.Is(err, syscall.EADDRINUSE) {
					return fmt.Errorf("port %d (%s) is already in use %s: %w", l.Port, l.FDName(), where, err)
				}
				return fmt.Errorf("port %d (%s): %w", l.Port, l.FDName(), err)
			}
			f, err := tl.(*net.TCPListener).File()
			tl.Close()
			if err != nil {
				return err
			}
			out = append(out, handoff.Handed{Name: l.FDName(), File: f})
		}
		return nil
	})
	return out, err
}

// Forwardable implements kubeletapi.PortForwarder: a pod's ports can be
// reached once it has an address: its own (on the pod network), or the
// node's for a pod that declares ports (see Forward).
func (p *Provider) Forwardable(_ context.Context, ns, name string) (types.UID, error) {
	e, err := p.get(ns, name)
	if err != nil {
		return "", err
	}
	pod := e.worker.Pod()
	if ip := pod.Status.PodIP; ip == "" || ip == p.cfg.NodeIP && !podworker.DeclaresPorts(pod) {
		return "", errdefs.InvalidInputf("pod %s/%s has no address of its own and declares no containerPorts: it serves no port to forward to", ns, name)
	}
	return pod.UID, nil
}

// Forward implements kubeletapi.PortForwarder: it connects to the port at
// the pod's address from the node and copies both ways until either side
// ends. A pod on the node's address is reached only at the ports it
// declares: the node's other ports are not the pod's.
func (p *Provider) Forward(ctx context.Context, ns, name string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	e, err := p.get(ns, name)
	if err != nil {
		return err
	}
	pod := e.worker.Pod()
	if pod.Status.PodIP == p.cfg.NodeIP && !declaresPort(pod, port) {
		return fmt.Errorf("pod %s/%s shares the node's address and does not declare port %d: only its containerPorts are forwarded", ns, name, port)
	}
	addr := net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(int(port)))
	d := net.Dialer{Timeout: 10 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("pod %s/%s port %d: %w", ns, name, port, err)
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(conn, stream); conn.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(stream, conn); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

// declaresPort reports whether a container of pod declares port.
func declaresPort(pod *v1.Pod, port int32) bool {
	for _, cs := range [][]v1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			for _, cp := range c.Ports {
				if cp.ContainerPort == port {
					return true
				}
			}
		}
	}
	return false
}
