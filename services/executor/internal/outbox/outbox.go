// Package outbox publishes messages to JetStream from a bounded queue, so
// that an absent or stalled NATS never blocks its producer for long. It owns
// the queue and one publishing goroutine per Outbox; it must not know what
// the messages mean (log lines, instance events).
//
// A producer faster than NATS is slowed to NATS's pace and loses nothing;
// when nothing leaves the queue for BlockTimeout (NATS away), the oldest
// messages are dropped and counted instead (Publish). Messages with a msg id
// (PublishBatch) are spooled first with Config.Spool and retried until
// acknowledged; JetStream drops a copy that had arrived.
//
// Usage:
//
//	ob := outbox.New(js, outbox.Config{})
//	ob.Publish(subject, payload)                  // events: at most once
//	ob.PublishBatch([]spool.Entry{{Subject: s, MsgID: id, Data: b}}) // logs: spooled, retried
//	err := ob.Close(ctx) // drain what is queued, until ctx ends
package outbox

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wasmlet/wasmlet/services/executor/internal/spool"
)

// PayloadHeader is the header that carries spool.Entry.Payload, naming what
// a message holds (see package logmsg).
const PayloadHeader = "Wasmlet-Payload"

// Config bounds an Outbox. Zero values take the defaults.
type Config struct {
	// Capacity of the queue, in messages (default 4096); a message may
	// carry many items (a log batch: up to logs.MaxBatchBytes).
	Capacity int
	// MaxBytes bounds the bytes of the messages held, queued or awaiting
	// their acks (default 8 MiB): the queue is full when it holds
	// Capacity messages or the bytes held reach MaxBytes, whichever comes
	// first (one message is always let in, however large). Without it an
	// instance printing long lines faster than NATS stores them held
	// Capacity+MaxInFlight messages of 64 KiB: over 300 MiB.
	MaxBytes int
	// BlockTimeout is how long Publish waits for room while nothing leaves
	// the queue (default 2s: longer than a busy machine's scheduling
	// hiccups, short enough not to hold a module up for long in an outage).
	BlockTimeout time.Duration
	// MaxInFlight bounds messages awaiting acks (default 1024: at ~50,000
	// messages/s, ~20 ms of acks).
	MaxInFlight int
	// AckTimeout bounds the wait for one ack (default 10s).
	AckTimeout time.Duration
	// Spool, when set, keeps PublishBatch's messages until acknowledged.
	Spool *spool.Spool
	// RetryWait is the pause before publishing a failed message again
	// (default 250ms).
	RetryWait time.Duration
}

func (c *Config) defaults() {
	if c.Capacity <= 0 {
		c.Capacity = 4096
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 8 << 20
	}
	if c.BlockTimeout <= 0 {
		c.BlockTimeout = 2 * time.Second
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1024
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = 10 * time.Second
	}
	if c.RetryWait <= 0 {
		c.RetryWait = 250 * time.Millisecond
	}
}

// Stats counts items by fate: a message counts as the items it carries
// (spool.Entry.Count; 1 for Publish), so that a log batch counts its lines.
type Stats struct {
	Published uint64 // acknowledged by JetStream
	Dropped   uint64 // displaced from a full queue, or left when Close ended
	Failed    uint64 // publish or ack failed (messages without a msg id)
	Retried   uint64 // items published again after a failure (messages with a msg id)
	Left      uint64 // still queued when Close gave up, kept in the spool
}

type pending struct {
	f        jetstream.PubAckFuture
	deadline time.Time
	m        message
}

type message struct {
	subject string
	msgID   string
	payload string // value of the PayloadHeader; "" for none
	n       uint64 // items carried (spool.Entry.Items); the counters add it
	data    []byte
	ref     spool.Ref
	retry   bool // published before and failed: wait RetryWait first
}

// Outbox is a bounded queue drained into JetStream by a goroutine of its
// own. Safe for concurrent use.
type Outbox struct {
	js  jetstream.JetStream
	cfg Config

	mu       sync.Mutex
	queue    []message // FIFO; queue[0] is the oldest
	retries  []message // failed, to publish again before queue, in order
	overflow bool
	closed   bool
	wake     chan struct{} // a message was queued or the outbox closed
	room     chan struct{} // a message was taken from a full queue

	inflight int  // sent to ackLoop and not yet resolved; under mu
	held     int  // bytes of the messages queued, in retries or in flight; under mu
	gaveUp   bool // Close's ctx ended: nothing more is published

	// acks holds up to MaxInFlight pointers, not values: an Outbox per
	// instance (each instance's logs) then costs 8 KiB of channel, not the
	// ~130 KiB that 1,024 pending values would be, allocated and cleared at
	// every instance start.
	acks     chan *pending
	loopDone chan struct{}
	ackDone  chan struct{}

	published, dropped, failed, retried, left atomic.Uint64
}

