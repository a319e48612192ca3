// Package podlogs serves `kubectl logs` from the log records that executors
// publish to NATS JetStream (stream subjects.LogsStream). It reads only; it
// never publishes and never talks to executors.
//
// A message holds a batch of records or one record (package logmsg: older
// executors published one record per message); tail, since, limitBytes,
// timestamps and follow all apply per record (per line), whatever the
// messages that carried them; since, to a record's own time.
//
// Records are shown in stream order, each (instance, sequence) once: a
// record published twice (an executor's replay after a kill, later than
// JetStream's duplicate window) is skipped. A followed stream is flushed at
// most every FlushEvery.
package podlogs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/logmsg"
	"github.com/wasmlet/wasmlet/internal/subjects"
)

// Options are kubectl logs' options.
type Options struct {
	Tail       int // lines from the end; 0 or less: all
	LimitBytes int // 0: no limit
	Timestamps bool
	Follow     bool
	Since      time.Time // zero: from the start
}

// Reader reads one node's container logs.
type Reader struct {
	JS   jetstream.JetStream
	Node string
}

// Open streams the output of one instance of a container. The caller closes
// the reader; with Follow it ends when ctx ends or the caller closes it.
func (r *Reader) Open(ctx context.Context, namespace, pod, container, instanceID string, opts Options) (io.ReadCloser, error) {
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.Logs(r.Node, namespace, pod, container)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if !opts.Since.IsZero() {
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &opts.Since
	}
	cons, err := r.JS.OrderedConsumer(ctx, subjects.LogsStream, cfg)
	if err != nil {
		return nil, fmt.Errorf("open log stream of %s/%s/%s: %w", namespace, pod, container, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("open log stream of %s/%s/%s: %w", namespace, pod, container, err)
	}
	// A follower whose consumer fails (e.g. it could not be recreated
	// while the server was busy or away) resumes after the last record it
	// read, on a new consumer.
	reopen := func(ctx context.Context, startSeq uint64) (jetstream.Consumer, error) {
		rc := cfg
		if startSeq > 0 {
			rc.DeliverPolicy, rc.OptStartTime, rc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, nil, startSeq
		}
		return r.JS.OrderedConsumer(ctx, subjects.LogsStream, rc)
	}
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	go func() {
		defer cancel()
		pw.CloseWithError(copyLogs(ctx, cons, info.NumPending, instanceID, opts, pw, reopen))
	}()
	return &readCloser{PipeReader: pr, cancel: cancel}, nil
}

type readCloser struct {
	*io.PipeReader
	cancel context.CancelFunc
}

func (r *readCloser) Close() error {
	r.cancel()
	return r.PipeReader.Close()
}

var errLimit = errors.New("limit reached")

// FlushEvery bounds how long a followed line waits in the reader's buffer
// while more keep coming. Each flush is one chunk through the kubelet API
// and the API server's proxy to kubectl: flushing at every line of a flood
// costs them a chunk per line; flushing at most every few milliseconds
// costs a follower at most that much latency.
const FlushEvery = 5 * time.Millisecond

// coalescer is a buffered writer flushed by Write when full, by Flush, and
// by FlushSoon at most every FlushEvery. Safe for concurrent use (the
// timer's flush runs on its own goroutine).
type coalescer struct {
	mu    sync.Mutex
	bw    *bufio.Writer
	err   error // of a timer's flush
	last  time.Time
	timer *time.Timer
}

func (c *coalescer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	return c.bw.Write(p)
}

// Flush writes what is buffered now.
func (c *coalescer) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	return c.flushLocked()
}

func (c *coalescer) flushLocked() error {
	if c.err != nil {
		return c.err
	}
	c.last = time.Now()
	c.err = c.bw.Flush()
	return c.err
}

// FlushSoon flushes now if the last flush was FlushEvery ago or more, and
// otherwise once FlushEvery has passed since it.
func (c *coalescer) FlushSoon() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timer != nil {
		return c.err
	}
	wait := FlushEvery - time.Since(c.last)
	if wait <= 0 {
		return c.flushLocked()
	}
	c.timer = time.AfterFunc(wait, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.timer = nil
		c.flushLocked()
	})
	return c.err
}

// iterator is the current message iterator, stopped when ctx ends.
type iterator struct {
	mu sync.Mutex
	it jetstream.MessagesContext
}

func (i *iterator) set(it jetstream.MessagesContext) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.it != nil {
		i.it.Stop()
	}
	i.it = it
}

func (i *iterator) stop() { i.set(nil) }

