package instance

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A start that failed because the executor is out of descriptors says so,
// and what to do; at 5,000 pods a wasmtime executor's pods said only
// "failed to open file".
func TestExplainOutOfFiles(t *testing.T) {
	cause := errors.New("failed to open file")
	if got := explainOutOfFiles(cause, 3); got != cause {
		t.Fatalf("with descriptors to spare: %v", got)
	}
	// A low limit for the test's moment, so that filling it is quick.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = 256
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	var held []int
	defer func() {
		for _, fd := range held {
			unix.Close(fd)
		}
	}()
	for {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			break
		}
		held = append(held, fd)
	}
	got := explainOutOfFiles(cause, 5000)
	if !errors.Is(got, cause) || !strings.Contains(got.Error(), "out of file descriptors") || !strings.Contains(got.Error(), "5000 instances") {
		t.Fatalf("out of descriptors: %v", got)
	}
}
