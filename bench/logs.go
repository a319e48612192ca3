package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Targets of the logs issue.
const (
	logRateTarget    = 50000 // lines/s reaching a kubectl logs -f reader, per node
	logLatencyTarget = 100   // ms, a new line to kubectl logs -f
)

// logsBench measures the log path end to end: a module printing numbered,
// time-stamped lines (testdata/wasm/logflood) on the wasmlet node, read
// with the stock `kubectl logs -f` through the API server (which proxies
// to the node agent's kubelet API, which reads the JetStream stream the
// executor publishes to).
//
//   - throughput: LogRuns pods each printing LogLines lines as fast as they
//     can; lines/s = LogLines / (arrival of the last line at the reader −
//     the time stamped in the first line by the module). The reader is
//     attached before the module starts printing (DELAY).
//   - loss: lines missing or out of order at the reader (target 0).
//   - latency: a pod printing one line every 20 ms; per line, arrival at
//     the reader − the time the module stamped in it (same host clock).
func logsBench(ctx context.Context, s *Stack, opts Options) ([]Figure, error) {
	var figs []Figure
	image, err := s.logfloodImage()
	if err != nil {
		return nil, err
	}
	ns, err := s.namespace(ctx, "bench-logs")
	if err != nil {
		return nil, err
	}
	ps := &PodStarter{Client: s.Client, Node: WasmNode, Image: image, Namespace: ns}
	defer s.clear(context.Background(), ps)

	var rates, printRates, lost []float64
	cpuPerLine := map[string][]float64{}
	for i := range opts.LogRuns {
		c0 := s.cpu()
		r, err := s.followPod(ctx, ps, fmt.Sprintf("flood-%d", i), []v1.EnvVar{
			{Name: "LINES", Value: fmt.Sprint(opts.LogLines)}, {Name: "BURST", Value: "500"}, {Name: "DELAY", Value: "3s"},
		}, opts.LogLines)
		if err != nil {
			return figs, fmt.Errorf("flood %d: %w", i, err)
		}
		c1 := s.cpu()
		for _, p := range logCPUProcs {
			cpuPerLine[p] = append(cpuPerLine[p], (c1[p]-c0[p])/float64(opts.LogLines)*1e6)
		}
		cpuPerLine["kubectl logs -f"] = append(cpuPerLine["kubectl logs -f"], r.readerCPU.Seconds()/float64(opts.LogLines)*1e6)
		rates = append(rates, r.rate())
		printRates = append(printRates, r.printRate())
		lost = append(lost, float64(r.lost))
	}
	f := Values("logs: lines/s to kubectl logs -f", fmt.Sprintf("a module prints %d numbered lines as fast as it can; lines / (last line at the stock kubectl logs -f reader − first line's time stamp); one sample per pod", opts.LogLines), "lines/s", rates)
	f.HoldAtLeast("min", logRateTarget)
	figs = append(figs, f)
	figs = append(figs, Values("logs: lines/s printed by the module", "the same pods: (last − first line's time stamp) as the module saw it; below the reader's rate only if the executor held the module back", "lines/s", printRates))
	// CPU time comes in 10 ms ticks: a short run's few thousand lines may
	// cost a process less than one, so the figures are for full runs only.
	for _, p := range append(logCPUProcs, "kubectl logs -f") {
		if opts.Short {
			break
		}
		figs = append(figs, Values("logs: CPU per line, "+p, "the same pods: CPU time of the process (and its children) from pod creation to the last line read, / lines", "µs", cpuPerLine[p]))
	}
	f = Values("logs: lines lost", "the same pods: lines missing, doubled or out of order at the reader", "lines", lost)
	f.Hold("max", 0)
	figs = append(figs, f)

	r, err := s.followPod(ctx, ps, "latency", []v1.EnvVar{
		{Name: "LINES", Value: fmt.Sprint(opts.LogLatencyLines)}, {Name: "BURST", Value: "1"}, {Name: "PAUSE", Value: "20ms"}, {Name: "DELAY", Value: "3s"},
	}, opts.LogLatencyLines)
	if err != nil {
		return figs, fmt.Errorf("latency: %w", err)
	}
	f = Durations("logs: new line to kubectl logs -f", "a module prints a time-stamped line every 20 ms; arrival at the stock kubectl logs -f reader − the stamp (same host clock)", r.latencies)
	f.Hold("median", logLatencyTarget)
	figs = append(figs, f)
	p99 := f
	p99.Name += " (p99)"
	p99.Hold("p99", logLatencyTarget)
	figs = append(figs, p99)
	if r.lost > 0 {
		return figs, fmt.Errorf("latency pod: %d lines lost", r.lost)
	}
	return figs, nil
}