func copyLogs(ctx context.Context, cons jetstream.Consumer, pending uint64, instanceID string, opts Options, out io.Writer,
	reopen func(ctx context.Context, startSeq uint64) (jetstream.Consumer, error)) error {
	bw := &coalescer{bw: bufio.NewWriterSize(out, 64<<10)}
	written := 0
	emit := func(rec *eventsv1.LogRecord) error {
		var line []byte
		if opts.Timestamps {
			line = append(line, rec.GetTime().AsTime().UTC().Format(time.RFC3339Nano)...)
			line = append(line, ' ')
		}
		line = append(line, rec.GetLine()...)
		line = append(line, '\n')
		if opts.LimitBytes > 0 && written+len(line) > opts.LimitBytes {
			line = line[:opts.LimitBytes-written]
		}
		n, err := bw.Write(line)
		written += n
		if err != nil {
			return err
		}
		if opts.LimitBytes > 0 && written >= opts.LimitBytes {
			return errLimit
		}
		return nil
	}
	finish := func(err error) error {
		if errors.Is(err, errLimit) {
			err = nil
		}
		if ferr := bw.Flush(); err == nil {
			err = ferr
		}
		return err
	}

	seen := seenRecords{}
	// keep reports whether rec is shown: of the instance asked for, at or
	// after Since by its own time (the consumer starts at Since by the time
	// a message was stored; a batch may hold lines written a little
	// earlier), and the first with its sequence.
	keep := func(rec *eventsv1.LogRecord) bool {
		if instanceID != "" && rec.GetInstanceId() != instanceID {
			return false
		}
		if !opts.Since.IsZero() && rec.GetTime() != nil && rec.GetTime().AsTime().Before(opts.Since) {
			return false
		}
		return seen.first(rec)
	}
	// The backlog: everything stored now, of which only the tail is kept.
	var tail []*eventsv1.LogRecord
	it, err := cons.Messages(jetstream.PullMaxMessages(512))
	if err != nil {
		return err
	}
	cur := &iterator{it: it}
	defer cur.stop()
	go func() { <-ctx.Done(); cur.stop() }()
	var last jetstream.Msg // the last message read, to resume after
	for remaining := pending; remaining > 0; {
		msg, err := it.Next()
		if err != nil {
			return finish(ctxErr(ctx, err))
		}
		last = msg
		meta, err := msg.Metadata()
		if err != nil {
			return finish(err)
		}
		remaining = meta.NumPending
		for _, rec := range records(msg) {
			if !keep(rec) {
				continue
			}
			tail = append(tail, rec)
			if opts.Tail > 0 && len(tail) > 2*opts.Tail {
				tail = append(tail[:0], tail[len(tail)-opts.Tail:]...)
			}
		}
	}
	if opts.Tail > 0 && len(tail) > opts.Tail {
		tail = tail[len(tail)-opts.Tail:]
	}
	for _, rec := range tail {
		if err := emit(rec); err != nil {
			return finish(err)
		}
	}
	if !opts.Follow {
		return finish(nil)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	for resumes := 0; ; {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return finish(nil)
			}
			if resumes++; resumes > maxResumes {
				return finish(fmt.Errorf("follow: %w (after %d resumes)", err, maxResumes))
			}
			var start uint64
			if last != nil {
				if meta, merr := last.Metadata(); merr == nil {
					start = meta.Sequence.Stream + 1
				}
			}
			select {
			case <-ctx.Done():
				return finish(nil)
			case <-time.After(resumeWait):
			}
			cons, rerr := reopen(ctx, start)
			if rerr == nil {
				it, rerr = cons.Messages(jetstream.PullMaxMessages(512))
			}
			if rerr != nil {
				continue // counted; the next Next on the old iterator fails at once
			}
			cur.set(it)
			continue
		}
		last = msg
		for _, rec := range records(msg) {
			if !keep(rec) {
				continue
			}
			if err := emit(rec); err != nil {
				return finish(err)
			}
		}
		// At most every FlushEvery: a follower sees each line within
		// FlushEvery, and a flood is written in large chunks. (No need to
		// parse the message's metadata for its pending count.)
		if err := bw.FlushSoon(); err != nil {
			return err
		}
	}
}

// records decodes a log message; one that does not decode (not a log
// message) holds none.
func records(msg jetstream.Msg) []*eventsv1.LogRecord {
	rs, err := logmsg.Decode(msg.Headers(), msg.Data())
	if err != nil {
		return nil
	}
	return rs
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// A follower resumes on a new consumer at most maxResumes times, resumeWait
// apart, when its consumer fails.
const (
	maxResumes = 10
	resumeWait = 500 * time.Millisecond
)

// maxAhead bounds the sequences remembered above an instance's contiguous
// prefix; beyond it the oldest gap is taken as a loss and skipped.
const maxAhead = 1 << 16

// seenRecords drops a record an instance's executor published twice (a
// replay after a kill, outside JetStream's duplicate window): per
// instance, the highest sequence up to which all were seen, and the few
// seen above it (records retried out of order, or after a lost one).
type seenRecords map[string]*seenSeqs

type seenSeqs struct {
	low   uint64 // every sequence ≤ low was seen
	ahead map[uint64]bool
}

// first reports whether rec is the first record with its instance and
// sequence.
func (s seenRecords) first(rec *eventsv1.LogRecord) bool {
	seq := rec.GetSequence()
	if seq == 0 {
		return true // not numbered: cannot tell
	}
	st := s[rec.GetInstanceId()]
	if st == nil {
		st = &seenSeqs{ahead: map[uint64]bool{}}
		s[rec.GetInstanceId()] = st
	}
	if seq <= st.low || st.ahead[seq] {
		return false
	}
	st.ahead[seq] = true
	if len(st.ahead) > maxAhead {
		// A gap that never filled: a lost record. Move past it.
		st.low = seq
		for k := range st.ahead {
			st.low = min(st.low, k)
		}
		st.low--
	}
	for st.ahead[st.low+1] {
		delete(st.ahead, st.low+1)
		st.low++
	}
	return true
}
