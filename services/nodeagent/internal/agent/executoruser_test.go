package agent

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestParseExecutorUser(t *testing.T) {
	for in, want := range map[string]*executorUser{
		"":            nil,
		"root":        nil,
		"0":           nil,
		"0:0":         nil,
		"65532":       {65532, 65532},
		"65532:65532": {65532, 65532},
		"1000:2000":   {1000, 2000},
	} {
		got, err := parseExecutorUser(in)
		if err != nil || (got == nil) != (want == nil) || (got != nil && *got != *want) {
			t.Errorf("parseExecutorUser(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"nobody", "65532:nogroup", "-1", "1000:0", "1:2:3", "4294967296"} {
		if got, err := parseExecutorUser(bad); err == nil {
			t.Errorf("parseExecutorUser(%q) = %v, want an error", bad, got)
		}
	}
}

func stat(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

// TestExecutorPathsUnprivileged: the directories a root node agent makes
// for an executor running as 65532:65532 let it pass, own its socket
// directory and share the pods' directory through its group, and none of
// them is world-accessible; a state dir it cannot reach is refused with
// what to do; root again takes back what was given.
func TestExecutorPathsUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give directories to another user")
	}
	u := &executorUser{65532, 65532}
	base := t.TempDir()
	bin := filepath.Join(base, "bin", "executor")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := newExecutorPaths(filepath.Join(base, "state"))

	// t.TempDir's parent is 0700: the executor's user cannot pass.
	if err := os.Chmod(filepath.Dir(base), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := p.prepare(u, bin); err == nil || !strings.Contains(err.Error(), "cannot pass through") || !strings.Contains(err.Error(), "--executor-user=root") {
		t.Fatalf("prepare below a 0700 directory: %v, want a refusal saying what to do", err)
	}
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(bin, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := p.prepare(u, bin); err == nil || !strings.Contains(err.Error(), "cannot execute") {
		t.Fatalf("prepare with a 0700 binary: %v, want a refusal", err)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// A socket a root executor left behind is removed.
	if err := os.MkdirAll(p.socketDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.socketDir, "executor.sock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.prepare(u, bin); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path     string
		uid, gid uint32
		mode     uint32
	}{
		{p.stateDir, 0, 65532, 0o710},
		{filepath.Dir(p.socketDir), 0, 65532, 0o710},
		{p.socketDir, 65532, 65532, 0o700},
		{p.podsDir, 0, 65532, 0o2710},
	} {
		st := stat(t, c.path)
		if st.Uid != c.uid || st.Gid != c.gid || st.Mode&0o7777 != c.mode {
			t.Errorf("%s: uid %d gid %d mode %#o; want uid %d gid %d mode %#o", c.path, st.Uid, st.Gid, st.Mode&0o7777, c.uid, c.gid, c.mode)
		}
	}
	if _, err := os.Lstat(filepath.Join(p.socketDir, "executor.sock")); err == nil {
		t.Error("a stale executor socket was kept")
	}

	sock := filepath.Join(filepath.Dir(p.socketDir), "registry.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := shareSocket(sock, u); err != nil {
		t.Fatal(err)
	}
	if st := stat(t, sock); st.Uid != 0 || st.Gid != 65532 || st.Mode&0o777 != 0o660 {
		t.Errorf("registry socket: uid %d gid %d mode %#o; want 0, 65532, 0660", st.Uid, st.Gid, st.Mode&0o777)
	}

	// A separately run registry cache's socket the executor's user may
	// not connect to.
	other := filepath.Join(base, "cache.sock")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkExecutorFiles(Config{RegistryCache: "unix://" + other}, u); err == nil || !strings.Contains(err.Error(), "--registry-cache") {
		t.Errorf("a root-only registry cache socket: %v, want a refusal", err)
	}

	key := filepath.Join(base, "artifact.key")
	if err := os.WriteFile(key, make([]byte, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	err := checkExecutorFiles(Config{ExecutorArtifactKeyFile: key}, u)
	if err == nil || !strings.Contains(err.Error(), "chown 65532") {
		t.Errorf("a root-only artifact key: %v, want a refusal saying chown 65532", err)
	}
	if err := os.Lchown(key, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	if err := checkExecutorFiles(Config{ExecutorArtifactKeyFile: key}, u); err != nil {
		t.Errorf("an artifact key given to the executor's user: %v", err)
	}

	// Back to a root executor: nothing stays shared.
	if err := p.prepare(nil, bin); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{p.stateDir, filepath.Dir(p.socketDir), p.podsDir} {
		if st := stat(t, d); st.Mode&0o7777 != 0o700 {
			t.Errorf("%s: mode %#o after --executor-user=root, want 0700", d, st.Mode&0o7777)
		}
	}
}
