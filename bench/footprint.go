package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/wasmlet/wasmlet/internal/binpages"
)

// nodeFlavours are the nodes make build ships, each a node agent and the
// executor built with that engine only (Makefile, target build).
var nodeFlavours = []struct {
	engine, executor, tags, cgo, ldflags string
}{
	{"wasmtime", "executor-wasmtime", "grpcnotrace,nowazero", "1", "-s -w -extldflags=-Wl,--gc-sections"},
	{"wazero", "executor-wazero", "grpcnotrace,nowasmtime", "0", "-s -w"},
}

// shippedAgent is the node agent as make build ships it.
const shippedAgent = "nodeagent-shipped"

// idleAfter are how long after Ready an idle node's memory is read: once
// soon after the node agent and executor drop their start-up pages
// (binpages.Settle after readiness), and once minutes later, when periodic
// work (leases, status, announcements, collections) has mapped what it
// touches and the heap has grown to its collection goal: the target holds
// for the later.
var idleAfter = []time.Duration{binpages.Settle + 20*time.Second, 3 * time.Minute}

// footprint reports the shipped binaries' sizes, what a node of each
// flavour needs, and each flavour's idle node's memory: a node agent of its
// own (embedded NATS and registry cache) with its supervised one-engine
// executor, no pods.
func (s *Stack) footprint(ctx context.Context) ([]Figure, error) {
	if err := s.buildFlavours(); err != nil {
		return nil, err
	}
	size := func(b string) (float64, error) {
		st, err := os.Stat(filepath.Join(s.Bin, b))
		if err != nil {
			return 0, err
		}
		return float64(st.Size()) / 1e6, nil
	}
	var figs []Figure
	for _, b := range []string{shippedAgent, "executor-wasmtime", "executor-wazero", "executor"} {
		mb, err := size(b)
		if err != nil {
			return nil, err
		}
		method := "stripped (-s -w, -trimpath) linux/amd64, as make build ships it"
		if b == "executor" {
			method = "stripped (-s -w, -trimpath) linux/amd64, both engines, no tags: as tests and the bench's other sections build it; no node needs it"
		}
		figs = append(figs, Values("binary size, "+b, method, "MB", []float64{mb}))
	}
	agent, _ := size(shippedAgent)
	for _, f := range nodeFlavours {
		exe, _ := size(f.executor)
		tf := Values("binary size, a "+f.engine+" node (node agent + "+f.executor+")", "the binaries a "+f.engine+" node runs (the registry cache and NATS are embedded in the node agent), compared with the kubelet v1.33.13 built here before a container runtime is added", "MB", []float64{agent + exe})
		tf.Hold("max", kubeletMB)
		tf.Anchor = "kubelet v1.33.13, 82.7 MB stripped, without a container runtime"
		figs = append(figs, tf)
	}
	figs = append(figs, imageSizes()...)
	nodes := make([]idleNode, len(nodeFlavours))
	for i, f := range nodeFlavours {
		n, err := s.startIdleNode(ctx, f.engine, f.executor)
		if err != nil {
			return nil, err
		}
		defer n.stop()
		nodes[i] = n
	}
	for i, after := range idleAfter {
		for _, n := range nodes {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Until(n.ready.Add(after))):
			}
			figs = append(figs, n.memory(after, i == len(idleAfter)-1)...)
		}
	}
	return figs, nil
}

// buildFlavours builds each flavour's executor and the node agent into
// s.Bin, from the module in the working directory, as make build does
// (tags and flags as in the Makefile).
func (s *Stack) buildFlavours() error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-tags", "grpcnotrace", "-o", filepath.Join(s.Bin, shippedAgent), "./services/nodeagent")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./services/nodeagent: %v\n%s", err, out)
	}
	for _, f := range nodeFlavours {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", f.ldflags, "-tags", f.tags, "-o", filepath.Join(s.Bin, f.executor), "./services/executor")
		cmd.Dir, cmd.Env = root, append(os.Environ(), "CGO_ENABLED="+f.cgo)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build -tags %s ./services/executor: %v\n%s", f.tags, err, out)
		}
	}
	return nil
}

// idleNode is a node of one flavour, left idle, no pods.
type idleNode struct {
	engine, executor string
	pid              int // the node agent's
	ready            time.Time
	stop             func() error
}

// startIdleNode starts a node of the engine's flavour: a node agent of its
// own, as shipped, supervising the flavour's executor.
func (s *Stack) startIdleNode(ctx context.Context, engine, executor string) (idleNode, error) {
	node, service := "bench-idle-"+engine, "nodeagent-idle-"+engine
	// startNodeAgent runs the binary named for the service when there is
	// one: the shipped node agent.
	if err := os.Link(filepath.Join(s.Bin, shippedAgent), filepath.Join(s.Bin, service)); err != nil {
		return idleNode{}, err
	}
	pid, stop, err := s.startNodeAgent(ctx, node, service, filepath.Join(s.dir, "node-idle-"+engine),
		"--default-executor", engine, "--executor-binary", filepath.Join(s.Bin, executor))
	if err != nil {
		return idleNode{}, err
	}
	return idleNode{engine: engine, executor: executor, pid: pid, ready: time.Now(), stop: stop}, nil
}

// memory reports the node's memory now, after Ready, process by process;
// held: against the target.
func (n idleNode) memory(after time.Duration, held bool) []Figure {
	what := fmt.Sprintf("a %s node (node agent with embedded NATS and registry cache, and its %s), no pods, %s after Ready", n.engine, n.executor, after)
	key := fmt.Sprintf("%s node, %s idle", n.engine, after)
	rf := Values("idle node memory, "+key, "VmRSS of "+what, "MiB", []float64{float64(treeField(n.pid, "status", "VmRSS")) / (1 << 20)})
	if held {
		rf.Hold("max", idleRSSTarget)
	}
	figs := []Figure{rf}
	// Process by process: RssFile is the clean pages of the binary (and
	// libraries) mapped, RssAnon what the process allocated.
	for _, p := range append([]int{n.pid}, children(n.pid)...) {
		name := "node agent"
		if p != n.pid {
			name = n.executor
		}
		st := procFields(p, "status")
		for _, field := range []string{"VmRSS", "RssAnon", "RssFile"} {
			figs = append(figs, Values(fmt.Sprintf("idle node memory, %s: %s, %s", key, name, field), field+" of the process; "+what, "MiB", []float64{float64(st[field]) / (1 << 20)}))
		}
		figs = append(figs, Values(fmt.Sprintf("idle node memory, %s: %s, Pss", key, name), "Pss (smaps_rollup) of the process; "+what, "MiB", []float64{float64(procFields(p, "smaps_rollup")["Pss"]) / (1 << 20)}))
	}
	return figs
}
