package instance

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// explainOutOfFiles says why a start failed when the executor has run out
// of file descriptors, which an engine's own message does not (wasmtime's
// is "failed to open file"): every running instance holds a few (wasmtime's
// output pipes), so the open-file limit bounds how many it can run.
// Other errors are returned as they are.
func explainOutOfFiles(err error, instances int) error {
	fd, ferr := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if ferr == nil {
		unix.Close(fd)
		return err
	}
	if !errors.Is(ferr, unix.EMFILE) && !errors.Is(ferr, unix.ENFILE) {
		return err
	}
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	return fmt.Errorf("%w: the executor is out of file descriptors (%v; its open-file limit is %d, with %d instances): raise its limit (a node agent run as root raises it for the executor it supervises), or run fewer pods on this node", err, ferr, lim.Cur, instances)
}
