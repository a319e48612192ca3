// Package natsutil connects to NATS and sets up the JetStream streams that
// keep wasmlet's logs and instance events. The embedded server is in
// natsserver, so that only what runs one (the node agent, tests) links it.
package natsutil

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wasmlet/wasmlet/internal/subjects"
)

// How often a client pings its server, and how many unanswered pings end
// the connection.
const (
	PingInterval = 5 * time.Second
	MaxPingsOut  = 3
)

// Connect connects to url with the token (may be empty), retrying while
// the server is away: a wasmlet service keeps working through a NATS
// restart. A connection that goes silent (a network cut, which closes
// nothing) is given up after PingInterval × MaxPingsOut, 15–20 s rather
// than the client's default 4 minutes, and reconnected as soon as the
// server can be reached again.
func Connect(url, token, name string) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.PingInterval(PingInterval),
		nats.MaxPingsOutstanding(MaxPingsOut),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(8 << 20),
	}
	if token != "" {
		opts = append(opts, nats.Token(token))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats connect %s: %w", url, err)
	}
	return nc, nil
}

// StreamLimits bounds what the logs stream keeps. NATS (v2.15) bounds a
// stream by bytes and age, and each subject by a count of messages
// (MaxMsgsPerSubject); it has no per-subject byte limit. So:
//
//   - per container (one subject, so per pod for its containers): at most
//     LogMessagesPerContainer messages, the oldest discarded first — a
//     chatty pod cannot push other pods' lines out beyond the stream
//     bounds. A message is what one write by the module held (an
//     events.v1.LogBatch of 1 to 1024 lines, at most 64 KiB; see the
//     executor's logs package), or one line from
//     an executor older than batching: a module that prints a line per
//     write keeps this many lines, one that writes in bursts up to 1024
//     times as many;
//   - per message: at most LogAge old (every message ages alike, so this is
//     also each pod's age limit);
//   - per stream (all pods of all nodes that share the NATS server): at
//     most LogBytes, the oldest messages of any pod discarded first.
//
// A pod's lines in bytes are thus bounded by LogMessagesPerContainer times
// 64 KiB (in practice by LogBytes).
type StreamLimits struct {
	LogBytes                int64
	LogAge                  time.Duration
	LogMessagesPerContainer int64 // 0: no per-container bound
	// LogDuplicates is how long JetStream remembers msg ids (Nats-Msg-Id)
	// to drop a message published twice (an executor's retry or replay
	// after a restart). It costs the server memory per message published in
	// the window (~100 bytes each).
	LogDuplicates time.Duration
}

// DefaultStreamLimits keeps 1 GiB or 7 days of logs, at most a million
// messages per container, and drops copies for 2 minutes.
var DefaultStreamLimits = StreamLimits{LogBytes: 1 << 30, LogAge: 7 * 24 * time.Hour, LogMessagesPerContainer: 1_000_000, LogDuplicates: 2 * time.Minute}

func logsStream(lim StreamLimits) jetstream.StreamConfig {
	per := lim.LogMessagesPerContainer
	if per <= 0 {
		per = -1
	}
	return jetstream.StreamConfig{
		Name:              subjects.LogsStream,
		Subjects:          []string{subjects.LogsPrefix + ".>"},
		Storage:           jetstream.FileStorage,
		MaxBytes:          lim.LogBytes,
		MaxAge:            lim.LogAge,
		MaxMsgsPerSubject: per,
		Duplicates:        lim.LogDuplicates,
		Discard:           jetstream.DiscardOld,
		Retention:         jetstream.LimitsPolicy,
	}
}

func eventsStream() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:      subjects.EventsStream,
		Subjects:  []string{subjects.EventsPrefix + ".>"},
		Storage:   jetstream.FileStorage,
		MaxAge:    24 * time.Hour,
		Retention: jetstream.LimitsPolicy,
	}
}

// EnsureStreams creates or updates the logs and events streams: the node
// agent, which owns their configuration, calls it.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, lim StreamLimits) error {
	if _, err := js.CreateOrUpdateStream(ctx, logsStream(lim)); err != nil {
		return fmt.Errorf("ensure stream %s: %w", subjects.LogsStream, err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, eventsStream()); err != nil {
		return fmt.Errorf("ensure stream %s: %w", subjects.EventsStream, err)
	}
	return nil
}

// EnsureStreamsExist creates the streams that do not exist, with
// DefaultStreamLimits, and leaves existing ones as configured: an executor,
// which may start before its node agent, calls it.
func EnsureStreamsExist(ctx context.Context, js jetstream.JetStream) error {
	for _, cfg := range []jetstream.StreamConfig{logsStream(DefaultStreamLimits), eventsStream()} {
		if _, err := js.CreateStream(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}
