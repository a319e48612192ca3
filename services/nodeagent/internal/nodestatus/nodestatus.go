// Package nodestatus builds the wasmlet Node object (labels, taint,
// capacity, addresses, node info) and keeps its Ready condition true to the
// executors' health. It implements virtual-kubelet's node.NodeProvider; the
// node controller there owns registration, the Lease and status writes.
package nodestatus

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/executors"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/hostinfo"
)

// The labels and taint that make a node a wasmlet node.
const (
	ArchLabelValue = "wasm32-wasi"
	OSLabelValue   = "wasip1"
	TaintKey       = "kubernetes.io/arch"
)

// Version is reported as the node's kubelet version.
const Version = "v0.1.0-wasmlet"

// Config describes the node.
type Config struct {
	Name        string
	InternalIP  string
	KubeletPort int32
	MaxPods     int64
	Labels      map[string]string // user labels; may not override managed ones
}

// Tolerations is what a pod needs to land on a wasmlet node.
var Tolerations = []v1.Toleration{
	{Key: TaintKey, Operator: v1.TolerationOpEqual, Value: ArchLabelValue, Effect: v1.TaintEffectNoSchedule},
	{Key: TaintKey, Operator: v1.TolerationOpEqual, Value: ArchLabelValue, Effect: v1.TaintEffectNoExecute},
}

// Node returns the Node to register.
func Node(cfg Config) (*v1.Node, error) {
	managed := map[string]string{
		"kubernetes.io/arch":               ArchLabelValue,
		"kubernetes.io/os":                 OSLabelValue,
		"kubernetes.io/hostname":           cfg.Name,
		"node.kubernetes.io/instance-type": "wasmlet",
	}
	labels := map[string]string{}
	for k, v := range cfg.Labels {
		if _, ok := managed[k]; ok || managedFlavourLabel(k) {
			return nil, fmt.Errorf("label %q is managed by wasmlet and cannot be set", k)
		}
		labels[k] = v
	}
	for k, v := range managed {
		labels[k] = v
	}
	mem := hostMemory()
	capacity := v1.ResourceList{
		v1.ResourceCPU:    *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		v1.ResourceMemory: *resource.NewQuantity(mem, resource.BinarySI),
		v1.ResourcePods:   *resource.NewQuantity(cfg.MaxPods, resource.DecimalSI),
	}
	now := metav1.Now()
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: cfg.Name, Labels: labels},
		Spec: v1.NodeSpec{Taints: []v1.Taint{
			{Key: TaintKey, Value: ArchLabelValue, Effect: v1.TaintEffectNoSchedule},
			{Key: TaintKey, Value: ArchLabelValue, Effect: v1.TaintEffectNoExecute},
		}},
		Status: v1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity.DeepCopy(),
			Addresses: []v1.NodeAddress{
				{Type: v1.NodeInternalIP, Address: cfg.InternalIP},
				{Type: v1.NodeHostName, Address: cfg.Name},
			},
			DaemonEndpoints: v1.NodeDaemonEndpoints{KubeletEndpoint: v1.DaemonEndpoint{Port: cfg.KubeletPort}},
			NodeInfo: v1.NodeSystemInfo{
				KubeletVersion:          Version,
				OperatingSystem:         OSLabelValue,
				Architecture:            ArchLabelValue,
				KernelVersion:           runtime.GOOS + "/" + runtime.GOARCH,
				OSImage:                 "wasmlet",
				ContainerRuntimeVersion: "wasmlet://unknown",
			},
			Conditions: []v1.NodeCondition{
				{Type: v1.NodeReady, Status: v1.ConditionFalse, Reason: "Starting", Message: "wasmlet is starting", LastHeartbeatTime: now, LastTransitionTime: now},
				{Type: v1.NodeMemoryPressure, Status: v1.ConditionFalse, Reason: "KubeletHasSufficientMemory", LastHeartbeatTime: now, LastTransitionTime: now},
				{Type: v1.NodeDiskPressure, Status: v1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", LastHeartbeatTime: now, LastTransitionTime: now},
				{Type: v1.NodePIDPressure, Status: v1.ConditionFalse, Reason: "KubeletHasSufficientPID", LastHeartbeatTime: now, LastTransitionTime: now},
			},
		},
	}, nil
}

