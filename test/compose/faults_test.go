package compose

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The faults a developer can cause with docker, one after another on the
// running stack, each with what the workloads saw: pods stuck or
// restarted, log lines lost, and the time to recover. Two logging pods
// (one per node, ten lines a second) carry the log checks; the spread
// Deployment carries the restart checks.

const (
	natsCut        = 20 * time.Second
	logInterval    = "100ms"
	imageRefV2     = "registry:5000/examples/hello:v2"
	nodeLostWithin = 2 * time.Minute
)

// loggers are the logging pods, by node.
var loggers = map[string]string{"logs-1": "wasmtime", "logs-2": "wazero"}

func (s *stack) startLoggers() {
	for pod, rc := range loggers {
		s.kubectlIn(loggerManifest(pod, rc), "apply", "-f", "-")
	}
	for pod := range loggers {
		s.waitFor(2*time.Minute, pod+" Running", func() bool {
			return s.kubectlQuiet("get", "pod", pod, "-o", "jsonpath={.status.phase}") == "Running"
		})
	}
}

// faults runs the fault steps; module is the example module's file.
func (s *stack) faults(module string) {
	t := s.t
	s.startLoggers()

	// A node agent cut off from NATS: the executors go on publishing the
	// pods' logs; kubectl logs on that node fails meanwhile and then shows
	// every line.
	s.step(fmt.Sprintf("disconnect nodeagent-1 from NATS for %s", natsCut))
	before := s.restarts()
	na1 := s.one("nodeagent-1")
	last := s.lastCount("logs-1")
	s.run("docker", "network", "disconnect", project+"_bus", na1)
	// The node agent gives a silent NATS connection up after 15-20 s.
	time.Sleep(natsCut - 2*time.Second)
	_, err := s.try(nil, "kubectl", "--kubeconfig", s.kubeconfig, "--request-timeout=5s", "logs", "logs-1", "--tail=1")
	t.Logf("FAULT nats-cut: kubectl logs logs-1 while cut: %v", errOr(err, "answered"))
	time.Sleep(2 * time.Second)
	s.run("docker", "network", "connect", project+"_bus", na1)
	back := time.Now()
	s.waitLogsPast("logs-1", last+int(natsCut/(100*time.Millisecond)))
	t.Logf("FAULT nats-cut: logs-1's lines written while cut readable %.1fs after reconnecting", time.Since(back).Seconds())
	s.checkLogs("nats-cut")
	s.checkNoRestarts("nats-cut", before)

	// NATS restarted: its JetStream store is on a volume; executors keep
	// their lines in their outbox meanwhile.
	s.step("docker restart nats")
	before = s.restarts()
	last1, last2 := s.lastCount("logs-1"), s.lastCount("logs-2")
	restart := time.Now()
	s.run("docker", "restart", "--time", "5", s.one("nats"))
	s.waitLogsPast("logs-1", last1+50)
	s.waitLogsPast("logs-2", last2+50)
	t.Logf("FAULT nats-restart: both nodes' logs current again %.1fs after `docker restart`", time.Since(restart).Seconds())
	s.checkLogs("nats-restart")
	s.checkNoRestarts("nats-restart", before)

	// One executor replica killed: its pods restart on the others, as
	// their restart policy says; no other pod restarts.
	s.step("docker kill one executor-wasmtime replica")
	held := s.spreadByReplica()
	var victim string
	for c, pods := range held {
		if victim == "" || len(pods) > len(held[victim]) {
			victim = c
		}
	}
	before = s.restarts()
	kill := time.Now()
	s.run("docker", "kill", victim)
	want := map[string]bool{}
	for _, p := range held[victim] {
		want[p] = true
	}
	s.waitFor(3*time.Minute, fmt.Sprintf("the %d pods of %s restarted and all %d Running", len(want), victim, spreadReplicas), func() bool {
		now := s.restarts()
		for p := range want {
			if now[p] <= before[p] {
				return false
			}
		}
		return s.running("app=spread") == spreadReplicas
	})
	t.Logf("FAULT executor-kill: %d pods of %s restarted elsewhere, all %d Running %.1fs after the kill",
		len(want), victim, spreadReplicas, time.Since(kill).Seconds())
	for p, n := range s.restarts() {
		if !want[p] && n != before[p] && !strings.HasPrefix(p, "logs-") {
			t.Errorf("FAULT executor-kill: pod %s was not on %s and restarted (%d -> %d)", p, victim, before[p], n)
		}
	}

	// The registry cache paused during a rollout: the new pods say why
	// they cannot pull, the old ones keep running, and the rollout ends
	// once the cache answers again.
	s.step("docker pause registry-cache during a rollout")
	s.push(module, imageRefV2)
	cache := s.one("registry-cache")
	s.run("docker", "pause", cache)
	paused := time.Now()
	s.kubectl("set", "image", "deployment/spread", "hello="+imageRefV2)
	var pullMsg string
	s.waitFor(2*time.Minute, "a new spread pod reporting its failed pull", func() bool {
		pullMsg = s.kubectlQuiet("get", "pods", "-l", "app=spread", "-o",
			`jsonpath={range .items[*]}{.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}{"\n"}{end}`)
		return strings.Contains(pullMsg, "ErrImagePull") || strings.Contains(pullMsg, "ImagePullBackOff")
	})
	for _, l := range strings.Split(pullMsg, "\n") {
		if strings.Contains(l, "Pull") {
			pullMsg = l
			break
		}
	}
	t.Logf("FAULT cache-pause: %.1fs after the pause a new pod says %q; %d spread pods Running",
		time.Since(paused).Seconds(), pullMsg, s.running("app=spread"))
	if !strings.Contains(strings.ToLower(pullMsg), "registry cache") {
		t.Errorf("FAULT cache-pause: the pull error %q does not name the registry cache", pullMsg)
	}
	if n := s.running("app=spread"); n < spreadReplicas*3/4 {
		t.Errorf("FAULT cache-pause: only %d of %d spread pods Running during the stalled rollout", n, spreadReplicas)
	}
	s.run("docker", "unpause", cache)
	unpaused := time.Now()
	s.run("kubectl", "--kubeconfig", s.kubeconfig, "rollout", "status", "deployment/spread", "--timeout=5m")
	t.Logf("FAULT cache-pause: rollout complete %.1fs after the unpause", time.Since(unpaused).Seconds())

	// A node agent killed: its Node goes NotReady, the other node's pods
	// are untouched, and when it returns it adopts its pods, which ran on
	// in their executors, without restarting them.
	s.step("docker kill nodeagent-2")
	before = s.restarts()
	last2 = s.lastCount("logs-2")
	na2 := s.one("nodeagent-2")
	kill = time.Now()
	s.run("docker", "kill", na2)
	s.waitFor(nodeLostWithin, "Node wasmlet-2 not Ready", func() bool {
		st := s.kubectlQuiet("get", "node", "wasmlet-2", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return st != "" && st != "True"
	})
	t.Logf("FAULT nodeagent-kill: Node wasmlet-2 not Ready %.1fs after the kill", time.Since(kill).Seconds())
	start := time.Now()
	s.run("docker", "start", na2)
	s.waitFor(2*time.Minute, "Node wasmlet-2 Ready again", func() bool {
		return s.kubectlQuiet("get", "node", "wasmlet-2", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`) == "True"
	})
	t.Logf("FAULT nodeagent-kill: Node wasmlet-2 Ready %.1fs after `docker start`", time.Since(start).Seconds())
	s.waitLogsPast("logs-2", last2+10)
	s.checkLogs("nodeagent-kill")
	s.checkNoRestarts("nodeagent-kill", before)
}

// one is the single running container of a service.
func (s *stack) one(service string) string {
	s.t.Helper()
	out, _ := s.try(nil, "docker", "ps", "--format", "{{.Names}}",
		"--filter", "label=com.docker.compose.project="+project,
		"--filter", "label=com.docker.compose.service="+service)
	names := strings.Fields(out)
	if len(names) != 1 {
		s.t.Fatalf("containers of %s: %v, want one", service, names)
	}
	return names[0]
}

func (s *stack) push(file, ref string) string {
	s.t.Helper()
	return s.composeRun("run", "--rm", "--no-deps", "-T", "-v", file+":/module.wasm:ro",
		"--entrypoint", "/bin/registry-cache", "registry-cache", "push", "--plain-http", "/module.wasm", ref)
}

// restarts is every pod's restart count (its first container's).
func (s *stack) restarts() map[string]int {
	out := s.kubectlQuiet("get", "pods", "-o",
		`jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount}{"\n"}{end}`)
	m := map[string]int{}
	for _, l := range strings.Fields(out) {
		name, n, _ := strings.Cut(l, "=")
		m[name], _ = strconv.Atoi(n)
	}
	return m
}

func (s *stack) checkNoRestarts(fault string, before map[string]int) {
	s.t.Helper()
	after := s.restarts()
	var restarted []string
	for p, n := range before {
		if a, ok := after[p]; ok && a != n {
			restarted = append(restarted, fmt.Sprintf("%s %d->%d", p, n, a))
		}
	}
	sort.Strings(restarted)
	s.t.Logf("FAULT %s: %d pods, %d restarted %v", fault, len(before), len(restarted), restarted)
	if len(restarted) > 0 {
		s.t.Errorf("FAULT %s: pods restarted: %v", fault, restarted)
	}
}

func (s *stack) running(selector string) int {
	out := s.kubectlQuiet("get", "pods", "-l", selector, "-o", "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}")
	return strings.Count(out, "Running")
}

// spreadByReplica lists the spread pods each executor-wasmtime replica runs.
func (s *stack) spreadByReplica() map[string][]string {
	m := map[string][]string{}
	for _, c := range s.containers("executor-wasmtime", "healthy") {
		out := s.run("docker", append([]string{"exec", c, "/bin/wasmlet-compose", "instances", "tcp://{ip}:7000"}, strings.Fields(executorTLSFlags)...)...)
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "default/spread-") && strings.HasSuffix(line, " RUNNING") {
				pod, _, _ := strings.Cut(strings.TrimPrefix(line, "default/"), " ")
				m[c] = append(m[c], pod)
			}
		}
	}
	return m
}

var countLine = regexp.MustCompile(`^count (\d+)$`)

// counts are the "count N" lines of a pod's log.
func (s *stack) counts(pod string) ([]int, error) {
	out, err := s.try(nil, "kubectl", "--kubeconfig", s.kubeconfig, "--request-timeout=20s", "logs", pod)
	if err != nil {
		return nil, err
	}
	var n []int
	for _, l := range strings.Split(out, "\n") {
		if m := countLine.FindStringSubmatch(l); m != nil {
			i, _ := strconv.Atoi(m[1])
			n = append(n, i)
		}
	}
	return n, nil
}

func (s *stack) lastCount(pod string) int {
	s.t.Helper()
	n, err := s.counts(pod)
	if err != nil {
		s.t.Fatal(err)
	}
	if len(n) == 0 {
		return 0
	}
	return n[len(n)-1]
}

func (s *stack) waitLogsPast(pod string, count int) {
	s.t.Helper()
	s.waitFor(3*time.Minute, fmt.Sprintf("kubectl logs %s past count %d", pod, count), func() bool {
		n, err := s.counts(pod)
		return err == nil && len(n) > 0 && n[len(n)-1] > count
	})
}

// checkLogs fails unless every logging pod's log counts 1, 2, 3... with no
// line missing or repeated.
func (s *stack) checkLogs(fault string) {
	s.t.Helper()
	for pod := range loggers {
		n, err := s.counts(pod)
		if err != nil {
			s.t.Errorf("FAULT %s: kubectl logs %s: %v", fault, pod, err)
			continue
		}
		var gaps []string
		for i, c := range n {
			if c != i+1 {
				gaps = append(gaps, fmt.Sprintf("line %d is count %d", i+1, c))
				if len(gaps) == 5 {
					break
				}
			}
		}
		s.t.Logf("FAULT %s: %s logged counts 1..%d, %d lines out of order or lost", fault, pod, len(n), len(gaps))
		if len(gaps) > 0 {
			s.t.Errorf("FAULT %s: %s lost or repeated lines: %v", fault, pod, gaps)
		}
	}
}

func errOr(err error, ok string) string {
	if err != nil {
		return strings.ReplaceAll(err.Error(), "\n", " ")
	}
	return ok
}

func loggerManifest(name, runtimeClass string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  runtimeClassName: %s
  containers:
    - name: hello
      image: %s
      env:
        - {name: COUNT, value: "1000000"}
        - {name: SLEEP, value: %s}
`, name, runtimeClass, imageRef, logInterval))
}
