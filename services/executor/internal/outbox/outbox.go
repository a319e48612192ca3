// Package outbox publishes messages to JetStream from a bounded queue, so
// that a slow or absent NATS never blocks its producer for long. It owns
// the queue and one publishing goroutine per Outbox; it must not know what
// the messages mean (log lines, instance events).
//
// Policy when the queue is full: Publish waits up to BlockTimeout for room;
// if there is still none it drops the oldest queued message, counts it, and
// enters overflow, in which further messages displace the oldest at once,
// without waiting, until the queue has drained to half. A producer is thus
// delayed at most BlockTimeout per overflow episode, and a long NATS outage
// costs the oldest messages, not the newest.
//
// Messages are published in order with PublishMsgAsync; at most MaxInFlight
// wait for their acks. A message whose publish or ack fails (or takes longer
// than AckTimeout) is counted as failed and not retried: the queue, not a
// retry loop, is what rides out an outage.
//
// Usage:
//
//	ob := outbox.New(js, outbox.Config{})
//	ob.Publish(subject, payload)
//	err := ob.Close(ctx) // drain what is queued, until ctx ends
package outbox

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Config bounds an Outbox. Zero values take the defaults.
type Config struct {
	// Capacity of the queue, in messages (default 4096).
	Capacity int
	// BlockTimeout is how long Publish waits for room (default 100ms).
	BlockTimeout time.Duration
	// MaxInFlight bounds messages awaiting acks (default 256).
	MaxInFlight int
	// AckTimeout bounds the wait for one ack (default 10s).
	AckTimeout time.Duration
}

func (c *Config) defaults() {
	if c.Capacity <= 0 {
		c.Capacity = 4096
	}
	if c.BlockTimeout <= 0 {
		c.BlockTimeout = 100 * time.Millisecond
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 256
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = 10 * time.Second
	}
}

// Stats counts messages by fate.
type Stats struct {
	Published uint64 // acknowledged by JetStream
	Dropped   uint64 // displaced from a full queue, or left when Close ended
	Failed    uint64 // publish or ack failed
}

type pending struct {
	f        jetstream.PubAckFuture
	deadline time.Time
}

type message struct {
	subject string
	data    []byte
}

// Outbox is a bounded queue drained into JetStream by a goroutine of its
// own. Safe for concurrent use.
type Outbox struct {
	js  jetstream.JetStream
	cfg Config

	mu       sync.Mutex
	queue    []message // FIFO; queue[0] is the oldest
	overflow bool
	closed   bool
	wake     chan struct{} // a message was queued or the outbox closed
	room     chan struct{} // a message was taken from a full queue

	acks     chan pending
	loopDone chan struct{}
	ackDone  chan struct{}

	published, dropped, failed atomic.Uint64
}

// New starts an Outbox publishing to js.
func New(js jetstream.JetStream, cfg Config) *Outbox {
	cfg.defaults()
	o := &Outbox{
		js:       js,
		cfg:      cfg,
		wake:     make(chan struct{}, 1),
		room:     make(chan struct{}, 1),
		acks:     make(chan pending, cfg.MaxInFlight),
		loopDone: make(chan struct{}),
		ackDone:  make(chan struct{}),
	}
	go o.loop()
	go o.ackLoop()
	return o
}

// Publish queues data for subject, under the policy in the package doc.
// After Close it counts the message as dropped.
func (o *Outbox) Publish(subject string, data []byte) {
	m := message{subject: subject, data: data}
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		o.dropped.Add(1)
		return
	}
	if len(o.queue) >= o.cfg.Capacity && !o.overflow {
		deadline := time.Now().Add(o.cfg.BlockTimeout)
		for len(o.queue) >= o.cfg.Capacity && !o.overflow && !o.closed {
			wait := time.Until(deadline)
			if wait <= 0 {
				break
			}
			o.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-o.room:
			case <-t.C:
			}
			t.Stop()
			o.mu.Lock()
		}
		if o.closed {
			o.mu.Unlock()
			o.dropped.Add(1)
			return
		}
	}
	if len(o.queue) >= o.cfg.Capacity {
		o.queue[0] = message{}
		o.queue = o.queue[1:]
		o.dropped.Add(1)
		o.overflow = true
	}
	o.queue = append(o.queue, m)
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *Outbox) loop() {
	defer close(o.loopDone)
	defer close(o.acks)
	for {
		o.mu.Lock()
		if len(o.queue) == 0 {
			closed := o.closed
			o.mu.Unlock()
			if closed {
				return
			}
			<-o.wake
			continue
		}
		m := o.queue[0]
		o.queue[0] = message{}
		o.queue = o.queue[1:]
		if o.overflow && len(o.queue) <= o.cfg.Capacity/2 {
			o.overflow = false
		}
		o.mu.Unlock()
		select {
		case o.room <- struct{}{}:
		default:
		}
		f, err := o.js.PublishMsgAsync(&nats.Msg{Subject: m.subject, Data: m.data})
		if err != nil {
			o.failed.Add(1)
			continue
		}
		o.acks <- pending{f, time.Now().Add(o.cfg.AckTimeout)}
	}
}

func (o *Outbox) ackLoop() {
	defer close(o.ackDone)
	for p := range o.acks {
		t := time.NewTimer(time.Until(p.deadline))
		select {
		case <-p.f.Ok():
			o.published.Add(1)
		case <-p.f.Err():
			o.failed.Add(1)
		case <-t.C:
			o.failed.Add(1)
		}
		t.Stop()
	}
}

// Close stops accepting messages and waits until the queue is published
// and acknowledged, or ctx ends; what is still queued then is dropped.
func (o *Outbox) Close(ctx context.Context) error {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	select {
	case <-o.ackDone:
		return nil
	case <-ctx.Done():
	}
	o.mu.Lock()
	o.dropped.Add(uint64(len(o.queue)))
	o.queue = nil
	o.mu.Unlock()
	return ctx.Err()
}

// Stats returns the counters so far.
func (o *Outbox) Stats() Stats {
	return Stats{Published: o.published.Load(), Dropped: o.dropped.Load(), Failed: o.failed.Load()}
}
