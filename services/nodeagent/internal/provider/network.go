package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
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
// and handed to the replica holding the pod when that replica has a
// listener socket (the supervised executor); another replica is told the
// namespace and opens them itself, which needs the right to enter it.
type podNetwork struct {
	net     *podnet.Manager
	binding *executors.Binding
	// sockets are the replicas' listener sockets, by replica ID.
	sockets map[string]string
}

var _ podworker.Network = (*podNetwork)(nil)

func (n *podNetwork) Setup(ctx context.Context, pod *v1.Pod) (podworker.Attachment, error) {
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
	return n.net.Teardown(ctx, podnet.PodOf(pod))
}

func (n *podNetwork) Serve(ctx context.Context, att podworker.Attachment, id string, listeners []instances.Listener) error {
	socket := n.sockets[n.binding.Replica()]
	if socket == "" {
		return podworker.ErrExecutorListens
	}
	files, err := listenIn(att.NetNS, listeners)
	defer func() {
		for _, h := range files {
			h.File.Close()
		}
	}()
	if err != nil {
		return err
	}
	return handoff.Send(ctx, socket, id, files)
}

// listenIn opens a TCP listener for each of listeners on every address of
// the namespace at netns, and returns them as files (the listeners
// themselves are closed: the files hold the sockets).
func listenIn(netns string, listeners []instances.Listener) ([]handoff.Handed, error) {
	var out []handoff.Handed
	err := podnet.InNamespace(netns, func() error {
		for _, l := range listeners {
			if l.Protocol != "" && l.Protocol != instances.ProtocolTCP {
				return fmt.Errorf("port %d/%s: only TCP ports are served (WASI preview 1 accepts stream connections only)", l.Port, l.Protocol)
			}
			tl, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(int(l.Port))))
			if err != nil {
				if errors.Is(err, syscall.EADDRINUSE) {
					return fmt.Errorf("port %d (%s) is already in use in the pod: %w", l.Port, l.FDName(), err)
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
// reached once it has an address of its own (it declares ports and is on
// the pod network).
func (p *Provider) Forwardable(_ context.Context, ns, name string) (types.UID, error) {
	e, err := p.get(ns, name)
	if err != nil {
		return "", err
	}
	pod := e.worker.Pod()
	if ip := pod.Status.PodIP; ip == "" || ip == p.cfg.NodeIP {
		return "", errdefs.InvalidInputf("pod %s/%s has no address of its own: only a pod that declares containerPorts, on a node with a pod network, serves its ports", ns, name)
	}
	return pod.UID, nil
}

// Forward implements kubeletapi.PortForwarder: it connects to the port at
// the pod's address from the node and copies both ways until either side
// ends.
func (p *Provider) Forward(ctx context.Context, ns, name string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	e, err := p.get(ns, name)
	if err != nil {
		return err
	}
	addr := net.JoinHostPort(e.worker.Pod().Status.PodIP, strconv.Itoa(int(port)))
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
