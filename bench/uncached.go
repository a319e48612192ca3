package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
)

// uncached starts pods whose module neither the node nor the registry
// cache has seen: each pod names a module of its own (the example module
// with a custom section that makes its digest unique), pushed to the
// registry just before. The start then includes the pull from the origin
// registry and the compile; the pull alone is read from the pod's Pulled
// event, which the node agent stamps with the pull's duration.
func uncached(ctx context.Context, s *Stack, opts Options) ([]Figure, error) {
	ns, err := s.namespace(ctx, "bench-uncached")
	if err != nil {
		return nil, err
	}
	wasm, err := os.ReadFile(filepath.Join(s.Bin, "hello.wasm"))
	if err != nil {
		return nil, err
	}
	env := []v1.EnvVar{{Name: "COUNT", Value: "1000000000"}, {Name: "SLEEP", Value: "10s"}}
	var starts, pulls []time.Duration
	for i := range opts.Uncached {
		image, err := s.pushVariant(ctx, wasm, "uncached", i)
		if err != nil {
			return nil, err
		}
		ps := &PodStarter{Client: s.Client, WatchClient: s.WatchClient, Node: WasmNode, Image: image, Env: env, Namespace: ns}
		name := fmt.Sprintf("uncached-%d", i)
		d, err := ps.Singles(ctx, name, 1)
		if err != nil {
			return nil, err
		}
		starts = append(starts, d...)
		pull, err := s.pullTime(ctx, ns, name+"-0")
		if err != nil {
			return nil, err
		}
		pulls = append(pulls, pull)
		if err := s.clear(ctx, ps); err != nil {
			return nil, err
		}
	}
	start := Durations("pod start, uncached module, "+WasmNode, "create call → watch shows the container running, the module new to the node and to the registry cache (pull from the origin registry + compile + start); pods one after another", starts)
	start.Anchor = "Kubernetes pod-start SLO: p99 ≤ 5 s, pulls excluded (this figure includes them)"
	return []Figure{
		start,
		Durations("pull, uncached module, "+WasmNode, "the pull's duration in the pod's Pulled event: the registry cache fetching a 2.8 MB module from the origin registry and verifying it", pulls),
	}, nil
}

// pushVariant pushes wasm with a custom section of its own (a digest
// that neither the node nor the registry cache has seen) to the stack's
// registry as bench/<repo>:<tag> and returns its digest reference.
func (s *Stack) pushVariant(ctx context.Context, wasm []byte, repo string, i int) (string, error) {
	tag := fmt.Sprintf("%d-%d", time.Now().UnixNano(), i)
	file := filepath.Join(s.dir, repo+"-"+tag+".wasm")
	if err := os.WriteFile(file, wasmbuild.WithCustomSection(wasm, "wasmlet-bench", []byte(tag)), 0o644); err != nil {
		return "", err
	}
	defer os.Remove(file)
	out, err := exec.CommandContext(ctx, filepath.Join(s.Bin, "registry-cache"), "push", "--plain-http", file, s.Registry.Host+"/bench/"+repo+":"+tag).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("push: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

var pulledIn = regexp.MustCompile(`pulled image ".*" in ([0-9.]+[a-zµ]+)`)

// pullTime reads the pull's duration from the pod's Pulled event. The
// node agent paces events (50/s, as the kubelet), and the bursts of the
// sections before leave thousands queued: the event may come minutes
// after the pod runs.
func (s *Stack) pullTime(ctx context.Context, ns, pod string) (time.Duration, error) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		evs, err := s.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
			FieldSelector: fields.AndSelectors(fields.OneTermEqualSelector("involvedObject.name", pod), fields.OneTermEqualSelector("reason", "Pulled")).String(),
		})
		if err != nil {
			return 0, err
		}
		for _, e := range evs.Items {
			if m := pulledIn.FindStringSubmatch(e.Message); m != nil {
				return time.ParseDuration(m[1])
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("pod %s/%s: no Pulled event with a duration after 5m", ns, pod)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