func hostMemory() int64 {
	mi, err := hostinfo.Meminfo("/proc/meminfo")
	if err != nil {
		return 0
	}
	return int64(mi["MemTotal"])
}

// Provider is the node.NodeProvider: Ping answers and the node is Ready
// while every flavour it serves has a healthy executor replica, and the pressure
// conditions follow the host's memory, the state directory's disk and PIDs.
type Provider struct {
	node     *v1.Node
	pool     *executors.Pool
	stateDir string

	mu     sync.Mutex
	notify func(*v1.Node)
}

// NewProvider returns a provider for node (which it updates in place only
// under its own lock, handing out copies).
func NewProvider(node *v1.Node, pool *executors.Pool, stateDir string) *Provider {
	return &Provider{node: node, pool: pool, stateDir: stateDir}
}

// Ping reports an error when a flavour the node serves has no executor
// replica that answers.
func (p *Provider) Ping(ctx context.Context) error {
	if ready, msg := p.executorsReady(); !ready {
		return fmt.Errorf("%s", msg)
	}
	return nil
}

// NotifyNodeStatus registers the callback for status changes.
func (p *Provider) NotifyNodeStatus(_ context.Context, cb func(*v1.Node)) {
	p.mu.Lock()
	p.notify = cb
	p.mu.Unlock()
}

// Run re-evaluates the node's status every interval until ctx ends.
func (p *Provider) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		p.refresh()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Provider) executorsReady() (bool, string) {
	// A flavour is served while any of its replicas answers: one replica
	// of several going away does not make the node NotReady.
	if down := p.pool.Unavailable(); len(down) > 0 {
		return false, "executor not reachable: " + strings.Join(down, ", ")
	}
	return true, "wasmlet is ready"
}

// The labels the node keeps for each executor flavour it serves, so that
// a RuntimeClass's nodeSelector can ask for a flavour, and for the platform
// its executors run on: flavour.wasmlet.io/<flavour>=true and
// platform.wasmlet.io/<flavour>=<os>-<arch> (several joined by "_" when a
// flavour's replicas differ).
const (
	FlavourLabelPrefix  = "flavour.wasmlet.io/"
	PlatformLabelPrefix = "platform.wasmlet.io/"
)

// served is what one executor replica reported of itself.
type served struct{ flavour, engine, version, platform string }

func servedBy(flavour string, info *instances.Info) served {
	return served{flavour, info.Engine, info.Version, info.OS + "/" + info.Arch}
}

// describe gives the node's container runtime version ("wasmtime://39.0.1
// (linux/amd64), ...": kubectl get nodes -o wide shows it) and its flavour
// labels, from what its executor replicas report.
func describe(all []served) (string, map[string]string) {
	runtimes := map[string]bool{}
	platforms := map[string]map[string]bool{}
	for _, s := range all {
		runtimes[fmt.Sprintf("%s://%s (%s)", s.engine, s.version, s.platform)] = true
		if platforms[s.flavour] == nil {
			platforms[s.flavour] = map[string]bool{}
		}
		platforms[s.flavour][strings.ReplaceAll(s.platform, "/", "-")] = true
	}
	labels := map[string]string{}
	for flavour, ps := range platforms {
		platform := strings.Join(sortedKeys(ps), "_")
		if len(validation.IsQualifiedName(FlavourLabelPrefix+flavour)) > 0 || len(validation.IsValidLabelValue(platform)) > 0 {
			continue // a flavour name no label can carry: the runtime version still names it
		}
		labels[FlavourLabelPrefix+flavour] = "true"
		labels[PlatformLabelPrefix+flavour] = platform
	}
	return strings.Join(sortedKeys(runtimes), ", "), labels
}

