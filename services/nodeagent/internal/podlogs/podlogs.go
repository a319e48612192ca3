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
//
// Memory per reader is bounded whatever the backlog: without a tail the
// backlog is streamed as it is read; a tail is kept in a ring of at most
// Reader.TailBytes, and a tail that does not fit is found by counting the
// backlog and reading it again, skipping what precedes the tail.
//
// A follow ends when Options.Ended is closed (the instance has ended),
// after the last message stored on the container's subject by then: an
// executor publishes an instance's last records before it records its end.
package podlogs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
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
	// Ended, when set, is closed once the instance has ended: a follow
	// then ends after the instance's last record. Nil: a follow ends only
	// with ctx or Close.
	Ended <-chan struct{}
}

// DefaultTailBytes bounds the records a reader keeps to find a tail.
const DefaultTailBytes = 4 << 20

// ErrUnavailable: the node agent's NATS connection is down (NATS away, or
// the node cut off from it). The executors keep their pods' lines and
// publish them when they reach NATS again: nothing is lost, only late.
var ErrUnavailable = errors.New("the node agent cannot reach NATS, which holds the pods' logs; the lines are kept and readable once it reconnects: retry shortly")

// Reader reads one node's container logs.
type Reader struct {
	JS   jetstream.JetStream
	Node string
	// TailBytes bounds the records kept in memory for a tail (default
	// DefaultTailBytes); a longer tail costs a second read of the backlog.
	TailBytes int
	Log       *slog.Logger // optional
}

