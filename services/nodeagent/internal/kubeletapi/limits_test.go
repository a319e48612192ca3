package kubeletapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/logmsg"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/internal/testharness/natstest"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podlogs"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestHugeNumbersDoNotCrash: the numbers of kubectl logs, however large,
// are answered (clamped) and the node agent keeps serving. Before, a
// tailLines of 2^62 overflowed in the log reader and its panic ended the
// process. The reader is the real one, on a real NATS server.
func TestHugeNumbersDoNotCrash(t *testing.T) {
	_, js := natstest.JetStream(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var rs []*eventsv1.LogRecord
	for i := 1; i <= 5; i++ {
		rs = append(rs, &eventsv1.LogRecord{InstanceId: "i", Sequence: uint64(i), Line: []byte(fmt.Sprint(i))})
	}
	b, _ := proto.Marshal(&eventsv1.LogBatch{Records: rs})
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: subjects.Logs("n", "ns", "p", "c"), Data: b,
		Header: nats.Header{logmsg.Header: []string{logmsg.Batch}}}); err != nil {
		t.Fatal(err)
	}
	reader := &podlogs.Reader{JS: js, Node: "n"}
	h, err := Handler(Routes{
		Pods: func(context.Context) ([]*v1.Pod, error) { return nil, nil },
		ContainerLogs: func(ctx context.Context, ns, pod, c string, o LogOptions) (io.ReadCloser, error) {
			po := podlogs.Options{Tail: o.Tail, LimitBytes: o.LimitBytes, Since: o.SinceTime}
			if o.SinceSeconds > 0 {
				po.Since = time.Now().Add(-time.Duration(o.SinceSeconds) * time.Second)
			}
			return reader.Open(ctx, ns, pod, c, "i", po)
		},
		Refuse: func(context.Context, string, string, string, string) error { return nil },
	}, Limits{}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(target string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + target)
		if err != nil {
			t.Fatalf("GET %s: %v (the server is gone)", target, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, q := range []string{
		"tailLines=4611686018427387904",
		"tailLines=9223372036854775807",
		"tailLines=99999999999999999999999999",
		"limitBytes=9223372036854775807",
		"limitBytes=99999999999999999999999999",
		"sinceSeconds=9223372036854775807",
		"sinceSeconds=99999999999999999999999999",
		"tailLines=4611686018427387904&limitBytes=9223372036854775807&sinceSeconds=9223372036854775807",
	} {
		if code, body := get("/containerLogs/ns/p/c?" + q); code != 200 || body != "1\n2\n3\n4\n5\n" {
			t.Errorf("%s: %d %q, want all five lines", q, code, body)
		}
	}
	for _, q := range []string{"tailLines=-9223372036854775808", "tailLines=-99999999999999999999999", "limitBytes=0", "sinceSeconds=1e9", "tailLines=0x10"} {
		if code, body := get("/containerLogs/ns/p/c?" + q); code != 400 {
			t.Errorf("%s: %d %q, want 400", q, code, body)
		}
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("healthz after: %d", code)
	}
}

// TestPanicIsRecovered: a handler's panic is answered 500 with a Status,
// and the server goes on.
func TestPanicIsRecovered(t *testing.T) {
	h, err := Handler(Routes{
		Pods: func(context.Context) ([]*v1.Pod, error) { panic("a bug") },
		ContainerLogs: func(context.Context, string, string, string, LogOptions) (io.ReadCloser, error) {
			var m map[string]int
			m["x"]++ // a nil map: a runtime error
			return nil, nil
		},
		Refuse: func(context.Context, string, string, string, string) error { return nil },
	}, Limits{}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, target := range []string{"/pods", "/containerLogs/ns/p/c", "/pods"} {
		resp, err := http.Get(srv.URL + target)
		if err != nil {
			t.Fatalf("GET %s: %v", target, err)
		}
		var st metav1.Status
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if resp.StatusCode != 500 || err != nil || st.Code != 500 || !strings.Contains(st.Message, "internal error") {
			t.Errorf("GET %s = %d %+v (%v), want a 500 Status", target, resp.StatusCode, st, err)
		}
	}
	if resp, err := http.Get(srv.URL + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("healthz after panics: %v %v", resp, err)
	}
}

// blockingLogs is a ContainerLogs whose logs write a line every tick until
// the request ends.
func blockingLogs(tick time.Duration) func(context.Context, string, string, string, LogOptions) (io.ReadCloser, error) {
	return func(ctx context.Context, _, _, _ string, _ LogOptions) (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					pw.CloseWithError(ctx.Err())
					return
				case <-time.After(tick):
				}
				if _, err := fmt.Fprintln(pw, i); err != nil {
					return
				}
			}
		}()
		return pr, nil
	}
}

