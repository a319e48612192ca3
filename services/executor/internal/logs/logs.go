// Package logs turns an instance's stdout and stderr into LogRecords on
// NATS: it splits output into lines, stamps each with the time and a
// per-instance sequence, and publishes it to the instance's log subject
// through an outbox (bounded, never blocking the module for long; see
// package outbox for the drop policy).
//
// It owns line splitting and record numbering. It must not interpret
// output, know of instance states, or choose subjects: the subject comes
// with the instance's spec.
//
// Lines: a record is the bytes up to a newline, without it. Bytes are kept
// as written, invalid UTF-8 and carriage returns included. A line longer
// than MaxLine bytes is cut into MaxLine pieces, each marked partial but the
// last; output that ends without a newline gives a last record marked
// partial. Sequence numbers run from 1 over both streams together with no
// gaps at the source, so a gap seen by a reader is a dropped record.
//
// Usage:
//
//	sh := logs.NewShipper(logs.ShipperConfig{InstanceID: id, Subject: subj, JetStream: js})
//	spec.Stdout, spec.Stderr = sh.Stdout(), sh.Stderr()
//	... instance ends ...
//	sh.Close(ctx)
package logs

import (
	"bytes"
	"context"
	"io"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/services/executor/internal/outbox"
)

// MaxLine is the longest record, in bytes; longer lines are cut. It keeps
// a record well under NATS's payload limit.
const MaxLine = 16 << 10

// Splitter is an io.Writer that calls emit for every line written to it.
// It is not safe for concurrent writes.
type Splitter struct {
	buf  []byte
	max  int
	emit func(line []byte, partial bool)
}

// NewSplitter returns a Splitter cutting lines at max bytes (MaxLine when
// max <= 0). emit must not keep line after it returns.
func NewSplitter(max int, emit func(line []byte, partial bool)) *Splitter {
	if max <= 0 {
		max = MaxLine
	}
	return &Splitter{max: max, emit: emit}
}

// Write implements io.Writer; it never fails.
func (s *Splitter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.buf = append(s.buf, p...)
			p = nil
		} else {
			s.buf = append(s.buf, p[:i]...)
			p = p[i+1:]
		}
		for len(s.buf) > s.max {
			s.emit(s.buf[:s.max], true)
			s.buf = append(s.buf[:0], s.buf[s.max:]...)
		}
		if i >= 0 {
			s.emit(s.buf, false)
			s.buf = s.buf[:0]
		}
	}
	return n, nil
}

// Flush emits what is left of an unterminated last line, marked partial.
func (s *Splitter) Flush() {
	if len(s.buf) > 0 {
		s.emit(s.buf, true)
		s.buf = s.buf[:0]
	}
}

// ShipperConfig configures a Shipper.
type ShipperConfig struct {
	InstanceID string
	Subject    string
	// JetStream publishes the records. Nil: records are counted as dropped.
	JetStream jetstream.JetStream
	// Outbox bounds the queue between the module and NATS.
	Outbox outbox.Config
	// MaxLine overrides MaxLine (tests).
	MaxLine int
	// Now stamps records (default time.Now).
	Now func() time.Time
}

// Shipper publishes one instance's output.
type Shipper struct {
	cfg    ShipperConfig
	ob     *outbox.Outbox
	stdout *Splitter
	stderr *Splitter

	mu  sync.Mutex // orders sequence numbers with queueing
	seq uint64

	outMu, errMu sync.Mutex
	noNATS       uint64
}

// NewShipper starts a Shipper.
func NewShipper(cfg ShipperConfig) *Shipper {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Shipper{cfg: cfg}
	if cfg.JetStream != nil {
		s.ob = outbox.New(cfg.JetStream, cfg.Outbox)
	}
	s.stdout = NewSplitter(cfg.MaxLine, func(l []byte, p bool) { s.record(eventsv1.Stream_STREAM_STDOUT, l, p) })
	s.stderr = NewSplitter(cfg.MaxLine, func(l []byte, p bool) { s.record(eventsv1.Stream_STREAM_STDERR, l, p) })
	return s
}

type lockedWriter struct {
	mu *sync.Mutex
	s  *Splitter
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.s.Write(p)
}

// Stdout is the sink for the instance's stdout.
func (s *Shipper) Stdout() io.Writer { return lockedWriter{&s.outMu, s.stdout} }

// Stderr is the sink for the instance's stderr.
func (s *Shipper) Stderr() io.Writer { return lockedWriter{&s.errMu, s.stderr} }

func (s *Shipper) record(stream eventsv1.Stream, line []byte, partial bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	rec := &eventsv1.LogRecord{
		InstanceId: s.cfg.InstanceID,
		Stream:     stream,
		Time:       timestamppb.New(s.cfg.Now()),
		Line:       bytes.Clone(line),
		Partial:    partial,
		Sequence:   s.seq,
	}
	if s.ob == nil {
		s.noNATS++
		return
	}
	b, err := proto.Marshal(rec)
	if err != nil {
		s.noNATS++
		return
	}
	s.ob.Publish(s.cfg.Subject, b)
}

// Close flushes unterminated lines and waits until the records are
// published, or ctx ends (what is left is dropped). Call it once the
// instance's output has ended.
func (s *Shipper) Close(ctx context.Context) error {
	s.outMu.Lock()
	s.stdout.Flush()
	s.outMu.Unlock()
	s.errMu.Lock()
	s.stderr.Flush()
	s.errMu.Unlock()
	if s.ob == nil {
		return nil
	}
	return s.ob.Close(ctx)
}

// Stats reports the records so far: how many were made, and their fates.
type Stats struct {
	Records uint64
	outbox.Stats
}

// Stats returns the counters so far.
func (s *Shipper) Stats() Stats {
	s.mu.Lock()
	st := Stats{Records: s.seq}
	st.Dropped = s.noNATS
	s.mu.Unlock()
	if s.ob != nil {
		o := s.ob.Stats()
		st.Published, st.Failed = o.Published, o.Failed
		st.Dropped += o.Dropped
	}
	return st
}
