//go:build linux

package confine

import (
	"strings"
	"testing"

	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
)

func TestStatusCrossesExec(t *testing.T) {
	in := Status{NoNewPrivs: true, LandlockWhy: "a kernel, without it; really", NetworkIsolated: true}
	out, err := decode(in.encode())
	if err != nil || out != in {
		t.Fatalf("decode(encode(%+v)) = %+v, %v", in, out, err)
	}
	in = Status{NoNewPrivs: true, LandlockABI: 7}
	if out, err = decode(in.encode()); err != nil || out != in {
		t.Fatalf("decode(encode(%+v)) = %+v, %v", in, out, err)
	}
	if _, err := decode("nnp=maybe"); err == nil {
		t.Error("a bad marker was accepted")
	}
}

func TestStatusWords(t *testing.T) {
	s := Status{NoNewPrivs: true, Seccomp: true, LandlockWhy: "the kernel was built without Landlock", UID: 0}
	for _, want := range []string{"no_new_privs", "seccomp", "no Landlock: the kernel was built without Landlock", "--run-as-user"} {
		if !strings.Contains(s.String(), want) {
			t.Errorf("%q lacks %q", s.String(), want)
		}
	}
	if got := (Status{UID: 1000, GID: 1000}).String(); !strings.Contains(got, "not confined") {
		t.Errorf("unconfined: %q", got)
	}
}

// TestPolicyAssembles: the policy assembles (no name twice) and fits the
// kernel's 4096 instructions, here and on arm64.
func TestPolicyAssembles(t *testing.T) {
	p, err := policy()
	if err != nil {
		t.Fatal(err)
	}
	insts, err := p.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := bpf.Assemble(insts)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) > 4096 {
		t.Fatalf("%d instructions", len(raw))
	}
	for _, forbidden := range []string{"execve", "execveat", "ptrace", "mount", "unshare", "setns", "kill", "bpf", "init_module", "process_vm_writev", "keyctl"} {
		for _, name := range allowed {
			if name == forbidden {
				t.Errorf("%s is allowed", name)
			}
		}
	}
	t.Logf("%d system calls allowed, %d instructions", len(allowed), len(raw))
	arm64, err := arch.GetInfo("arm64")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"ppoll", "renameat2", "openat", "clone3", "socket", "ioctl", "prctl", "tgkill", "epoll_pwait"} {
		if _, ok := arm64.SyscallNames[n]; !ok {
			t.Errorf("arm64 has no %s", n)
		}
	}
}
