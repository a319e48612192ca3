package wagi

import (
	"net"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

func TestParseResponse(t *testing.T) {
	for _, tc := range []struct {
		out, body, err string
		status         int
		header         map[string]string
	}{
		{out: "Content-Type: text/plain\n\nhi\n", status: 200, body: "hi\n", header: map[string]string{"Content-Type": "text/plain"}},
		{out: "Content-Type: text/html\r\nX-A: b\r\n\r\n<p>", status: 200, body: "<p>", header: map[string]string{"X-A": "b"}},
		{out: "Status: 404 Not Found\nContent-Type: text/plain\n\nno", status: 404, body: "no", header: map[string]string{"Status": ""}},
		{out: "Location: https://example.com/\n\n", status: 302, header: map[string]string{"Location": "https://example.com/"}},
		{out: "Status: 301\nLocation: /x\n\n", status: 301, header: map[string]string{"Location": "/x"}},
		{out: "Status: 204\n\n", status: 204},
		{out: "Content-Type: text/plain\n\n\n\nblank lines kept", status: 200, body: "\n\nblank lines kept"},
		{out: "", err: "wrote nothing"},
		{out: "hello world", err: "malformed"},
		{out: "Content-Type: text/plain\nno blank line", err: "malformed"},
		{out: "X-Only: header\n\nbody", err: "no Content-Type"},
		{out: "Status: ok\nContent-Type: text/plain\n\n", err: `Status "ok"`},
		{out: "Status: 42\nContent-Type: text/plain\n\n", err: `Status "42"`},
		{out: "\nbody without headers", err: "no Content-Type"},
	} {
		res, err := ParseResponse([]byte(tc.out))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want an error saying %q", tc.out, err, tc.err)
			}
			continue
		}
		if err != nil || res.Status != tc.status || string(res.Body) != tc.body {
			t.Errorf("%q: %d %q %v, want %d %q", tc.out, res.Status, res.Body, err, tc.status, tc.body)
			continue
		}
		for k, v := range tc.header {
			if got := res.Header.Get(k); got != v {
				t.Errorf("%q: header %s = %q, want %q", tc.out, k, got, v)
			}
		}
	}
}

func TestEnv(t *testing.T) {
	r := httptest.NewRequest("GET", "http://example.com:8080/a%2Fb/c?x=1&y", nil)
	r.ContentLength = -1
	r.RemoteAddr = "10.0.0.9:5555"
	r.Header.Set("X-Thing", "1")
	r.Header.Add("X-Thing", "2")
	r.Header.Set("Proxy-Authorization", "secret")
	r.Header.Set("Authorization", "Bearer t")
	env := Env([]engine.EnvVar{{Name: "A", Value: "1"}, {Name: "PATH_INFO", Value: "spec"}}, r, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9000})
	got := map[string]string{}
	for _, v := range engine.Environ(env) {
		got[v.Name] = v.Value
	}
	for k, v := range map[string]string{
		"A": "1", "PATH_INFO": "/a/b/c", "X_RAW_PATH_INFO": "/a%2Fb/c", "QUERY_STRING": "x=1&y", "REQUEST_METHOD": "GET",
		"SERVER_NAME": "example.com", "SERVER_PORT": "9000", "REMOTE_ADDR": "10.0.0.9", "REMOTE_PORT": "5555",
		"CONTENT_LENGTH": "", "HTTP_X_THING": "1, 2", "HTTP_AUTHORIZATION": "Bearer t", "HTTP_HOST": "example.com:8080",
		"X_FULL_URL": "http://example.com:8080/a%2Fb/c?x=1&y", "REQUEST_URI": "/a%2Fb/c?x=1&y", "SCRIPT_NAME": "",
	} {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if _, ok := got["HTTP_PROXY_AUTHORIZATION"]; ok {
		t.Error("Proxy-Authorization reached the module")
	}
}

// TestLines: a run's lines reach the sink whole, however they were
// written, and what is left is written when the run ends.
func TestLines(t *testing.T) {
	var sink strings.Builder
	l := newLines(&sink)
	a, b := l.request(), l.request()
	a.Write([]byte("one "))
	b.Write([]byte("other\n"))
	a.Write([]byte("line\ntwo"))
	a.flush()
	if want := "other\none line\ntwo"; sink.String() != want {
		t.Errorf("sink %q, want %q", sink.String(), want)
	}
}
