package supervisor

import (
	"slices"
	"testing"
)

func TestConfinementFlags(t *testing.T) {
	if got := (Confinement{}).flags(); len(got) != 0 {
		t.Errorf("default confinement: flags %q, want none (the executor confines itself)", got)
	}
	got := Confinement{Off: true, RunAsUser: "wasmlet", RunAsGroup: "1001", ReadWrite: []string{"/srv/a", "/srv/b"}}.flags()
	want := []string{"--confine=false", "--run-as-user", "wasmlet", "--run-as-group", "1001", "--landlock-rw", "/srv/a", "--landlock-rw", "/srv/b"}
	if !slices.Equal(got, want) {
		t.Errorf("flags %q, want %q", got, want)
	}
	if _, err := New(Config{Binary: "/bin/true", Confinement: Confinement{ReadWrite: []string{"relative"}}}); err == nil {
		t.Error("a relative --landlock-rw was accepted")
	}
}
