package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/internal/natsutil"
)

// TestLogsSurviveNATSRestart stops the NATS server in the middle of a pod's
// output and starts it again on the same port and store: the executor
// buffers while NATS is away, and every line reaches kubectl logs, in order.
func TestLogsSurviveNATSRestart(t *testing.T) {
	store := t.TempDir()
	nats, err := natsutil.StartServer(natsutil.ServerConfig{StoreDir: store, Token: "restart-token"})
	if err != nil {
		t.Fatal(err)
	}
	_, portStr, _ := strings.Cut(strings.TrimPrefix(nats.URL, "nats://"), ":")
	natsPort, err := strconv.Atoi(portStr)
	if err != nil {
		t.Fatalf("NATS URL %q: %v", nats.URL, err)
	}
	current := nats
	t.Cleanup(func() { current.Shutdown() })

	sp := startSplitWith(t, nats.URL, "restart-token")
	n := startNode(t, "e2e-natsrestart", sp.env, sp.flags...)
	ns := namespace(t, "e2e-natsrestart")
	image := push(t, "examples/hello:v1")

	const lines = 60
	apply(t, ns, wasmPod("steady", n.name, image, v1.RestartPolicyNever,
		v1.EnvVar{Name: "COUNT", Value: fmt.Sprint(lines)}, v1.EnvVar{Name: "SLEEP", Value: "100ms"}))
	waitFor(t, 2*time.Minute, "the first lines", func() (bool, string) {
		out, _ := kubectl(t, "logs", "-n", ns, "steady", "--tail=1")
		return strings.HasPrefix(out, "count "), out
	})
	current.Shutdown()
	current.WaitForShutdown()
	time.Sleep(1500 * time.Millisecond) // NATS is away while the module prints ~15 lines
	current, err = natsutil.StartServer(natsutil.ServerConfig{StoreDir: store, Token: "restart-token", Port: natsPort})
	if err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "steady", v1.PodSucceeded, 2*time.Minute)
	waitFor(t, 30*time.Second, "every line in kubectl logs", func() (bool, string) {
		out, _ := kubectl(t, "logs", "-n", ns, "steady")
		var counts []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "count ") {
				counts = append(counts, strings.TrimPrefix(l, "count "))
			}
		}
		if len(counts) != lines {
			return false, fmt.Sprintf("%d count lines: %v", len(counts), counts)
		}
		for i, c := range counts {
			if c != fmt.Sprint(i+1) {
				return false, fmt.Sprintf("line %d is count %s", i+1, c)
			}
		}
		return true, ""
	})
}
