package subjects

import "testing"

func TestLogsEscapesDots(t *testing.T) {
	got := Logs("node.a", "default", "web-1.x", "main")
	want := "wasmlet.logs.node_a.default.web-1_x.main"
	if got != want {
		t.Fatalf("Logs() = %q, want %q", got, want)
	}
}

func TestExecutorSubjects(t *testing.T) {
	if got, want := Executor("node.a", "wasmtime", "host-12"), "wasmlet.executors.node_a.wasmtime.host-12"; got != want {
		t.Errorf("Executor() = %q, want %q", got, want)
	}
	if got, want := ExecutorsOf("node.a"), "wasmlet.executors.node_a.*.*"; got != want {
		t.Errorf("ExecutorsOf() = %q, want %q", got, want)
	}
	if got, want := Discover("node.a"), "wasmlet.discover.node_a"; got != want {
		t.Errorf("Discover() = %q, want %q", got, want)
	}
}

func TestTokenNeverEmptyOrWildcard(t *testing.T) {
	for _, in := range []string{"", "*", ">", "a.b", "a b"} {
		tok := Token(in)
		for _, bad := range []string{"", "*", ">", ".", " "} {
			if tok == bad || (bad != "" && containsAny(tok, bad)) {
				t.Errorf("Token(%q) = %q holds %q", in, tok, bad)
			}
		}
	}
}

func containsAny(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
