package bench

import (
	"os/exec"
	"testing"
	"time"
)

// othersBusy counts a process outside the benchmark's tree (a spinning
// shell whose parent exited, so init's).
func TestOthersBusy(t *testing.T) {
	if _, err := exec.LookPath("timeout"); err != nil {
		t.Skip(err)
	}
	busy := othersBusy()
	// The inner shell outlives the outer, which exits at once: the
	// spinner is reparented away from this process.
	if out, err := exec.Command("sh", "-c", "timeout 1 sh -c 'while :; do :; done' >/dev/null 2>&1 &").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	time.Sleep(900 * time.Millisecond)
	outside := busy()
	t.Logf("a spinner outside the tree (and whatever else ran): %.2f cores", outside)
	if outside < 0.3 {
		t.Errorf("a spinning process outside the tree counted %.2f cores, want ≥ 0.3", outside)
	}
}