// setFlavourLabels makes the flavour and platform labels of have those of
// want, and reports whether it changed any.
func setFlavourLabels(have, want map[string]string) bool {
	changed := false
	for k := range have {
		if _, ok := want[k]; !ok && managedFlavourLabel(k) {
			delete(have, k)
			changed = true
		}
	}
	for k, v := range want {
		if have[k] != v {
			have[k] = v
			changed = true
		}
	}
	return changed
}

func managedFlavourLabel(k string) bool {
	return strings.HasPrefix(k, FlavourLabelPrefix) || strings.HasPrefix(k, PlatformLabelPrefix)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// confinementGap says what an executor's second wall lacks (see
// services/executor/internal/confine), or "" when it has it all. An
// executor from before confinement reports none.
func confinementGap(c instances.Confinement) string {
	var gaps []string
	if !c.Seccomp {
		gaps = append(gaps, "no seccomp")
	}
	if c.LandlockABI == 0 {
		g := "no Landlock"
		if r := c.LandlockMissingReason; r != "" {
			g += " (" + r + ")"
		}
		gaps = append(gaps, g)
	}
	if c.UID == 0 {
		gaps = append(gaps, "runs as root")
	}
	return strings.Join(gaps, ", ")
}

// confinementNote is the Ready condition's word on executors running
// without their second wall, as the kubelet's says whether AppArmor is on.
func confinementNote(gaps map[string]string) string {
	if len(gaps) == 0 {
		return ""
	}
	ids := make([]string, 0, len(gaps))
	for id := range gaps {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = "executor " + id + ": " + gaps[id]
	}
	return "; not confined: " + strings.Join(parts, "; ")
}

func (p *Provider) refresh() {
	ready, msg := p.executorsReady()
	p.mu.Lock()
	n := p.node
	changed := false
	now := metav1.Now()
	var served []served
	unconfined := map[string]string{}
	for _, e := range p.pool.All() {
		if info, _ := e.Info(); info != nil {
			served = append(served, servedBy(e.Flavour, info))
			if gap := confinementGap(info.Confinement); gap != "" {
				unconfined[e.ID] = gap
			}
		}
	}
	if ready {
		msg += confinementNote(unconfined)
	}
	if len(served) > 0 {
		rv, labels := describe(served)
		if n.Status.NodeInfo.ContainerRuntimeVersion != rv {
			n.Status.NodeInfo.ContainerRuntimeVersion = rv
			changed = true
		}
		if setFlavourLabels(n.Labels, labels) {
			changed = true
		}
	}
	pressure := pressureConditions(read(p.stateDir))
	for i := range n.Status.Conditions {
		c := &n.Status.Conditions[i]
		if pc, ok := pressure[c.Type]; ok {
			status := v1.ConditionStatus(pc[0])
			if c.Status != status || c.Message != pc[2] {
				changed = true
				if c.Status != status {
					c.LastTransitionTime = now
				}
				c.Status, c.Reason, c.Message = status, pc[1], pc[2]
			}
			continue
		}
		if c.Type != v1.NodeReady {
			continue
		}
		status, reason := v1.ConditionFalse, "ExecutorNotReady"
		if ready {
			status, reason = v1.ConditionTrue, "KubeletReady"
		}
		if c.Status != status || c.Message != msg {
			changed = true
			if c.Status != status {
				c.LastTransitionTime = now
			}
			c.Status, c.Reason, c.Message = status, reason, msg
		}
	}
	if changed {
		for i := range n.Status.Conditions {
			n.Status.Conditions[i].LastHeartbeatTime = now
		}
	}
	cb := p.notify
	out := n.DeepCopy()
	p.mu.Unlock()
	if changed && cb != nil {
		cb(out)
	}
}
