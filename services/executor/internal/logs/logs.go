// Package logs turns an instance's stdout and stderr into LogRecords on
// NATS: it splits output into lines (Splitter), stamps each with the time
// and a per-instance sequence, and publishes them to the instance's log
// subject as LogBatch messages through an outbox (bounded, never blocking
// the module for long).
//
// It owns line splitting and record numbering. It must not interpret
// output, know of instance states, or choose subjects: the subject comes
// with the instance's spec.
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
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/logmsg"
	"github.com/wasmlet/wasmlet/services/executor/internal/outbox"
	"github.com/wasmlet/wasmlet/services/executor/internal/spool"
)

// MaxLine is the longest record, in bytes; longer lines are cut. It keeps
// a record well under NATS's payload limit.
const MaxLine = 16 << 10

// A LogBatch message holds at most MaxBatchRecords records and, unless one
// record alone is larger, MaxBatchBytes bytes (encoded): well under NATS's
// default 1 MiB max payload, and small enough that a follower sees a batch
// as soon as the module's write is done.
const (
	MaxBatchBytes   = 64 << 10
	MaxBatchRecords = 1024
)

// Splitter is an io.Writer that calls emit for every line written to it.
// It holds at most max bytes between writes (the start of a line not yet
// ended, or a piece of exactly max bytes that may turn out to be the whole
// line), whatever is written: a longer line is emitted in pieces straight
// from the written bytes, so a write costs time linear in its length and
// no copy beyond max. It is not safe for concurrent writes.
type Splitter struct {
	buf  []byte
	max  int
	emit func(line []byte, partial bool)
}

// NewSplitter returns a Splitter cutting lines at max bytes (MaxLine when
// max <= 0). A record is the bytes up to a newline, without it, kept as
// written (invalid UTF-8 and carriage returns included); a longer line is
// cut into max-byte pieces, each marked partial but the last, and output
// that ends without a newline gives a last record marked partial. emit must not keep line after it returns: it may be the
// writer's own bytes.
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
			s.add(p)
			break
		}
		s.add(p[:i])
		s.emit(s.buf, false)
		s.buf = s.buf[:0]
		p = p[i+1:]
	}
	return n, nil
}

// add takes more bytes of the current line (no newline among them). A
// piece of max bytes is emitted as partial only once a byte of the same
// line follows it, so that a line of exactly max bytes is one record.
func (s *Splitter) add(seg []byte) {
	for len(seg) > 0 {
		if len(s.buf) == s.max {
			s.emit(s.buf, true)
			s.buf = s.buf[:0]
		}
		if len(s.buf) == 0 && len(seg) > s.max {
			s.emit(seg[:s.max], true)
			seg = seg[s.max:]
			continue
		}
		k := min(s.max-len(s.buf), len(seg))
		s.buf = append(s.buf, seg[:k]...)
		seg = seg[k:]
	}
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
	// MaxBatchBytes and MaxBatchRecords override the package's bounds
	// (tests).
	MaxBatchBytes, MaxBatchRecords int
	// Now stamps records (default time.Now).
	Now func() time.Time
}

// Shipper publishes one instance's output.
type Shipper struct {
	cfg    ShipperConfig
	ob     *outbox.Outbox
	stdout *Splitter
	stderr *Splitter

	// mu serialises both streams' writes, so that sequence numbers are
	// queued in order and each write's records go out as one batch.
	mu      sync.Mutex
	seq     uint64
	cur     []*eventsv1.LogRecord // records of the message being filled
	curSize int                   // its encoded size
	batch   []spool.Entry         // messages cut from this write
	noNATS  uint64
}

// NewShipper starts a Shipper.
func NewShipper(cfg ShipperConfig) *Shipper {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = MaxBatchBytes
	}
	if cfg.MaxBatchRecords <= 0 {
		cfg.MaxBatchRecords = MaxBatchRecords
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
	s  *Shipper
	sp *Splitter
}

// writeChunk bounds the bytes of one write handled at a time: a write of
// hundreds of MiB (one fd_write of a module) becomes records and messages a
// chunk at a time, each chunk handed to the outbox before the next is
// split, so that what a Shipper holds for a write is bounded by the chunk,
// not by the write.
const writeChunk = 4 * MaxBatchBytes

