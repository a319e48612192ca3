package provider

// Resource use for /stats/summary and /metrics/resource (what
// metrics-server and kubectl top read). Pods' figures come from the
// executors' ListInstanceStats: a container's memory is its instance's
// linear memory size, its CPU time the CPU time of the thread its wasm
// runs on (see executor.proto's InstanceStats). The node's come from
// /proc. usageNanoCores is the rate between this reading and the last one
// of the same instance (or node); the first reading has none.

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/hostinfo"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podworker"
)

// cpuReading is a cumulative CPU time at a moment, for rates.
type cpuReading struct {
	cpu  uint64 // ns
	at   time.Time
	seen time.Time // when last used, to forget ended instances
}

// rate returns the nanocores between the previous reading under k and
// this one, and records this one. p.statsMu is held.
func (p *Provider) rate(k string, cpu uint64, at time.Time) *uint64 {
	prev, ok := p.cpuPrev[k]
	p.cpuPrev[k] = cpuReading{cpu: cpu, at: at, seen: time.Now()}
	if !ok || !at.After(prev.at) || cpu < prev.cpu {
		return nil
	}
	nc := uint64(float64(cpu-prev.cpu) / at.Sub(prev.at).Seconds())
	return &nc
}

type containerUsage struct {
	at      time.Time
	memory  uint64
	cpu     uint64
	cpuOK   bool
	started time.Time
}

// collect asks every executor for its instances' use. An executor that
// does not answer is left out and reported in the error.
func (p *Provider) collect(ctx context.Context) (map[string]map[string]instances.Stats, error) {
	byPod := map[string]map[string]instances.Stats{} // ns/name/uid -> container -> stats
	var errs []string
	for _, e := range p.cfg.Pool.All() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		stats, err := e.Runtime.Stats(cctx, nil)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Sprintf("executor %s: %v", e.ID, err))
			continue
		}
		for _, st := range stats {
			if st.State != instances.StateRunning {
				continue
			}
			l := st.Labels
			if l[podworker.LabelPodUID] == "" {
				continue
			}
			k := l[podworker.LabelNamespace] + "/" + l[podworker.LabelPod] + "/" + l[podworker.LabelPodUID]
			if byPod[k] == nil {
				byPod[k] = map[string]instances.Stats{}
			}
			byPod[k][l[podworker.LabelContainer]] = st
		}
	}
	if len(errs) > 0 {
		return byPod, fmt.Errorf("resource use: %s", strings.Join(errs, "; "))
	}
	return byPod, nil
}

// GetStatsSummary reports the node's and its running pods' CPU and memory.
// An executor that does not answer leaves its pods without figures (as the
// kubelet does for a container it cannot read), not the whole summary.
func (p *Provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	s, err := p.summary(ctx)
	if err != nil {
		p.cfg.Log.Warn("stats summary incomplete", "err", err)
	}
	return s, nil
}

func (p *Provider) summary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	byPod, cerr := p.collect(ctx)
	pods, _ := p.GetPods(ctx)
	now := time.Now()

	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	s := &statsv1alpha1.Summary{Node: p.nodeStats(now)}
	for _, pod := range pods {
		if pod.Status.Phase != v1.PodRunning {
			continue
		}
		ps := statsv1alpha1.PodStats{
			PodRef: statsv1alpha1.PodReference{Name: pod.Name, Namespace: pod.Namespace, UID: string(pod.UID)},
		}
		if pod.Status.StartTime != nil {
			ps.StartTime = *pod.Status.StartTime
		}
		insts := byPod[pod.Namespace+"/"+pod.Name+"/"+string(pod.UID)]
		var podMem, podCPU uint64
		var podAt time.Time
		cpuOK := true
		for _, cs := range pod.Status.ContainerStatuses {
			st, ok := insts[cs.Name]
			if !ok || cs.State.Running == nil {
				continue
			}
			at := st.Time
			if at.After(podAt) {
				podAt = at
			}
			mt := metav1.NewTime(at)
			mem := uint64(max(st.MemoryBytes, 0))
			c := statsv1alpha1.ContainerStats{
				Name:      cs.Name,
				StartTime: cs.State.Running.StartedAt,
				Memory:    &statsv1alpha1.MemoryStats{Time: mt, WorkingSetBytes: &mem, UsageBytes: proto.Uint64(mem)},
			}
			if st.CPUMeasured {
				cpu := uint64(max(st.CPU, 0))
				c.CPU = &statsv1alpha1.CPUStats{Time: mt, UsageCoreNanoSeconds: &cpu, UsageNanoCores: p.rate("i/"+st.ID, cpu, at)}
				podCPU += cpu
			} else {
				cpuOK = false
			}
			podMem += mem
			ps.Containers = append(ps.Containers, c)
		}
		if len(ps.Containers) > 0 {
			mt := metav1.NewTime(podAt)
			ps.Memory = &statsv1alpha1.MemoryStats{Time: mt, WorkingSetBytes: proto.Uint64(podMem), UsageBytes: proto.Uint64(podMem)}
			if cpuOK {
				ps.CPU = &statsv1alpha1.CPUStats{Time: mt, UsageCoreNanoSeconds: proto.Uint64(podCPU), UsageNanoCores: p.rate("p/"+string(pod.UID), podCPU, podAt)}
			}
		}
		s.Pods = append(s.Pods, ps)
	}
	for k, r := range p.cpuPrev {
		if now.Sub(r.seen) > 10*time.Minute {
			delete(p.cpuPrev, k)
		}
	}
	return s, cerr
}

