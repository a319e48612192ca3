package kubeletapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A backend that cannot be reached for now (the node's NATS, for logs) is
// answered 503 with Retry-After and its own message, not 500.
func TestUnavailableIs503(t *testing.T) {
	cause := errors.New("the node agent cannot reach NATS")
	err := Unavailable(fmt.Errorf("open log stream of ns/p/c: %w", cause))
	if !errors.Is(err, cause) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("%v: wraps neither the cause nor ErrUnavailable", err)
	}
	rec := httptest.NewRecorder()
	writeError(rec, httptest.NewRequest(http.MethodGet, "/containerLogs/ns/p/c", nil), err, slog.New(slog.DiscardHandler))
	var st metav1.Status
	if e := json.Unmarshal(rec.Body.Bytes(), &st); e != nil {
		t.Fatal(e)
	}
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" || st.Reason != metav1.StatusReasonServiceUnavailable || st.Message != err.Error() {
		t.Errorf("code %d, Retry-After %q, status %+v: want 503 with Retry-After and the message", rec.Code, rec.Header().Get("Retry-After"), st)
	}
}