// Write splits p into records and hands them to the outbox, one batch
// (one spool write) per writeChunk bytes, before it returns: what the
// module has written is spooled by the time its write completes.
func (w lockedWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		c := p[:min(len(p), writeChunk)]
		p = p[len(c):]
		w.s.mu.Lock()
		w.sp.Write(c)
		w.s.flushLocked()
		w.s.mu.Unlock()
	}
	return n, nil
}

// Stdout is the sink for the instance's stdout.
func (s *Shipper) Stdout() io.Writer { return lockedWriter{s, s.stdout} }

// Stderr is the sink for the instance's stderr.
func (s *Shipper) Stderr() io.Writer { return lockedWriter{s, s.stderr} }

// MsgID is the Nats-Msg-Id of an instance's message whose first record
// has sequence seq: JetStream keeps one copy of a message published twice
// (a retry, a replay after a restart).
//
// The records of one write by the module go out as LogBatch messages
// (header "Wasmlet-Payload: LogBatch", package logmsg) of at most
// MaxBatchRecords records and MaxBatchBytes bytes, since NATS's cost is
// per message. The messages of one write (of each writeChunk of a longer
// one) are one outbox batch, spooled as cut, so a replay after a kill of
// the executor publishes the same messages with the same msg ids, which
// JetStream keeps once; readers also skip an (instance, sequence) seen
// before. Sequences run from 1 over both streams with no gaps at the
// source, so a gap a reader sees is a dropped record.
func MsgID(instanceID string, seq uint64) string {
	return instanceID + ":" + strconv.FormatUint(seq, 10)
}

// record is called with s.mu held.
func (s *Shipper) record(stream eventsv1.Stream, line []byte, partial bool) {
	s.seq++
	if s.ob == nil {
		s.noNATS++
		return
	}
	rec := &eventsv1.LogRecord{
		InstanceId: s.cfg.InstanceID,
		Stream:     stream,
		Time:       timestamppb.New(s.cfg.Now()),
		Line:       bytes.Clone(line), // the Splitter reuses line
		Partial:    partial,
		Sequence:   s.seq,
	}
	n := proto.Size(rec)
	n += protowire.SizeTag(1) + protowire.SizeBytes(n) - n // as a repeated field of LogBatch
	if len(s.cur) > 0 && (len(s.cur) >= s.cfg.MaxBatchRecords || s.curSize+n > s.cfg.MaxBatchBytes) {
		s.cut()
	}
	s.cur = append(s.cur, rec)
	s.curSize += n
}

// cut ends the message being filled; called with s.mu held.
func (s *Shipper) cut() {
	if len(s.cur) == 0 {
		return
	}
	first, n := s.cur[0].GetSequence(), len(s.cur)
	b, err := proto.Marshal(&eventsv1.LogBatch{Records: s.cur})
	s.cur, s.curSize = nil, 0
	if err != nil {
		s.noNATS += uint64(n)
		return
	}
	s.batch = append(s.batch, spool.Entry{Subject: s.cfg.Subject, MsgID: MsgID(s.cfg.InstanceID, first),
		Payload: logmsg.Batch, Count: n, Data: b})
}

func (s *Shipper) flushLocked() {
	s.cut()
	if len(s.batch) == 0 {
		return
	}
	s.ob.PublishBatch(s.batch)
	s.batch = s.batch[:0]
}

// Close flushes unterminated lines and waits until the records are
// published, or ctx ends (what is left is dropped, or kept in the spool).
// Call it once the instance's output has ended.
func (s *Shipper) Close(ctx context.Context) error {
	s.mu.Lock()
	s.stdout.Flush()
	s.stderr.Flush()
	if s.ob != nil {
		s.flushLocked()
	}
	s.mu.Unlock()
	if s.ob == nil {
		return nil
	}
	return s.ob.Close(ctx)
}

// Stats reports the records so far: how many were made, and their fates
// (counted per record, whatever the messages that carried them).
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
		st.Published, st.Failed, st.Retried, st.Left = o.Published, o.Failed, o.Retried, o.Left
		st.Dropped += o.Dropped
	}
	return st
}
