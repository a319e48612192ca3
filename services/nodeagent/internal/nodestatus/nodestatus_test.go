package nodestatus

import (
	"testing"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// An executor without its second wall is named in the Ready condition's
// message with what it lacks; a fully confined one is not.
func TestConfinementNote(t *testing.T) {
	full := instances.Confinement{NoNewPrivs: true, Seccomp: true, LandlockABI: 7, UID: 65532, GID: 65532}
	noLandlock := instances.Confinement{NoNewPrivs: true, Seccomp: true, LandlockMissingReason: "the kernel has no Landlock", UID: 65532, GID: 65532}
	if g := confinementGap(full); g != "" {
		t.Errorf("a confined executor: gap %q", g)
	}
	if g := confinementGap(instances.Confinement{NoNewPrivs: true, Seccomp: true, LandlockABI: 7}); g != "runs as root" {
		t.Errorf("a confined executor running as root: gap %q", g)
	}
	if g := confinementGap(instances.Confinement{}); g != "no seccomp, no Landlock, runs as root" {
		t.Errorf("an executor reporting nothing: gap %q", g)
	}
	got := confinementNote(map[string]string{"b": confinementGap(noLandlock), "a": "no seccomp"})
	want := "; not confined: executor a: no seccomp; executor b: no Landlock (the kernel has no Landlock)"
	if got != want {
		t.Errorf("note = %q, want %q", got, want)
	}
	if confinementNote(nil) != "" {
		t.Error("a note with every executor confined")
	}
}

// The node names its executors' engines and platforms, and labels each
// flavour it serves with its platform, so a RuntimeClass can select an
// architecture; a flavour that goes away loses its label, others' labels
// are left alone.
func TestDescribeExecutors(t *testing.T) {
	info := func(engine, version, arch string) *instances.Info {
		return &instances.Info{Engine: engine, Version: version, OS: "linux", Arch: arch}
	}
	rv, labels := describe([]served{
		servedBy("wasmtime", info("wasmtime", "39.0.1", "amd64")),
		servedBy("wasmtime", info("wasmtime", "39.0.1", "amd64")),
		servedBy("wasmtime-arm64", info("wasmtime", "39.0.1", "arm64")),
		servedBy("wazero", info("wazero", "v1.12.0", "amd64")),
		servedBy("Bad Flavour!", info("wazero", "v1.12.0", "amd64")),
	})
	if want := "wasmtime://39.0.1 (linux/amd64), wasmtime://39.0.1 (linux/arm64), wazero://v1.12.0 (linux/amd64)"; rv != want {
		t.Errorf("runtime version %q, want %q", rv, want)
	}
	want := map[string]string{
		"flavour.wasmlet.io/wasmtime":        "true",
		"flavour.wasmlet.io/wasmtime-arm64":  "true",
		"flavour.wasmlet.io/wazero":          "true",
		"platform.wasmlet.io/wasmtime":       "linux-amd64",
		"platform.wasmlet.io/wasmtime-arm64": "linux-arm64",
		"platform.wasmlet.io/wazero":         "linux-amd64",
	}
	if len(labels) != len(want) {
		t.Errorf("labels %v, want %v", labels, want)
	}
	for k, v := range want {
		if labels[k] != v {
			t.Errorf("label %s=%q, want %q", k, labels[k], v)
		}
	}
	_, mixed := describe([]served{
		servedBy("w", info("wasmtime", "39.0.1", "arm64")),
		servedBy("w", info("wasmtime", "39.0.1", "amd64")),
	})
	if mixed["platform.wasmlet.io/w"] != "linux-amd64_linux-arm64" {
		t.Errorf("a flavour on two platforms: %v", mixed)
	}

	have := map[string]string{"user": "x", "flavour.wasmlet.io/gone": "true", "platform.wasmlet.io/gone": "linux-amd64", "flavour.wasmlet.io/wazero": "true"}
	if !setFlavourLabels(have, want) {
		t.Error("no change reported")
	}
	_, gone1 := have["flavour.wasmlet.io/gone"]
	_, gone2 := have["platform.wasmlet.io/gone"]
	if gone1 || gone2 || have["user"] != "x" || have["platform.wasmlet.io/wasmtime-arm64"] != "linux-arm64" {
		t.Errorf("labels after: %v", have)
	}
	if setFlavourLabels(have, want) {
		t.Error("a change reported for labels already as wanted")
	}
}
