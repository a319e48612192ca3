package podworker

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/instancestest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// failingCache fails its first fails resolves, or every one.
type failingCache struct {
	moduleCache
	fails   atomic.Int32
	forever bool
}

func (c *failingCache) Resolve(ctx context.Context, req regcache.ResolveRequest) (regcache.Resolved, error) {
	if c.forever || c.fails.Add(-1) >= 0 {
		return regcache.Resolved{}, errors.New("manifest unknown")
	}
	return c.moduleCache.Resolve(ctx, req)
}

// blockingCache resolves nothing until the context ends.
type blockingCache struct{ moduleCache }

func (blockingCache) Resolve(ctx context.Context, _ regcache.ResolveRequest) (regcache.Resolved, error) {
	<-ctx.Done()
	return regcache.Resolved{}, ctx.Err()
}

// behaviour scripts the Fake by container and attempt (the restart-count
// label) and by how many instances of the container were created before.
func behaviour(f func(container string, attempt, created int) instancestest.Outcome) func(string, instances.Spec) instancestest.Outcome {
	var mu sync.Mutex
	created := map[string]int{}
	return func(_ string, spec instances.Spec) instancestest.Outcome {
		c := spec.Labels[LabelContainer]
		attempt, _ := strconv.Atoi(spec.Labels[LabelRestartCount])
		mu.Lock()
		n := created[c]
		created[c]++
		mu.Unlock()
		return f(c, attempt, n)
	}
}

var (
	runs    = instancestest.RunsUntilStopped()
	exits   = func(code int32) instancestest.Outcome { return instancestest.ExitsWith(code, 20*time.Millisecond) }
	notWasm = instancestest.FailsWith("ModuleInvalid", "not a Wasm module")
	always  = func(o instancestest.Outcome) func(string, int, int) instancestest.Outcome {
		return func(string, int, int) instancestest.Outcome { return o }
	}
)

