package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
)

// Targets of the density section (issue 18 §2), for the largest N: all
// running within densityRatioTarget × the no-op node's time for N in the
// same run; per pod, the node agent's and executor's PSS and VmRSS, the
// OS threads a sleeping instance holds and the pod status writes; and the
// node agent's CPU while every pod sleeps.
const (
	densityTargetPods   = 5000
	densityRatioTarget  = 1.5  // x
	densityPSSTarget    = 1    // MiB per pod
	densityRSSTarget    = 2    // MiB per pod
	densityThreadTarget = 0.05 // OS threads per sleeping instance
	densityWriteTarget  = 1.1  // status writes per pod
	densityIdleCPU      = 2    // % of a core, node agent, all pods asleep
	densityIdleWindow   = 30 * time.Second
)

// density runs N pods at once, for each N in opts.Density, first on the
// no-op node (the anchor: the control plane's own time for N) and then on
// the wasmlet node, and reports what holding them costs: the time until
// all run against the no-op node's, the node agent's and its executor's
// resident memory in total and per pod (VmRSS and PSS), their OS threads
// per pod, the API requests the node made per pod (status writes, events)
// and the node agent's CPU while all of them sleep.
// Memory per pod is the total over N rather than a difference from a
// reading before: what earlier sections left in the processes' heaps made
// such differences drift (one came out negative). Threads per pod are a
// difference: the idle node's threads are a fixed few dozen.
func density(ctx context.Context, s *Stack, opts Options) ([]Figure, error) {
	pid, err := s.NodeAgentPID()
	if err != nil {
		return nil, err
	}
	// The pods greet, print one count and sleep for an hour: asleep in a
	// WASI call, as an idle server or a cron-like job is.
	env := []v1.EnvVar{{Name: "COUNT", Value: "2"}, {Name: "SLEEP", Value: "1h"}}
	// One pod first, not counted, so that the module is compiled and the
	// executor warm, as in podStart.
	wns, err := s.namespace(ctx, "bench-density-warmup")
	if err != nil {
		return nil, err
	}
	warm := &PodStarter{Client: s.Client, WatchClient: s.WatchClient, Node: WasmNode, Image: s.Image, Env: env, Namespace: wns}
	if _, err := warm.Singles(ctx, "warmup", 1); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	if err := s.clear(ctx, warm); err != nil {
		return nil, err
	}
	window := densityIdleWindow
	if opts.Short {
		window = 3 * time.Second
	}
	var figs []Figure
	for _, n := range opts.Density {
		// The anchor: the same burst on the no-op node.
		nns, err := s.namespace(ctx, fmt.Sprintf("bench-density-noop%d", n))
		if err != nil {
			return figs, err
		}
		noop := &PodStarter{Client: s.Client, WatchClient: s.WatchClient, Node: NoopNode, Image: s.IdleImage, Env: env, Namespace: nns}
		noopAll, _, err := noop.Burst(ctx, "density", n, 15*time.Minute)
		if err != nil {
			return figs, fmt.Errorf("%d pods on the no-op node: %w", n, err)
		}
		if err := s.clear(ctx, noop); err != nil {
			return figs, err
		}

		ns, err := s.namespace(ctx, fmt.Sprintf("bench-density%d", n))
		if err != nil {
			return figs, err
		}
		ps := &PodStarter{Client: s.Client, WatchClient: s.WatchClient, Node: WasmNode, Image: s.Image, Env: env, Namespace: ns}
		// Settled first: the events of the previous level's deletion
		// (Killing) are written after its pods are gone.
		reqBefore, err := s.settledRequests(ctx)
		if err != nil {
			return figs, err
		}
		s.quietNode(time.Minute)
		threadsBefore := treeField(pid, "status", "Threads")
		cBefore := s.cpu()
		all, _, err := ps.Burst(ctx, "density", n, 15*time.Minute)
		if err != nil {
			return figs, fmt.Errorf("%d pods: %w", n, err)
		}
		// Let the pods' first output, the stats and the status writes that
		// follow Running settle before reading.
		time.Sleep(3 * time.Second)
		settle()
		rss, pss := treeField(pid, "status", "VmRSS"), treeField(pid, "smaps_rollup", "Pss")
		threads := treeField(pid, "status", "Threads") - threadsBefore
		// The events the node paces (--event-qps) are written before the
		// idle CPU is read: writing them is not idling.
		reqAfter, err := s.quietRequests(ctx, 3*time.Second, 10*time.Minute)
		if err != nil {
			return figs, err
		}
		s.nextProfile() // with -cpu-profile, one profile is the idle window's
		c0 := s.cpu()
		time.Sleep(window)
		c1 := s.cpu()
		s.nextProfile()
		idle := func(proc string) float64 {
			return 100 * (c1[proc] - c0[proc]) / window.Seconds()
		}
		mib := func(b int64) float64 { return float64(b) / (1 << 20) }
		perPod := func(f Figure, stat string, limit float64) Figure {
			if n == densityTargetPods {
				f.Hold(stat, limit)
			}
			return f
		}
		ratio := Values(fmt.Sprintf("density %d: ratio wasmlet / no-op node, all running", n), "the wasmlet node's time for N pods over the no-op node's, same run", "x", []float64{float64(all) / float64(noopAll)})
		ratio.Anchor = "the control plane's own limit on this machine (the no-op node)"
		figs = append(figs,
			Durations(fmt.Sprintf("density %d: all running, bench-noop", n), "first create call → last pod seen running, all pods created at once (64 creators), on the no-op node", []time.Duration{noopAll}),
			Durations(fmt.Sprintf("density %d: all running", n), "first create call → last pod seen running, all pods created at once (64 creators)", []time.Duration{all}),
			perPod(ratio, "max", densityRatioTarget),
			Values(fmt.Sprintf("density %d: node memory, total (VmRSS)", n), "VmRSS of the node agent and its executor with N pods running (each a sleeping Go-built module)", "MiB", []float64{mib(rss)}),
			perPod(Values(fmt.Sprintf("density %d: node memory per pod (VmRSS)", n), "the total VmRSS / N, the idle node's share included; VmRSS counts a page mapped N times N times", "MiB", []float64{mib(rss) / float64(n)}), "max", densityRSSTarget),
			perPod(Values(fmt.Sprintf("density %d: node memory per pod (PSS)", n), "the node agent's and executor's Pss (smaps_rollup) / N: shared pages counted once", "MiB", []float64{mib(pss) / float64(n)}), "max", densityPSSTarget),
			perPod(Values(fmt.Sprintf("density %d: OS threads per sleeping pod", n), "the node agent's and executor's threads (/proc status Threads) with N pods asleep, less those before the burst, / N", "threads", []float64{float64(threads) / float64(n)}), "max", densityThreadTarget),
			perPod(Values(fmt.Sprintf("density %d: node agent CPU, all pods asleep", n), fmt.Sprintf("user+system CPU of the node agent (with NATS) over %s once its events are written, as %% of one core", window), "%", []float64{idle("nodeagent (with NATS)")}), "max", densityIdleCPU),
			Values(fmt.Sprintf("density %d: executor CPU, all pods asleep", n), fmt.Sprintf("user+system CPU of the executor over the same %s, as %% of one core", window), "%", []float64{idle("executor")}),
		)
		figs = append(figs, cpuPerPodFigures(fmt.Sprintf("density %d", n), "all pods created at once, the 5 s of settling after the last runs included", [][2]map[string]float64{{cBefore, c0}}, n)...)
		for _, k := range apiCosts {
			f := Values(fmt.Sprintf("density %d: %s per pod", n, k.name), k.method, "requests", []float64{float64(reqAfter[k.name]-reqBefore[k.name]) / float64(n)})
			if k.name == "pod status writes" {
				f = perPod(f, "max", densityWriteTarget)
			}
			figs = append(figs, f)
		}
		if err := s.clear(ctx, ps); err != nil {
			return figs, err
		}
	}
	return figs, nil
}