// Open streams the output of one instance of a container. The caller closes
// the reader; with Follow it ends when ctx ends, the caller closes it, or
// after the last record once opts.Ended is closed.
func (r *Reader) Open(ctx context.Context, namespace, pod, container, instanceID string, opts Options) (io.ReadCloser, error) {
	subject := subjects.Logs(r.Node, namespace, pod, container)
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if !opts.Since.IsZero() {
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &opts.Since
	}
	if nc := r.JS.Conn(); nc != nil && !nc.IsConnected() {
		return nil, fmt.Errorf("open log stream of %s/%s/%s: %w (%s)", namespace, pod, container, ErrUnavailable, nc.Status())
	}
	cons, err := r.JS.OrderedConsumer(ctx, subjects.LogsStream, cfg)
	if err != nil {
		return nil, fmt.Errorf("open log stream of %s/%s/%s: %w", namespace, pod, container, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("open log stream of %s/%s/%s: %w", namespace, pod, container, err)
	}
	var backlogEnd uint64
	if info.NumPending > 0 {
		if backlogEnd, err = r.lastSeq(ctx, subject); err != nil {
			return nil, fmt.Errorf("open log stream of %s/%s/%s: %w", namespace, pod, container, err)
		}
	}
	tailBytes := r.TailBytes
	if tailBytes <= 0 {
		tailBytes = DefaultTailBytes
	}
	log := r.Log
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	c := &copier{
		ctx: ctx, opts: opts, instanceID: instanceID, tailBytes: tailBytes, backlogEnd: backlogEnd,
		// A consumer from cfg's start (startSeq 0), or one resuming after
		// the last record read (a follower whose consumer failed, e.g. it
		// could not be recreated while the server was busy or away).
		open: func(ctx context.Context, startSeq uint64) (jetstream.Consumer, error) {
			rc := cfg
			if startSeq > 0 {
				rc.DeliverPolicy, rc.OptStartTime, rc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, nil, startSeq
			}
			return r.JS.OrderedConsumer(ctx, subjects.LogsStream, rc)
		},
		lastSeq: func(ctx context.Context) (uint64, error) { return r.lastSeq(ctx, subject) },
	}
	pr, pw := io.Pipe()
	go func() {
		defer cancel()
		defer func() {
			// A reader's bug must cost its request, never the node agent.
			if v := recover(); v != nil {
				log.Error("log reader panicked", "pod", namespace+"/"+pod, "container", container, "panic", v, "stack", string(debug.Stack()))
				pw.CloseWithError(fmt.Errorf("read logs of %s/%s/%s: internal error (%v)", namespace, pod, container, v))
			}
		}()
		pw.CloseWithError(c.copy(cons, pw))
	}()
	return &readCloser{PipeReader: pr, cancel: cancel}, nil
}

// lastSeq returns the stream sequence of the last message on subject; 0
// when it has none.
func (r *Reader) lastSeq(ctx context.Context, subject string) (uint64, error) {
	st, err := r.JS.Stream(ctx, subjects.LogsStream)
	if err != nil {
		return 0, err
	}
	m, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return m.Sequence, nil
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

// iterator is the current message iterator. Once closed (ctx ended, or a
// followed instance's last record read), any iterator set is stopped at
// once, so that a Next blocked on it returns.
type iterator struct {
	mu     sync.Mutex
	it     jetstream.MessagesContext
	closed bool
}

func (i *iterator) set(it jetstream.MessagesContext) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.it != nil {
		i.it.Stop()
	}
	i.it = it
	if i.closed && it != nil {
		it.Stop()
	}
}

func (i *iterator) close() {
	i.mu.Lock()
	i.closed = true
	i.mu.Unlock()
	i.set(nil)
}

// copier copies one reader's records to its output.
type copier struct {
	ctx        context.Context
	opts       Options
	instanceID string
	tailBytes  int
	// backlogEnd is the stream sequence of the last message stored when
	// the reader was opened (0: none): where a reader without Follow stops.
	backlogEnd uint64
	open       func(ctx context.Context, startSeq uint64) (jetstream.Consumer, error)
	lastSeq    func(ctx context.Context) (uint64, error)

	out     *coalescer
	written int
	seen    seenRecords
	cur     iterator
	last    atomic.Uint64 // stream sequence of the last message read
	// endSeq is set, then ended, once the followed instance has ended:
	// the follow ends after the message at endSeq.
	endSeq atomic.Uint64
	ended  atomic.Bool
}

func (c *copier) copy(cons jetstream.Consumer, out io.Writer) error {
	c.out = &coalescer{bw: bufio.NewWriterSize(out, 64<<10)}
	c.seen = seenRecords{}
	it, err := cons.Messages(jetstream.PullMaxMessages(512))
	if err != nil {
		return err
	}
	c.cur.set(it)
	defer c.cur.close()
	go func() { <-c.ctx.Done(); c.cur.close() }()

	err = c.backlog(it)
	if err == nil && c.opts.Follow {
		if err = c.out.Flush(); err == nil {
			err = c.follow()
		}
	}
	if errors.Is(err, errLimit) {
		err = nil
	}
	if ferr := c.out.Flush(); err == nil {
		err = ferr
	}
	return err
}

// emit writes one record, cut at LimitBytes.
func (c *copier) emit(rec *eventsv1.LogRecord) error {
	var line []byte
	if c.opts.Timestamps {
		line = append(line, rec.GetTime().AsTime().UTC().Format(time.RFC3339Nano)...)
		line = append(line, ' ')
	}
	line = append(line, rec.GetLine()...)
	line = append(line, '\n')
	if c.opts.LimitBytes > 0 && len(line) > c.opts.LimitBytes-c.written {
		line = line[:c.opts.LimitBytes-c.written]
	}
	n, err := c.out.Write(line)
	c.written += n
	if err != nil {
		return err
	}
	if c.opts.LimitBytes > 0 && c.written >= c.opts.LimitBytes {
		return errLimit
	}
	return nil
}

// keep reports whether rec is shown: of the instance asked for, at or
// after Since by its own time (the consumer starts at Since by the time a
// message was stored; a batch may hold lines written a little earlier),
// and the first with its sequence.
func (c *copier) keep(rec *eventsv1.LogRecord) bool {
	if c.instanceID != "" && rec.GetInstanceId() != c.instanceID {
		return false
	}
	if !c.opts.Since.IsZero() && rec.GetTime() != nil && rec.GetTime().AsTime().Before(c.opts.Since) {
		return false
	}
	return c.seen.first(rec)
}

// readBacklog calls f with every message up to backlogEnd.
func (c *copier) readBacklog(it jetstream.MessagesContext, f func(jetstream.Msg) error) error {
	if c.backlogEnd == 0 {
		return nil
	}
	for {
		msg, err := it.Next()
		if err != nil {
			return ctxErr(c.ctx, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return err
		}
		c.last.Store(meta.Sequence.Stream)
		if err := f(msg); err != nil {
			return err
		}
		// NumPending 0: the last message was removed (retention) before
		// it was read.
		if meta.Sequence.Stream >= c.backlogEnd || meta.NumPending == 0 {
			return nil
		}
	}
}

// backlog writes the records stored when the reader was opened, or their
// tail.
func (c *copier) backlog(it jetstream.MessagesContext) error {
	if c.opts.Tail <= 0 {
		return c.readBacklog(it, func(msg jetstream.Msg) error {
			for _, rec := range records(msg) {
				if c.keep(rec) {
					if err := c.emit(rec); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	ring := tailRing{max: c.opts.Tail, budget: c.tailBytes}
	total := 0
	err := c.readBacklog(it, func(msg jetstream.Msg) error {
		for _, rec := range records(msg) {
			if c.keep(rec) {
				total++
				ring.add(rec)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if want := min(c.opts.Tail, total); ring.len() == want {
		for _, rec := range ring.records() {
			if err := c.emit(rec); err != nil {
				return err
			}
		}
		return nil
	}
	// The tail did not fit in the ring: read the backlog again, skipping
	// the records before it. (Records removed by retention meanwhile make
	// the tail a little shorter, never longer.)
	ring = tailRing{}
	cons, err := c.open(c.ctx, 0)
	if err != nil {
		return err
	}
	if it, err = cons.Messages(jetstream.PullMaxMessages(512)); err != nil {
		return err
	}
	c.cur.set(it)
	c.seen = seenRecords{}
	skip := total - c.opts.Tail
	return c.readBacklog(it, func(msg jetstream.Msg) error {
		for _, rec := range records(msg) {
			if !c.keep(rec) {
				continue
			}
			if skip > 0 {
				skip--
				continue
			}
			if err := c.emit(rec); err != nil {
				return err
			}
		}
		return nil
	})
}

// follow writes records as they come until ctx ends, or until the message
// at endSeq once the instance has ended.
func (c *copier) follow() error {
	if c.opts.Ended != nil {
		go c.watchEnd()
	}
	for resumes := 0; ; {
		c.cur.mu.Lock()
		it := c.cur.it
		c.cur.mu.Unlock()
		if it == nil || c.endReached() {
			return nil // closed
		}
		msg, err := it.Next()
		if err != nil {
			if c.ctx.Err() != nil || c.endReached() {
				return nil
			}
			if resumes++; resumes > maxResumes {
				return fmt.Errorf("follow: %w (after %d resumes)", err, maxResumes)
			}
			select {
			case <-c.ctx.Done():
				return nil
			case <-time.After(resumeWait):
			}
			var start uint64
			if last := c.last.Load(); last > 0 {
				start = last + 1
			}
			cons, rerr := c.open(c.ctx, start)
			if rerr == nil {
				it, rerr = cons.Messages(jetstream.PullMaxMessages(512))
			}
			if rerr != nil {
				// Counted; the next Next on the old iterator fails at once.
				continue
			}
			c.cur.set(it)
			continue
		}
		meta, err := msg.Metadata()
		if err != nil {
			return err
		}
		for _, rec := range records(msg) {
			if !c.keep(rec) {
				continue
			}
			if err := c.emit(rec); err != nil {
				return err
			}
		}
		c.last.Store(meta.Sequence.Stream)
		// At most every FlushEvery: a follower sees each line within
		// FlushEvery, and a flood is written in large chunks.
		if err := c.out.FlushSoon(); err != nil {
			return err
		}
	}
}

// endReached reports whether the followed instance has ended and its last
// message was read.
func (c *copier) endReached() bool {
	return c.ended.Load() && c.last.Load() >= c.endSeq.Load()
}

// watchEnd waits for the instance's end, then bounds the follow at the last
// message stored on the subject by then, and stops the iterator at once if
// that message was already read (the follower is then blocked waiting for
// more). The follower stores last before it checks endReached, and this
// sets ended before it reads last: one of them sees the other's store.
func (c *copier) watchEnd() {
	select {
	case <-c.ctx.Done():
		return
	case <-c.opts.Ended:
	}
	var seq uint64
	for tries := 0; ; tries++ {
		s, err := c.lastSeq(c.ctx)
		if err == nil {
			seq = s
			break
		}
		if tries >= maxResumes {
			// NATS does not answer: end with what was read.
			seq = c.last.Load()
			break
		}
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(resumeWait):
		}
	}
	c.endSeq.Store(seq)
	c.ended.Store(true)
	if c.last.Load() >= seq {
		c.cur.close()
	}
}

// tailRing keeps the last max records it is given, within budget bytes.
type tailRing struct {
	max, budget int
	recs        []*eventsv1.LogRecord
	start       int // recs[start:] are kept
	bytes       int
}

// recordOverhead approximates a decoded record's memory beyond its line.
const recordOverhead = 128

func (r *tailRing) len() int { return len(r.recs) - r.start }

func (r *tailRing) add(rec *eventsv1.LogRecord) {
	r.recs = append(r.recs, rec)
	r.bytes += len(rec.GetLine()) + recordOverhead
	for r.len() > 0 && (r.len() > r.max || r.bytes > r.budget) {
		r.bytes -= len(r.recs[r.start].GetLine()) + recordOverhead
		r.recs[r.start] = nil
		r.start++
	}
	if r.start > len(r.recs)/2 {
		r.recs = append(r.recs[:0], r.recs[r.start:]...)
		r.start = 0
	}
}

func (r *tailRing) records() []*eventsv1.LogRecord { return r.recs[r.start:] }

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
