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
