package natsutil

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wasmlet/wasmlet/internal/natsutil/natsserver"
	"github.com/wasmlet/wasmlet/internal/subjects"
)

// TestLogRetentionPerContainer: the per-container bound keeps each
// container's newest lines, whatever the others print; an executor's
// EnsureStreamsExist leaves the node agent's limits alone.
func TestLogRetentionPerContainer(t *testing.T) {
	srv, err := natsserver.Start(natsserver.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := Connect(srv.URL, "", "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lim := StreamLimits{LogBytes: 1 << 20, LogAge: time.Hour, LogMessagesPerContainer: 3, LogDuplicates: time.Minute}
	if err := EnsureStreams(ctx, js, lim); err != nil {
		t.Fatal(err)
	}
	if err := EnsureStreamsExist(ctx, js); err != nil {
		t.Fatal(err)
	}
	chatty, quiet := subjects.Logs("n", "ns", "chatty", "c"), subjects.Logs("n", "ns", "quiet", "c")
	for range 2 {
		if _, err := js.Publish(ctx, quiet, []byte("q")); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		if _, err := js.Publish(ctx, chatty, []byte("c")); err != nil {
			t.Fatal(err)
		}
	}
	st, err := js.Stream(ctx, subjects.LogsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subjects.LogsPrefix+".>"))
	if err != nil {
		t.Fatal(err)
	}
	if got := info.State.Subjects; got[chatty] != 3 || got[quiet] != 2 {
		t.Errorf("records per subject %v, want chatty 3 (its newest) and quiet 2", got)
	}
	if c := info.Config; c.MaxMsgsPerSubject != 3 || c.MaxAge != time.Hour || c.MaxBytes != 1<<20 || c.Duplicates != time.Minute {
		t.Errorf("stream config after EnsureStreamsExist: per subject %d, age %v, bytes %d, duplicates %v; want the node agent's",
			c.MaxMsgsPerSubject, c.MaxAge, c.MaxBytes, c.Duplicates)
	}
}