// followResult is what a kubectl logs -f reader saw of one pod.
type followResult struct {
	lines       int
	lost        int
	firstStamp  time.Time // stamped in line 1
	lastStamp   time.Time // stamped in the last line
	lastArrival time.Time
	latencies   []time.Duration
	readerCPU   time.Duration // user+system time of kubectl
}

func (r followResult) rate() float64 {
	return float64(r.lines) / r.lastArrival.Sub(r.firstStamp).Seconds()
}

func (r followResult) printRate() float64 {
	return float64(r.lines) / r.lastStamp.Sub(r.firstStamp).Seconds()
}

// followPod creates a pod of the logflood module, attaches `kubectl logs
// -f` once it runs, and reads until want lines (or a fault) have come.
func (s *Stack) followPod(ctx context.Context, ps *PodStarter, name string, env []v1.EnvVar, want int) (followResult, error) {
	var r followResult
	p := ps.pod(name)
	p.Spec.RestartPolicy = v1.RestartPolicyNever
	p.Spec.Containers[0].Env = env
	if _, err := s.Client.CoreV1().Pods(ps.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		return r, err
	}
	// Running within a minute (the first start compiles the module).
	deadline := time.Now().Add(time.Minute)
	for {
		got, err := s.Client.CoreV1().Pods(ps.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil && allRunning(got) {
			break
		}
		if err == nil && (got.Status.Phase == v1.PodSucceeded || got.Status.Phase == v1.PodFailed) {
			return r, fmt.Errorf("pod %s ended (%s) before the reader attached; raise DELAY", name, got.Status.Phase)
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("pod %s not running after 1m", name)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(rctx, "kubectl", "--kubeconfig", s.Cluster.KubeconfigPath(), "logs", "-f", "-n", ps.Namespace, name)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return r, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return r, fmt.Errorf("kubectl logs -f: %w", err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(bufio.NewReaderSize(out, 1<<20))
	next := 1
	for r.lines < want && sc.Scan() {
		now := time.Now()
		num, stamp, ok := strings.Cut(sc.Text(), " ")
		n, err1 := strconv.Atoi(num)
		ns, err2 := strconv.ParseInt(stamp, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			return r, fmt.Errorf("line %q after %d is not \"<n> <unix ns>\"", sc.Text(), r.lines)
		}
		t := time.Unix(0, ns)
		if n != next {
			// Missing (n > next) or doubled/out of order (n < next).
			r.lost += max(n-next, 1)
		}
		next = max(next, n+1)
		if n == 1 {
			r.firstStamp = t
		}
		r.lines++
		r.lastStamp, r.lastArrival = t, now
		r.latencies = append(r.latencies, now.Sub(t))
		if n >= want {
			break
		}
	}
	if r.lines == 0 || r.firstStamp.IsZero() {
		return r, fmt.Errorf("kubectl logs -f printed no first line (%v): %s", sc.Err(), stderr.String())
	}
	if next-1 < want {
		// The reader ended (or timed out) before the last line: that is a
		// fault of the follow, not a measure of loss; say what kubectl said.
		cancel()
		_ = cmd.Wait()
		return r, fmt.Errorf("kubectl logs -f ended after line %d of %d (%d read; scan: %v; state: %v): %s",
			next-1, want, r.lines, sc.Err(), cmd.ProcessState, strings.TrimSpace(stderr.String()))
	}
	cancel()
	_ = cmd.Wait()
	if ps := cmd.ProcessState; ps != nil {
		r.readerCPU = ps.UserTime() + ps.SystemTime()
	}
	return r, nil
}

// logfloodImage builds testdata/wasm/logflood and pushes it to the
// stack's registry once; it returns its digest reference.
func (s *Stack) logfloodImage() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	wasm := filepath.Join(s.dir, "logflood.wasm")
	cmd := exec.Command("go", "build", "-trimpath", "-o", wasm, "./testdata/wasm/logflood")
	cmd.Dir, cmd.Env = root, append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build testdata/wasm/logflood: %v: %s", err, b)
	}
	return s.push(wasm, "logflood")
}

// logCPUProcs are the processes on the log path whose CPU time the logs
// section reports (see cpu).
var logCPUProcs = []string{"executor", "nodeagent (with NATS)", "kube-apiserver"}