// New starts an Outbox publishing to js.
func New(js jetstream.JetStream, cfg Config) *Outbox {
	cfg.defaults()
	o := &Outbox{
		js:       js,
		cfg:      cfg,
		wake:     make(chan struct{}, 1),
		room:     make(chan struct{}, 1),
		acks:     make(chan *pending, cfg.MaxInFlight),
		loopDone: make(chan struct{}),
		ackDone:  make(chan struct{}),
	}
	go o.loop()
	go o.ackLoop()
	return o
}

// Publish queues data for subject. After Close it counts the message as
// dropped.
//
// When the queue is full (Capacity messages, or MaxBytes held with those
// in flight), Publish waits for room as long as the queue moves, i.e. a
// message leaves it at least every BlockTimeout: a module printing as fast
// as it can waits in its write. When nothing has left for BlockTimeout
// (NATS away, or MaxInFlight publishes unacknowledged), the oldest queued
// message is dropped and counted, and the outbox enters overflow, in which
// new messages displace the oldest at once until the queue has drained to
// half: a producer waits at most BlockTimeout per outage, and a long outage
// costs the oldest messages, not the newest.
//
// Messages go out in order with PublishMsgAsync, at most MaxInFlight
// awaiting acks. One without a msg id whose publish or ack fails (or takes
// longer than AckTimeout) is counted as failed and not retried: the queue,
// not a retry loop, rides out an outage. A message counts as the items it
// carries (spool.Entry.Count) in Stats; its spool.Entry.Payload goes out in
// the header PayloadHeader.
func (o *Outbox) Publish(subject string, data []byte) {
	o.enqueue([]message{{subject: subject, data: data, n: 1}})
}

// PublishBatch spools (with Config.Spool) and queues a batch of messages,
// each published with its MsgID as Nats-Msg-Id and retried until
// acknowledged, displaced, or Close gives up: a publish refused at once is
// retried before any later message (order kept); one whose ack failed,
// ahead of the queue but after those already in flight (a reader may see
// it late). Each is marked done in the spool once acknowledged or
// displaced, so what was queued or in flight when the process died is
// published by the next process (PublishReplayed); what Close leaves stays
// in the spool. One spool write per batch: batch what one producer write
// made.
func (o *Outbox) PublishBatch(batch []spool.Entry) {
	if len(batch) == 0 {
		return
	}
	var ref spool.Ref
	if o.cfg.Spool != nil {
		ref = o.cfg.Spool.Append(batch)
	}
	ms := make([]message, len(batch))
	for i, e := range batch {
		ms[i] = message{subject: e.Subject, msgID: e.MsgID, payload: e.Payload, n: e.Items(), data: e.Data, ref: ref}
	}
	o.enqueue(ms)
}

// PublishReplayed queues messages an earlier process left in the spool.
func (o *Outbox) PublishReplayed(rs []spool.Replayed) {
	ms := make([]message, len(rs))
	for i, r := range rs {
		ms[i] = message{subject: r.Subject, msgID: r.MsgID, payload: r.Payload, n: r.Items(), data: r.Data, ref: r.Ref}
	}
	for len(ms) > 0 {
		n := min(len(ms), max(o.cfg.Capacity/2, 1))
		o.enqueue(ms[:n])
		ms = ms[n:]
	}
}

func (o *Outbox) enqueue(ms []message) {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		o.drop(ms...)
		return
	}
	for i, m := range ms {
		if o.full(m) && !o.overflow {
			deadline := time.Now().Add(o.cfg.BlockTimeout)
			for o.full(m) && !o.overflow && !o.closed {
				wait := time.Until(deadline)
				if wait <= 0 {
					break
				}
				o.mu.Unlock()
				o.signal(o.wake)
				t := time.NewTimer(wait)
				select {
				case <-o.room:
					// The queue moves: keep waiting (backpressure).
					deadline = time.Now().Add(o.cfg.BlockTimeout)
				case <-t.C:
				}
				t.Stop()
				o.mu.Lock()
			}
			if o.closed {
				o.mu.Unlock()
				o.drop(ms[i:]...)
				return
			}
		}
		for o.full(m) {
			old := o.queue[0]
			o.queue[0] = message{}
			o.queue = o.queue[1:]
			o.held -= len(old.data)
			o.drop(old)
			o.overflow = true
		}
		o.queue = append(o.queue, m)
		o.held += len(m.data)
	}
	o.mu.Unlock()
	o.signal(o.wake)
}

// full reports whether m must wait for room (or displace the oldest);
// called with mu held.
func (o *Outbox) full(m message) bool {
	return len(o.queue) >= o.cfg.Capacity || (len(o.queue) > 0 && o.held+len(m.data) > o.cfg.MaxBytes)
}

func (o *Outbox) signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// drop counts messages as dropped and releases their spool records.
func (o *Outbox) drop(ms ...message) {
	for _, m := range ms {
		o.dropped.Add(m.n)
		if o.cfg.Spool != nil {
			o.cfg.Spool.Done(m.ref)
		}
	}
}

