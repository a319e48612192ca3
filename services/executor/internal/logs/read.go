package logs

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/logmsg"
	"github.com/wasmlet/wasmlet/internal/subjects"
)

// Read reads the first n records published on subject, whatever messages
// carry them, from the logs stream: what a Shipper wrote, as a reader sees
// it. It is for tests of the executor (the node agent reads logs through
// its own podlogs package), and fails when a fetch waits wait with nothing.
func Read(ctx context.Context, js jetstream.JetStream, subject string, n int, wait time.Duration) ([]*eventsv1.LogRecord, error) {
	cons, err := js.OrderedConsumer(ctx, subjects.LogsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		return nil, err
	}
	var out []*eventsv1.LogRecord
	for len(out) < n {
		batch, err := cons.Fetch(n-len(out), jetstream.FetchMaxWait(wait))
		if err != nil {
			return out, err
		}
		k := 0
		for msg := range batch.Messages() {
			rs, err := logmsg.Decode(msg.Headers(), msg.Data())
			if err != nil {
				return out, err
			}
			out = append(out, rs...)
			k++
		}
		if k == 0 {
			return out, fmt.Errorf("%s: got %d records in %v, want %d", subject, len(out), wait, n)
		}
	}
	return out, nil
}
