package supervisor

import (
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// A child the supervisor starts inherits the raised open-file limit, at
// least the hard limit (root with CAP_SYS_RESOURCE gets FileLimit): the
// executor of 5,000 wasmtime pods held 20,000 descriptors.
func TestFileLimitInherited(t *testing.T) {
	var before syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &before); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &before) })
	got := raiseFileLimit(slog.New(slog.DiscardHandler))
	if got < before.Max {
		t.Fatalf("limit %d, below the hard limit %d", got, before.Max)
	}
	out, err := exec.Command("sh", "-c", "ulimit -n").Output()
	if err != nil {
		t.Fatal(err)
	}
	if child := strings.TrimSpace(string(out)); child != strconv.FormatUint(got, 10) {
		t.Fatalf("child's open-file limit %s, want %d", child, got)
	}
}
