package instancestest

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// The Fake keeps the contracts it stands in for.
func TestFakeConformance(t *testing.T) {
	spec := func(name string) instances.Spec {
		sum := sha256.Sum256([]byte(name))
		return instances.Spec{Module: instances.Module{Digest: "sha256:" + hex.EncodeToString(sum[:]), Reference: name}}
	}
	for name, listeners := range map[string]bool{"WithoutListeners": false, "WithListeners": true} {
		t.Run(name, func(t *testing.T) { fakeConformance(t, spec, listeners) })
	}
}

func fakeConformance(t *testing.T, spec func(string) instances.Spec, listeners bool) {
	var modes []instances.HandlerMode // handler mode along with listeners
	if listeners {
		modes = []instances.HandlerMode{instances.HandlerWAGI}
	}
	Run(t, Harness{
		New: func(t *testing.T, history int) instances.Runtime {
			return &Fake{History: history, Listeners: listeners, ListenerHandoff: listeners, HandlerModes: modes, Behave: func(_ string, s instances.Spec) Outcome {
				if s.HandedListeners { // none ever are
					return FailsWith(instances.ReasonListenFailed, "no listeners were handed over")
				}
				switch s.Module.Reference {
				case "exit0":
					return ExitsWith(0, time.Millisecond)
				case "exit3":
					return ExitsWith(3, time.Millisecond)
				case "text":
					return FailsWith("ModuleInvalid", "not a Wasm module")
				}
				return RunsUntilStopped()
			}}
		},
		Exit0:       spec("exit0"),
		ExitNonZero: spec("exit3"),
		ExitCode:    3,
		Running:     spec("idle"),
		NotWasm:     spec("text"),
	})
}