// nodeStats reads the node's CPU and memory from /proc. p.statsMu is held.
func (p *Provider) nodeStats(now time.Time) statsv1alpha1.NodeStats {
	n := statsv1alpha1.NodeStats{NodeName: p.cfg.NodeName}
	mt := metav1.NewTime(now)
	if cpu, boot, err := hostinfo.ProcStat(filepath.Join(p.cfg.ProcDir, "stat")); err == nil {
		n.StartTime = metav1.NewTime(boot)
		n.CPU = &statsv1alpha1.CPUStats{Time: mt, UsageCoreNanoSeconds: proto.Uint64(cpu), UsageNanoCores: p.rate("node", cpu, now)}
	} else {
		p.cfg.Log.Debug("read node CPU failed", "err", err)
	}
	if mi, err := hostinfo.Meminfo(filepath.Join(p.cfg.ProcDir, "meminfo")); err == nil {
		total, avail, free := mi["MemTotal"], mi["MemAvailable"], mi["MemFree"]
		n.Memory = &statsv1alpha1.MemoryStats{
			Time:            mt,
			AvailableBytes:  proto.Uint64(avail),
			UsageBytes:      proto.Uint64(total - min(free, total)),
			WorkingSetBytes: proto.Uint64(total - min(avail, total)),
		}
	} else {
		p.cfg.Log.Debug("read node memory failed", "err", err)
	}
	return n
}

// GetMetricsResource serves the families metrics-server reads from
// /metrics/resource, from the same figures as the summary. scrape_error
// is 1 when an executor did not answer (its pods are then left out).
func (p *Provider) GetMetricsResource(ctx context.Context) ([]*dto.MetricFamily, error) {
	s, err := p.summary(ctx)
	scrapeErr := 0.0
	if err != nil {
		scrapeErr = 1
	}
	fam := func(name, help string, t dto.MetricType) *dto.MetricFamily {
		return &dto.MetricFamily{Name: proto.String(name), Help: proto.String(help), Type: t.Enum()}
	}
	labels := func(kv ...string) []*dto.LabelPair {
		var out []*dto.LabelPair
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, &dto.LabelPair{Name: proto.String(kv[i]), Value: proto.String(kv[i+1])})
		}
		return out
	}
	ms := func(t metav1.Time) *int64 { return proto.Int64(t.UnixMilli()) }
	counter := func(f *dto.MetricFamily, v float64, t metav1.Time, l []*dto.LabelPair) {
		f.Metric = append(f.Metric, &dto.Metric{Label: l, Counter: &dto.Counter{Value: proto.Float64(v)}, TimestampMs: ms(t)})
	}
	gauge := func(f *dto.MetricFamily, v float64, t *metav1.Time, l []*dto.LabelPair) {
		m := &dto.Metric{Label: l, Gauge: &dto.Gauge{Value: proto.Float64(v)}}
		if t != nil {
			m.TimestampMs = ms(*t)
		}
		f.Metric = append(f.Metric, m)
	}
	nodeCPU := fam("node_cpu_usage_seconds_total", "Cumulative cpu time consumed by the node in core-seconds", dto.MetricType_COUNTER)
	nodeMem := fam("node_memory_working_set_bytes", "Current working set of the node in bytes", dto.MetricType_GAUGE)
	ctrCPU := fam("container_cpu_usage_seconds_total", "Cumulative cpu time consumed by the container in core-seconds", dto.MetricType_COUNTER)
	ctrMem := fam("container_memory_working_set_bytes", "Current working set of the container in bytes", dto.MetricType_GAUGE)
	ctrStart := fam("container_start_time_seconds", "Start time of the container since unix epoch in seconds", dto.MetricType_GAUGE)
	podCPU := fam("pod_cpu_usage_seconds_total", "Cumulative cpu time consumed by the pod in core-seconds", dto.MetricType_COUNTER)
	podMem := fam("pod_memory_working_set_bytes", "Current working set of the pod in bytes", dto.MetricType_GAUGE)
	scrape := fam("scrape_error", "1 if there was an error while getting container metrics, 0 otherwise", dto.MetricType_GAUGE)

	if c := s.Node.CPU; c != nil && c.UsageCoreNanoSeconds != nil {
		counter(nodeCPU, float64(*c.UsageCoreNanoSeconds)/1e9, c.Time, nil)
	}
	if m := s.Node.Memory; m != nil && m.WorkingSetBytes != nil {
		gauge(nodeMem, float64(*m.WorkingSetBytes), &m.Time, nil)
	}
	for _, ps := range s.Pods {
		ns, pod := ps.PodRef.Namespace, ps.PodRef.Name
		for _, c := range ps.Containers {
			l := labels("container", c.Name, "namespace", ns, "pod", pod)
			if c.CPU != nil && c.CPU.UsageCoreNanoSeconds != nil {
				counter(ctrCPU, float64(*c.CPU.UsageCoreNanoSeconds)/1e9, c.CPU.Time, l)
			}
			if c.Memory != nil && c.Memory.WorkingSetBytes != nil {
				gauge(ctrMem, float64(*c.Memory.WorkingSetBytes), &c.Memory.Time, l)
			}
			gauge(ctrStart, float64(c.StartTime.UnixNano())/1e9, nil, l)
		}
		l := labels("namespace", ns, "pod", pod)
		if ps.CPU != nil && ps.CPU.UsageCoreNanoSeconds != nil {
			counter(podCPU, float64(*ps.CPU.UsageCoreNanoSeconds)/1e9, ps.CPU.Time, l)
		}
		if ps.Memory != nil && ps.Memory.WorkingSetBytes != nil {
			gauge(podMem, float64(*ps.Memory.WorkingSetBytes), &ps.Memory.Time, l)
		}
	}
	gauge(scrape, scrapeErr, nil, nil)
	return []*dto.MetricFamily{nodeCPU, nodeMem, ctrCPU, ctrMem, ctrStart, podCPU, podMem, scrape}, nil
}
