package provider

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"

	v1 "k8s.io/api/core/v1"

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
