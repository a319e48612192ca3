package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wasmlet/wasmlet/internal/testharness/localcluster"
)

// NetNode is the wasmlet node of the serve section's pod-network part:
// --pod-network=bridge, --default-executor wazero.
const NetNode = "bench-wasmlet-net"

// podNetwork: pod start on a node that gives pods with containerPorts a
// network namespace and an address of their own (CNI bridge), with a
// containerPort and without, beside the no-op node; testdata/wasm/idle,
// single pods one after another (opts.Singles), module cached. It needs
// root (the CNI plugins); without, it returns one figure saying so.
func podNetwork(ctx context.Context, s *Stack, opts Options) (_ []Figure, err error) {
	if os.Geteuid() != 0 {
		return []Figure{{Name: "pod start with a network namespace: skipped, not root", Method: "--pod-network=bridge needs root (CNI plugins, network namespaces)"}}, nil
	}
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	out, err := exec.Command("bash", filepath.Join(root, "hack", "cni", "build.sh")).Output()
	if err != nil {
		return nil, fmt.Errorf("hack/cni/build.sh: %w", err)
	}
	plugins := strings.TrimSpace(string(out))
	stop, err := s.startNetNode(ctx, plugins)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, stop()) }()

	port := []v1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: v1.ProtocolTCP}}
	runs := []struct {
		node, label string
		ports       []v1.ContainerPort
	}{
		{NoopNode, "no-op node", nil},
		{NetNode, "without a containerPort (the node's address)", nil},
		{NetNode, "with a containerPort (a network namespace, an address, the port opened in it)", port},
	}
	var figs []Figure
	medians := make([]float64, len(runs))
	for i, r := range runs {
		ps := &PodStarter{Client: s.Client, WatchClient: s.WatchClient, Node: r.node, Image: s.IdleImage, Ports: r.ports}
		if ps.Namespace, err = s.namespace(ctx, fmt.Sprintf("bench-podnet-%d", i)); err != nil {
			return figs, err
		}
		if _, err := ps.Singles(ctx, "warmup", 1); err != nil {
			return figs, fmt.Errorf("%s %s warm-up: %w", r.node, r.label, err)
		}
		d, err := ps.Singles(ctx, "single", opts.Singles)
		if err != nil {
			return figs, fmt.Errorf("%s %s: %w (node agent log: %s)", r.node, r.label, err, localcluster.ServiceLog(s.dir, "nodeagent-net"))
		}
		f := Durations(fmt.Sprintf("pod start, single, %s, %s", r.node, r.label),
			"create call → watch shows all containers running; testdata/wasm/idle, pods one after another (each left running), module cached; "+NetNode+" runs --pod-network=bridge --default-executor wazero with the CNI plugins of hack/cni", d)
		medians[i] = f.Median
		figs = append(figs, f)
		if err := s.clear(ctx, ps); err != nil {
			return figs, err
		}
	}
	if medians[0] > 0 && medians[1] > 0 {
		figs = append(figs,
			Values("pod start, with a containerPort / without, "+NetNode, "median over median, same node, same run: the cost of the pod's network namespace (CNI ADD, the port opened inside and handed to the executor)", "x", []float64{medians[2] / medians[1]}),
			Values("pod start, ms added by the network namespace, "+NetNode, "median with a containerPort − median without", "ms", []float64{medians[2] - medians[1]}),
			Values("ratio "+NetNode+" with a containerPort / no-op node, single", "median over the no-op node's median, same run", "x", []float64{medians[2] / medians[0]}),
			Values("ratio "+NetNode+" without a containerPort / no-op node, single", "median over the no-op node's median, same run", "x", []float64{medians[1] / medians[0]}))
	}
	return figs, nil
}

// startNetNode starts NetNode's node agent and returns what stops it (and
// removes the Node, its mounts and the bridge).
func (s *Stack) startNetNode(ctx context.Context, plugins string) (func() error, error) {
	// The node's bridge is named after it (other nodes on this machine
	// have their own): a stale one of an earlier run goes first.
	bridge := localcluster.NodeBridge(NetNode)
	exec.Command("ip", "link", "delete", bridge).Run()
	_, stopNode, err := s.startNodeAgent(ctx, NetNode, "nodeagent-net", filepath.Join(s.dir, "node-net"),
		"--pod-network", "bridge", "--default-executor", "wazero", "--cni-bin-dir", plugins)
	stop := func() error {
		var err error
		if stopNode != nil {
			err = stopNode()
		}
		exec.Command("ip", "link", "delete", bridge).Run()
		return err
	}
	if err != nil {
		return nil, errors.Join(err, stop())
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		n, err := s.Client.CoreV1().Nodes().Get(ctx, NetNode, metav1.GetOptions{})
		if err == nil && n.Spec.PodCIDR != "" {
			break
		}
		if time.Now().After(deadline) {
			log := localcluster.ServiceLog(s.dir, "nodeagent-net")
			return nil, errors.Join(fmt.Errorf("node %s: no spec.podCIDR after 1m (%v) (node agent log: %s)", NetNode, err, log), stop())
		}
	}
	return stop, nil
}