// apiCost is a kind of API request counted from the API server's
// apiserver_request_total.
type apiCost struct {
	name, method string
	match        func(labels string) bool
}

// apiCosts are the requests a node makes for its pods. The no-op node is
// idle meanwhile, so the deltas are the wasmlet node's (and the
// scheduler's bindings, which are not counted here).
var apiCosts = []apiCost{
	{"pod status writes", "apiserver_request_total for pods/status (PATCH, PUT) over the run, divided by N", func(l string) bool {
		return strings.Contains(l, `resource="pods"`) && strings.Contains(l, `subresource="status"`) && (strings.Contains(l, `verb="PATCH"`) || strings.Contains(l, `verb="PUT"`))
	}},
	{"pod status writes refused (409 Conflict)", "the same requests answered 409 Conflict (written against a stale resourceVersion, then retried), divided by N", func(l string) bool {
		return strings.Contains(l, `resource="pods"`) && strings.Contains(l, `subresource="status"`) && strings.Contains(l, `code="409"`)
	}},
	{"events created", "apiserver_request_total for events (POST, PATCH) over the run, divided by N", func(l string) bool {
		return strings.Contains(l, `resource="events"`) && (strings.Contains(l, `verb="POST"`) || strings.Contains(l, `verb="PATCH"`))
	}},
}

// settledRequests reads apiRequests once they have stopped growing for
// 3 s (at most 3 minutes): the node agent paces its events (--event-qps,
// 50/s by default, as the kubelet's), so a burst's events are written
// after its pods run.
func (s *Stack) settledRequests(ctx context.Context) (map[string]int64, error) {
	return s.quietRequests(ctx, 3*time.Second, 3*time.Minute)
}

// quietRequests waits until apiRequests have not grown for quiet (at most
// max) and returns them.
func (s *Stack) quietRequests(ctx context.Context, quiet, max time.Duration) (map[string]int64, error) {
	last, err := s.apiRequests(ctx)
	deadline := time.Now().Add(max)
	for err == nil && time.Now().Before(deadline) {
		time.Sleep(quiet)
		var now map[string]int64
		if now, err = s.apiRequests(ctx); err == nil && maps.Equal(now, last) {
			return now, nil
		}
		last = now
	}
	return last, err
}

// apiRequests reads the API server's request counters for apiCosts.
func (s *Stack) apiRequests(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	err := s.apiMetrics(ctx, "apiserver_request_total", func(labels string, v float64) {
		for _, k := range apiCosts {
			if k.match(labels) {
				out[k.name] += int64(v)
			}
		}
	})
	return out, err
}

// terminatedWatchers reads how many pod watches the API server has closed
// because their readers fell behind (apiserver_terminated_watchers_total).
func (s *Stack) terminatedWatchers(ctx context.Context) (int64, error) {
	var n int64
	err := s.apiMetrics(ctx, "apiserver_terminated_watchers_total", func(labels string, v float64) {
		if strings.Contains(labels, `resource="pods"`) {
			n += int64(v)
		}
	})
	return n, err
}

// apiMetrics reads the API server's /metrics and calls f with the labels
// and value of each sample of the metric name.
func (s *Stack) apiMetrics(ctx context.Context, name string, f func(labels string, v float64)) error {
	raw, err := s.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("API server metrics: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 0, 1<<20), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), name+"{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			f(labels, v)
		}
	}
	return sc.Err()
}

// settle gives the Go runtimes a moment so that RSS readings are not taken
// in the middle of a burst of allocation.
func settle() { time.Sleep(2 * time.Second) }
