package provider

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A pod deleted while the node agent was away leaves its directory, and
// its secrets on a tmpfs; the next start removes both, and keeps the
// directories of pods still bound.
func TestRemoveOrphanVolumes(t *testing.T) {
	state := t.TempDir()
	gone := filepath.Join(state, "pods", "gone-uid", "volumes", "token")
	kept := filepath.Join(state, "pods", "kept-uid", "volumes", "data")
	for _, d := range []string{gone, kept} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	mounted := os.Geteuid() == 0
	if mounted {
		if err := unix.Mount("tmpfs", gone, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = unix.Unmount(gone, unix.MNT_DETACH) })
	}
	if err := os.WriteFile(filepath.Join(gone, "token"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &Provider{cfg: Config{StateDir: state, Log: slog.New(slog.DiscardHandler)}}
	p.RemoveOrphanVolumes(func(uid string) bool { return uid == "kept-uid" })
	if _, err := os.Stat(filepath.Join(state, "pods", "gone-uid")); !os.IsNotExist(err) {
		t.Errorf("the deleted pod's directory is left: %v", err)
	}
	if _, err := os.Stat(kept); err != nil {
		t.Errorf("a bound pod's volume was removed: %v", err)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); mounted && strings.Contains(string(b), " "+gone+" ") {
		t.Error("the deleted pod's tmpfs is still mounted")
	}
}
