// Package logmsg is the payload of a message on a log subject
// (subjects.Logs): how an executor marks it and how a reader decodes it.
// It owns the payload header and the decoding of both payload kinds; it
// must not know subjects, streams or how messages are published.
//
// A message either holds an events.v1.LogBatch (header "Wasmlet-Payload:
// LogBatch"; what executors publish) or, without that header, one
// events.v1.LogRecord (what executors published before batching; a reader
// accepts both so that a node agent can read logs of executors not yet
// upgraded).
package logmsg

import (
	"fmt"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
)

const (
	// Header names the payload kind of a log message.
	Header = "Wasmlet-Payload"
	// Batch is Header's value for an events.v1.LogBatch.
	Batch = "LogBatch"
)

// Decode returns the records of a log message: those of a LogBatch when
// header says so, otherwise the one LogRecord data holds.
func Decode(header nats.Header, data []byte) ([]*eventsv1.LogRecord, error) {
	if header.Get(Header) == Batch {
		b := &eventsv1.LogBatch{}
		if err := proto.Unmarshal(data, b); err != nil {
			return nil, fmt.Errorf("decode log batch: %w", err)
		}
		return b.GetRecords(), nil
	}
	if kind := header.Get(Header); kind != "" {
		return nil, fmt.Errorf("decode log message: unknown %s %q; upgrade this reader", Header, kind)
	}
	r := &eventsv1.LogRecord{}
	if err := proto.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("decode log record: %w", err)
	}
	return []*eventsv1.LogRecord{r}, nil
}
