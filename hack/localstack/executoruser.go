package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Run as root, `make up` starts its two executors unprivileged, as a
// node agent does the executor it supervises: as 65532:65532, the node
// agent's default --executor-user. The executors drop to it themselves
// (--run-as-user, --run-as-group: their state dirs are given to it), the
// node agent shares the pods' volumes with its group (with separately
// run executors it does so for them), and this file gives that group
// what is left: passage through .state and .state/sockets, a socket
// directory of each executor's own, and the registry cache's socket.
// Nothing becomes world-accessible.

// executorUID and executorGID are the node agent's default --executor-user.
const executorUID, executorGID = 65532, 65532

// executorUser says whether the executors can run as executorUID (root,
// and their binary reachable by it: a checkout under a 0700 home is not),
// and why not.
func (s *stack) executorUser() (bool, string) {
	if os.Geteuid() != 0 {
		return false, "make up is not run as root, so they run as its user"
	}
	// Starting the binary as that user is the test of every directory
	// above it; the executor runs itself again once it has dropped.
	cmd := exec.Command(filepath.Join(s.bin, "executor-wazero"), "-h")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: executorUID, Gid: executorGID}}
	if err := cmd.Start(); err != nil {
		return false, fmt.Sprintf("uid %d cannot run %s (%v): they run as root; give it passage (chmod o+x) to run them unprivileged", executorUID, cmd.Path, err)
	}
	cmd.Wait()
	return true, ""
}

// executorSocketDir makes the directory of executor name's gRPC socket,
// afresh and its own (a socket an earlier executor left would stop it
// from listening), and returns it; with unprivileged false, root's.
func (s *stack) executorSocketDir(name string, unprivileged bool) (string, error) {
	dir := filepath.Join(s.state, "sockets", name)
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if !unprivileged {
		return dir, nil
	}
	for _, d := range []string{s.state, filepath.Join(s.state, "sockets")} {
		if err := os.Chown(d, 0, executorGID); err != nil {
			return "", err
		}
		if err := os.Chmod(d, 0o710); err != nil {
			return "", err
		}
	}
	return dir, os.Chown(dir, executorUID, executorGID)
}

// shareRegistrySocket lets the executors' group connect to the registry
// cache's socket at path once it is there.
func shareRegistrySocket(path string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := os.Stat(path)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the registry cache's socket: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := os.Chown(path, 0, executorGID); err != nil {
		return err
	}
	return os.Chmod(path, 0o660)
}

// executorUserArgs are the flags that make an executor drop to the user.
func executorUserArgs(unprivileged bool) []string {
	if !unprivileged {
		return nil
	}
	return []string{"--run-as-user", fmt.Sprint(executorUID), "--run-as-group", fmt.Sprint(executorGID)}
}
