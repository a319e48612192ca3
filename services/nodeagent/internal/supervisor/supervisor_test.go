package supervisor

import (
	"slices"
	"strings"
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

// TestListenerSocket: the executor gets --listener-socket in its state dir
// by default, or where the config says; the path is what ListenerSocket
// returns; a path no unix socket can have is left out by default and
// refused when asked for.
func TestListenerSocket(t *testing.T) {
	s, err := New(Config{Binary: "/bin/true", Args: []string{"--listen", "unix:///run/e.sock", "--state-dir", "/var/lib/wasmlet/executor", "--max-instances", "4"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.ListenerSocket(); got != "/var/lib/wasmlet/executor/listeners.sock" {
		t.Errorf("ListenerSocket = %q", got)
	}
	want := []string{"--listen", "unix:///run/e.sock", "--state-dir", "/var/lib/wasmlet/executor", "--max-instances", "4", "--listener-socket", "/var/lib/wasmlet/executor/listeners.sock"}
	if got := s.args(); !slices.Equal(got, want) {
		t.Errorf("args %q, want %q", got, want)
	}
	s, err = New(Config{Binary: "/bin/true", Args: []string{"--state-dir=/s"}, ListenerSocket: "/run/wasmlet/l.sock", Confinement: Confinement{RunAsUser: "65532"}})
	if err != nil || s.ListenerSocket() != "/run/wasmlet/l.sock" || !slices.Equal(s.args(), []string{"--state-dir=/s", "--run-as-user", "65532", "--listener-socket", "/run/wasmlet/l.sock"}) {
		t.Errorf("configured: %v %q", err, s.args())
	}
	s, err = New(Config{Binary: "/bin/true", Args: []string{"--listener-socket", "/x/l.sock"}})
	if err != nil || s.ListenerSocket() != "/x/l.sock" || slices.Contains(s.args()[2:], "--listener-socket") {
		t.Errorf("given in Args: %v %q %q", err, s.ListenerSocket(), s.args())
	}
	long := "/" + strings.Repeat("d", 100)
	s, err = New(Config{Binary: "/bin/true", Args: []string{"--state-dir", long}})
	if err != nil || s.ListenerSocket() != "" || slices.Contains(s.args(), "--listener-socket") {
		t.Errorf("a state dir too long for a socket: %v %q %q", err, s.ListenerSocket(), s.args())
	}
	if _, err := New(Config{Binary: "/bin/true", ListenerSocket: long + "/l.sock"}); err == nil {
		t.Error("a listener socket path too long was accepted")
	}
	if _, err := New(Config{Binary: "/bin/true", ListenerSocket: "l.sock"}); err == nil {
		t.Error("a relative listener socket was accepted")
	}
}