// TestEveryTransitionWalked drives the Worker, against the Fake, through
// every transition the table declares: each scenario names the ones it
// walks, and together they walk them all.
func TestEveryTransitionWalked(t *testing.T) {
	tr := func(from, to State) transition { return transition{from, to} }
	slowPull := testBackoff
	slowPull.Initial, slowPull.Max = 2500*time.Millisecond, 2500*time.Millisecond // 2 s showing ErrImagePull, then PullBackOff
	ended := func(pod *v1.Pod) *instancestest.Fake {
		// An earlier life of the node agent started the pod; its
		// container exited while the node agent was away.
		exec := &instancestest.Fake{Behave: behaviour(always(exits(7)))}
		spec, _ := instanceSpec(pod, &pod.Spec.Containers[0], specInput{digest: testDigest})
		ctx := context.Background()
		if _, err := exec.Create(ctx, instanceID(pod, "app", 0), spec, true); err != nil {
			panic(err)
		}
		for in, _ := exec.Get(ctx, instanceID(pod, "app", 0)); !in.State.Terminal(); in, _ = exec.Get(ctx, in.ID) {
			time.Sleep(5 * time.Millisecond)
		}
		exec.Behave = nil
		started := metav1.NewTime(time.Now().Add(-time.Minute))
		pod.Status.StartTime = &started
		return exec
	}
	withVolume := func(pod *v1.Pod) *v1.Pod {
		pod.Spec.Volumes = []v1.Volume{{Name: "cfg", VolumeSource: v1.VolumeSource{ConfigMap: &v1.ConfigMapVolumeSource{
			LocalObjectReference: v1.LocalObjectReference{Name: "missing"}}}}}
		return pod
	}
	scenarios := []struct {
		name   string
		pod    *v1.Pod
		script func(container string, attempt, created int) instancestest.Outcome
		exec   func(pod *v1.Pod) *instancestest.Fake // instead of script
		cfg    config
		drive  func(h *harness)
		walks  []transition
	}{{
		name: "runs, then is deleted", pod: testPod(v1.RestartPolicyAlways, nil, "app"), script: always(runs),
		drive: func(h *harness) { h.waitState(StateRunning); h.terminate() },
		walks: []transition{tr(StateRegistered, StatePulling), tr(StatePulling, StatePreparingVolumes), tr(StatePreparingVolumes, StateStarting),
			tr(StateStarting, StateRunning), tr(StateRunning, StateTerminating), tr(StateTerminating, StateTerminated)},
	}, {
		name: "deleted before it started", pod: testPod(v1.RestartPolicyAlways, nil, "app"), script: always(runs),
		cfg:   config{before: func(w *Worker) { w.Terminate(0) }},
		drive: func(h *harness) { <-h.w.Done() },
		walks: []transition{tr(StateRegistered, StateTerminating)},
	}, {
		name: "a pull fails once", pod: testPod(v1.RestartPolicyAlways, nil, "app"), script: always(runs),
		cfg:   config{cache: func() regcache.Cache { c := &failingCache{}; c.fails.Store(1); return c }()},
		drive: func(h *harness) { h.waitState(StateRunning); h.terminate() },
		walks: []transition{tr(StatePulling, StatePullBackOff), tr(StatePullBackOff, StatePulling)},
	}, {
		name: "deleted while pulling", pod: testPod(v1.RestartPolicyAlways, nil, "app"), script: always(runs),
		cfg:   config{cache: blockingCache{}},
		drive: func(h *harness) { h.waitState(StatePulling); h.terminate() },
		walks: []transition{tr(StatePulling, StateTerminating)},
	}, {
		name: "deleted in the pull's back-off", pod: testPod(v1.RestartPolicyAlways, nil, "app"), script: always(runs),
		cfg:   config{backoff: slowPull, cache: &failingCache{forever: true}},
		drive: func(h *harness) { h.waitState(StatePullBackOff); h.terminate() },
		walks: []transition{tr(StatePullBackOff, StateTerminating)},
	}, {
		name: "deleted while a volume cannot be set up", pod: withVolume(testPod(v1.RestartPolicyAlways, nil, "app")), script: always(runs),
		drive: func(h *harness) {
			h.waitFor("CreateContainerConfigError", func(st v1.PodStatus) bool { return waitingReason(st, "app") == "CreateContainerConfigError" })
			h.terminate()
		},
		walks: []transition{tr(StatePreparingVolumes, StateTerminating)},
	}, {
		name: "an init container, then the app", pod: testPod(v1.RestartPolicyOnFailure, []string{"init"}, "app"),
		script: func(c string, _, _ int) instancestest.Outcome {
			if c == "init" {
				return exits(0)
			}
			return runs
		},
		drive: func(h *harness) { h.waitState(StateRunning); h.terminate() },
		walks: []transition{tr(StatePreparingVolumes, StateInitializing), tr(StateInitializing, StateRunning)},
	}, {
		name: "an init container crash-loops, then the app cannot be created once", pod: testPod(v1.RestartPolicyOnFailure, []string{"init"}, "app"),
		script: func(c string, attempt, created int) instancestest.Outcome {
			switch {
			case c == "init" && attempt < 2:
				return exits(1)
			case c == "init":
				return exits(0)
			case created == 0:
				return notWasm
			}
			return runs
		},
		drive: func(h *harness) { h.waitState(StateRunning); h.terminate() },
		walks: []transition{tr(StateInitializing, StateCrashLoopBackOff), tr(StateCrashLoopBackOff, StateInitializing),
			tr(StateInitializing, StateStarting), tr(StateStarting, StateRunning)},
	}, {
		name: "an init container fails under Never", pod: testPod(v1.RestartPolicyNever, []string{"init"}, "app"), script: always(exits(1)),
		drive: func(h *harness) { h.waitState(StateCompleted); h.terminate() },
		walks: []transition{tr(StateInitializing, StateCompleted), tr(StateCompleted, StateTerminating)},
	}, {
		name: "deleted while initializing", pod: testPod(v1.RestartPolicyAlways, []string{"init"}, "app"), script: always(runs),
		drive: func(h *harness) { h.waitState(StateInitializing); h.terminate() },
		walks: []transition{tr(StateInitializing, StateTerminating)},
	}, {
		name: "one container crash-loops while the other cannot be created", pod: testPod(v1.RestartPolicyAlways, nil, "a", "b"),
		script: func(c string, _, _ int) instancestest.Outcome {
			if c == "a" {
				return exits(1)
			}
			return notWasm
		},
		drive: func(h *harness) {
			h.waitFor("a restarted after its back-off", func(st v1.PodStatus) bool { return container(st, "a").RestartCount >= 3 })
			h.terminate()
		},
		walks: []transition{tr(StateStarting, StateCrashLoopBackOff), tr(StateCrashLoopBackOff, StateStarting)},
	}, {
		name: "deleted while a container cannot be created", pod: testPod(v1.RestartPolicyAlways, nil, "app"), script: always(notWasm),
		drive: func(h *harness) { h.waitState(StateStarting); h.terminate() },
		walks: []transition{tr(StateStarting, StateTerminating)},
	}, {
		name: "a restart cannot be created once", pod: testPod(v1.RestartPolicyAlways, nil, "app"),
		script: func(_ string, attempt, created int) instancestest.Outcome {
			switch {
			case attempt == 0:
				return exits(1)
			case created == 1:
				return notWasm
			}
			return runs
		},
		drive: func(h *harness) {
			h.waitFor("running after one restart", func(st v1.PodStatus) bool {
				return container(st, "app").RestartCount == 1 && container(st, "app").State.Running != nil
			})
			h.terminate()
		},
		walks: []transition{tr(StateRunning, StateStarting), tr(StateStarting, StateRunning)},
	}, {
		name: "crash loop, then deleted in its back-off", pod: testPod(v1.RestartPolicyAlways, nil, "app"), script: always(exits(1)),
		drive: func(h *harness) {
			h.waitFor("running after a back-off", func(st v1.PodStatus) bool { return container(st, "app").RestartCount >= 2 })
			h.waitState(StateRunning)
			h.waitState(StateCrashLoopBackOff)
			h.terminate()
		},
		walks: []transition{tr(StateRunning, StateCrashLoopBackOff), tr(StateCrashLoopBackOff, StateRunning), tr(StateCrashLoopBackOff, StateTerminating)},
	}, {
		name: "a Job completes, then is deleted", pod: testPod(v1.RestartPolicyOnFailure, nil, "app"), script: always(exits(0)),
		drive: func(h *harness) { h.waitState(StateCompleted); h.terminate() },
		walks: []transition{tr(StateRunning, StateCompleted), tr(StateCompleted, StateTerminating)},
	}, {
		name: "adopted after it ended while the node agent was away", pod: testPod(v1.RestartPolicyNever, nil, "app"), exec: ended,
		drive: func(h *harness) {
			st := h.waitFor("failed", func(st v1.PodStatus) bool { return st.Phase == v1.PodFailed })
			if term := container(st, "app").State.Terminated; term == nil || term.ExitCode != 7 {
				h.t.Errorf("adopted: %s", describe(st))
			}
			h.waitState(StateCompleted)
			h.terminate()
		},
		walks: []transition{tr(StatePreparingVolumes, StateStarting), tr(StateStarting, StateCompleted)},
	}}

	var mu sync.Mutex
	walked := map[transition]bool{}
	t.Run("scenarios", func(t *testing.T) {
		for _, sc := range scenarios {
			t.Run(sc.name, func(t *testing.T) {
				t.Parallel()
				exec := &instancestest.Fake{}
				if sc.exec != nil {
					exec = sc.exec(sc.pod)
				} else {
					exec.Behave = behaviour(sc.script)
				}
				if sc.cfg.backoff == (Backoff{}) {
					sc.cfg.backoff = testBackoff
				}
				h := runWith(t, exec, sc.pod, sc.cfg)
				sc.drive(h)
				got := h.walked()
				for _, want := range sc.walks {
					if !slices.Contains(got, want) {
						t.Errorf("did not walk %s; walked %v", want, got)
					}
				}
				mu.Lock()
				for _, tr := range got {
					walked[tr] = true
				}
				mu.Unlock()
			})
		}
	})
	for from, tos := range transitions {
		for _, to := range tos {
			if !walked[tr(from, to)] {
				t.Errorf("declared transition %s -> %s was never walked", from, to)
			}
		}
	}
}
