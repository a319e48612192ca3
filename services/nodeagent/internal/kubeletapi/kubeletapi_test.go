package kubeletapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRoutes checks the routes' answers and error mapping (the auth chain
// in front of them is kubeletauth's, tested against a real API server).
func TestRoutes(t *testing.T) {
	var gotOpts LogOptions
	h, err := Handler(Routes{
		Pods: func(context.Context) ([]*v1.Pod, error) {
			return []*v1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "ns"}}}, nil
		},
		ContainerLogs: func(_ context.Context, ns, pod, c string, o LogOptions) (io.ReadCloser, error) {
			if pod != "p" {
				return nil, errdefs.NotFoundf("pod %s/%s is not known to this node", ns, pod)
			}
			gotOpts = o
			return io.NopCloser(strings.NewReader(ns + "/" + pod + "/" + c + "\n")), nil
		},
		Refuse: func(_ context.Context, action, _, _, _ string) error {
			return errdefs.InvalidInputf("%s is not supported for Wasm pods", action)
		},
	}, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	do := func(method, target string) (int, string) {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(method, target, nil))
		return w.Code, w.Body.String()
	}

	code, body := do("GET", "/pods")
	var list v1.PodList
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil || list.Kind != "PodList" || len(list.Items) != 1 || list.Items[0].Name != "a" {
		t.Errorf("GET /pods = %d %s (%v), want a PodList of a", code, body, err)
	}
	code, body = do("GET", "/containerLogs/ns/p/c?tailLines=3&follow=true&timestamps=1&limitBytes=10")
	if code != 200 || body != "ns/p/c\n" || gotOpts.Tail != 3 || !gotOpts.Follow || !gotOpts.Timestamps || gotOpts.LimitBytes != 10 {
		t.Errorf("GET /containerLogs = %d %q opts %+v", code, body, gotOpts)
	}
	for target, want := range map[string]int{
		"/containerLogs/ns/x/c":                                               404,
		"/containerLogs/ns/p/c?tailLines=-1":                                  400,
		"/containerLogs/ns/p/c?follow=maybe":                                  400,
		"/containerLogs/ns/p/c?sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z": 400,
		"/stats/summary":                                                      501,
		"/metrics/resource":                                                   501,
		"/nothing":                                                            404,
	} {
		if code, body := do("GET", target); code != want {
			t.Errorf("GET %s = %d %q, want %d", target, code, body, want)
		}
	}
	for _, target := range []string{"/exec/ns/p/c?command=sh", "/attach/ns/p/c", "/portForward/ns/p"} {
		code, body := do("POST", target)
		var st metav1.Status
		if err := json.Unmarshal([]byte(body), &st); code != 400 || err != nil || st.Kind != "Status" || st.Code != 400 ||
			!strings.Contains(st.Message, "not supported for Wasm pods") {
			t.Errorf("POST %s = %d %s, want a 400 Status saying it is not supported", target, code, body)
		}
	}
}