// TestFollowCap: a follow beyond Limits.MaxFollows is answered 429 with a
// message saying what to do; a follow that ends frees its place; logs
// without follow are not counted.
func TestFollowCap(t *testing.T) {
	h, err := Handler(Routes{
		Pods:          func(context.Context) ([]*v1.Pod, error) { return nil, nil },
		ContainerLogs: blockingLogs(10 * time.Millisecond),
		Refuse:        func(context.Context, string, string, string, string) error { return nil },
	}, Limits{MaxFollows: 2}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	follow := func() (*http.Response, context.CancelFunc) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/containerLogs/ns/p/c?follow=true", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == 200 {
			if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
				t.Fatal(err)
			}
		}
		return resp, func() { cancel(); resp.Body.Close() }
	}
	r1, stop1 := follow()
	defer stop1()
	r2, stop2 := follow()
	defer stop2()
	r3, stop3 := follow()
	body, _ := io.ReadAll(r3.Body)
	stop3()
	var st metav1.Status
	if r1.StatusCode != 200 || r2.StatusCode != 200 || r3.StatusCode != 429 || json.Unmarshal(body, &st) != nil ||
		st.Reason != metav1.StatusReasonTooManyRequests || !strings.Contains(st.Message, "--max-log-follows") ||
		!strings.Contains(st.Message, "at most 2") || r3.Header.Get("Retry-After") == "" {
		t.Fatalf("follows: %d %d %d %s", r1.StatusCode, r2.StatusCode, r3.StatusCode, body)
	}
	// Not following: not counted.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/containerLogs/ns/p/c", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Errorf("logs without follow while follows are full: %v %v", resp, err)
	}
	cancel()
	stop1()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r4, stop4 := follow()
		stop4()
		if r4.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a follow's place was not freed when it ended: %d", r4.StatusCode)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestServerTimeouts: a client that sends its header slowly is cut after
// the read-header timeout, and a followed log outlives the read timeout,
// over HTTP/1.1 and HTTP/2.
func TestServerTimeouts(t *testing.T) {
	h, err := Handler(Routes{
		Pods:          func(context.Context) ([]*v1.Pod, error) { return nil, nil },
		ContainerLogs: blockingLogs(50 * time.Millisecond),
		Refuse:        func(context.Context, string, string, string, string) error { return nil },
	}, Limits{}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	def := newServer(h, quietLog())
	if def.ReadHeaderTimeout <= 0 || def.ReadTimeout <= 0 || def.IdleTimeout <= 0 || def.WriteTimeout != 0 {
		t.Errorf("timeouts: header %s, read %s, idle %s, write %s; want all but write set",
			def.ReadHeaderTimeout, def.ReadTimeout, def.IdleTimeout, def.WriteTimeout)
	}
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			srv := httptest.NewUnstartedServer(h)
			srv.Config = newServer(h, quietLog())
			srv.Config.ReadHeaderTimeout = 300 * time.Millisecond
			srv.Config.ReadTimeout = 300 * time.Millisecond
			srv.EnableHTTP2 = h2
			srv.StartTLS()
			defer srv.Close()
			client := srv.Client()
			resp, err := client.Get(srv.URL + "/containerLogs/ns/p/c?follow=true")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if h2 != (resp.ProtoMajor == 2) {
				t.Fatalf("protocol %s", resp.Proto)
			}
			sc := bufio.NewScanner(resp.Body)
			start := time.Now()
			lines := 0
			for time.Since(start) < 1500*time.Millisecond && sc.Scan() {
				lines++
			}
			if time.Since(start) < 1500*time.Millisecond {
				t.Errorf("the follow ended after %s (%d lines, %v), within 5 read timeouts", time.Since(start), lines, sc.Err())
			}

			// A header sent slowly.
			conn, err := net.Dial("tcp", srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// TLS does not even start: the server waits for a ClientHello.
			conn.Write([]byte{0x16, 0x03})
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			start = time.Now()
			_, err = conn.Read(make([]byte, 1))
			if err == nil || time.Since(start) > 5*time.Second {
				t.Errorf("a stalled client was not cut: %v after %s", err, time.Since(start))
			}
		})
	}
}
