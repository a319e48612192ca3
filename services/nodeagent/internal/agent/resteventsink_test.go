package agent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

// TestRestEventSink writes each verb to a fake API server speaking
// protobuf, as the node agent's client does, and checks the request
// (method, path, content type, the event in the body) and that refusals
// come back as the API server's status errors, which queuedSink tells
// apart; the answer's body is not read into an event.
func TestRestEventSink(t *testing.T) {
	type request struct {
		method, path, contentType string
		body                      []byte
	}
	var mu sync.Mutex
	var got []request
	answer := func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/gone"):
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"details":{"name":"gone","kind":"events"}}`)
		default:
			// Not an event: a sink that decoded the answer would fail.
			w.Header().Set("Content-Type", "application/vnd.kubernetes.protobuf")
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, "not an event")
		}
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, request{r.Method, r.URL.Path, r.Header.Get("Content-Type"), b})
		mu.Unlock()
		answer(w, r)
	}))
	defer srv.Close()
	cfg := &rest.Config{Host: srv.URL}
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cs, err := newNodeClientset(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sink := restEventSink{cs.CoreV1().RESTClient()}

	e := &v1.Event{ObjectMeta: metav1.ObjectMeta{Name: "web.1", Namespace: "apps"}, Reason: "Started", Message: "Started container app"}
	if out, err := sink.Create(e); err != nil || out != e {
		t.Fatalf("Create = %v, %v; want the event sent, nil", out, err)
	}
	if _, err := sink.Update(e); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if _, err := sink.Patch(e, []byte(`{"count":2}`)); err != nil {
		t.Fatalf("Patch: %v", err)
	}
	gone := &v1.Event{ObjectMeta: metav1.ObjectMeta{Name: "gone", Namespace: "apps"}}
	_, err = sink.Patch(gone, []byte(`{"count":3}`))
	if !apierrors.IsNotFound(err) {
		t.Fatalf("Patch of a removed event: %v, want the API server's NotFound", err)
	}

	want := []request{
		{"POST", "/api/v1/namespaces/apps/events", "application/vnd.kubernetes.protobuf", nil},
		{"PUT", "/api/v1/namespaces/apps/events/web.1", "application/vnd.kubernetes.protobuf", nil},
		{"PATCH", "/api/v1/namespaces/apps/events/web.1", "application/strategic-merge-patch+json", []byte(`{"count":2}`)},
		{"PATCH", "/api/v1/namespaces/apps/events/gone", "application/strategic-merge-patch+json", []byte(`{"count":3}`)},
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != len(want) {
		t.Fatalf("requests = %+v, want %d", got, len(want))
	}
	codec := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme)
	for i, w := range want {
		g := got[i]
		if g.method != w.method || g.path != w.path || g.contentType != w.contentType {
			t.Errorf("request %d = %s %s (%s), want %s %s (%s)", i, g.method, g.path, g.contentType, w.method, w.path, w.contentType)
		}
		if w.body != nil {
			if string(g.body) != string(w.body) {
				t.Errorf("request %d body = %q, want %q", i, g.body, w.body)
			}
			continue
		}
		obj, _, err := codec.Decode(g.body, nil, nil)
		if err != nil {
			t.Fatalf("request %d body: %v", i, err)
		}
		sent, ok := obj.(*v1.Event)
		if !ok || sent.Name != "web.1" || sent.Reason != "Started" || sent.Message != e.Message {
			t.Errorf("request %d sent %#v, want the event", i, runtime.Object(obj))
		}
	}
}