func (o *Outbox) loop() {
	defer close(o.loopDone)
	defer close(o.acks)
	var lastPause time.Time
	for {
		o.mu.Lock()
		if (len(o.queue) == 0 && len(o.retries) == 0) || o.gaveUp {
			done := o.closed && (o.inflight == 0 || o.gaveUp)
			o.mu.Unlock()
			if done {
				return
			}
			<-o.wake
			continue
		}
		var m message
		if len(o.retries) > 0 {
			m = o.retries[0]
			o.retries = o.retries[1:]
		} else {
			m = o.queue[0]
			o.queue[0] = message{}
			o.queue = o.queue[1:]
			if o.overflow && len(o.queue) <= o.cfg.Capacity/2 && o.held <= o.cfg.MaxBytes/2 {
				o.overflow = false
			}
		}
		o.inflight++
		o.mu.Unlock()
		o.signal(o.room)
		// One pause per RetryWait, not one per failed message: after an
		// outage, the failed window is sent again together.
		if m.retry && time.Since(lastPause) > o.cfg.RetryWait {
			time.Sleep(o.cfg.RetryWait)
			lastPause = time.Now()
		}
		msg := &nats.Msg{Subject: m.subject, Data: m.data}
		if m.msgID != "" || m.payload != "" {
			msg.Header = nats.Header{}
		}
		if m.msgID != "" {
			msg.Header[jetstream.MsgIDHeader] = []string{m.msgID}
		}
		if m.payload != "" {
			msg.Header[PayloadHeader] = []string{m.payload}
		}
		f, err := o.js.PublishMsgAsync(msg)
		// A publish refused at once (too many acks outstanding, no
		// connection yet) is tried again before any later message, so that
		// the stream keeps the queue's order.
		for err != nil && m.msgID != "" && !o.isGivenUp() {
			o.retried.Add(m.n)
			time.Sleep(o.cfg.RetryWait)
			f, err = o.js.PublishMsgAsync(msg)
		}
		if err != nil {
			o.resolve(m, false)
			continue
		}
		o.acks <- &pending{f, time.Now().Add(o.cfg.AckTimeout), m}
	}
}

func (o *Outbox) isGivenUp() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.gaveUp
}

func (o *Outbox) ackLoop() {
	defer close(o.ackDone)
	t := time.NewTimer(time.Hour) // one timer, reset per ack (Go ≥ 1.23 timers)
	defer t.Stop()
	for p := range o.acks {
		ok := false
		select {
		case <-p.f.Ok():
			ok = true
		case <-p.f.Err():
		default:
			t.Reset(time.Until(p.deadline))
			select {
			case <-p.f.Ok():
				ok = true
			case <-p.f.Err():
			case <-t.C:
			}
		}
		o.resolve(p.m, ok)
	}
}

// resolve records the fate of a message taken from the queue: a failed one
// with a msg id goes back to the head of the queue.
func (o *Outbox) resolve(m message, ok bool) {
	kept := false
	switch {
	case ok:
		o.published.Add(m.n)
		if o.cfg.Spool != nil {
			o.cfg.Spool.Done(m.ref)
		}
	case m.msgID == "":
		o.failed.Add(m.n)
	default:
		o.retried.Add(m.n)
		m.retry = true
		o.mu.Lock()
		if o.gaveUp {
			o.left.Add(m.n)
		} else {
			o.retries = append(o.retries, m)
			kept = true
		}
		o.mu.Unlock()
	}
	o.mu.Lock()
	o.inflight--
	if !kept {
		o.held -= len(m.data)
	}
	o.mu.Unlock()
	o.signal(o.wake)
	if !kept {
		o.signal(o.room) // bytes freed: a producer waiting on MaxBytes may go on
	}
}

// Close stops accepting messages and waits until the queue is published
// and acknowledged, or ctx ends; what is still queued then is dropped, or,
// when spooled, left in the spool for the next process.
func (o *Outbox) Close(ctx context.Context) error {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	o.signal(o.wake)
	select {
	case <-o.ackDone:
		return nil
	case <-ctx.Done():
	}
	o.mu.Lock()
	o.gaveUp = true
	for _, m := range append(o.retries, o.queue...) {
		o.held -= len(m.data)
		if m.ref != nil {
			o.left.Add(m.n)
		} else {
			o.dropped.Add(m.n)
		}
	}
	o.queue, o.retries = nil, nil
	o.mu.Unlock()
	o.signal(o.wake)
	return ctx.Err()
}

// Stats returns the counters so far.
func (o *Outbox) Stats() Stats {
	return Stats{Published: o.published.Load(), Dropped: o.dropped.Load(), Failed: o.failed.Load(),
		Retried: o.retried.Load(), Left: o.left.Load()}
}
