// Package eventpub fans the executor's instance state changes out to NATS
// for whoever else wants them (dashboards, audit, other agents): it follows
// the journal like any watcher and publishes each change through a bounded
// outbox, so a stalled NATS never holds up the lifecycle that records the
// changes. The node agent does not read these: it watches the executor.
//
// Subject: wasmlet.events.<executor id>.<instance id> (internal/subjects
// Events, each id made a single token), kept by the JetStream stream
// WASMLET_EVENTS. Payload: a protobuf wasmlet.events.v1.InstanceEvent with
// executor_id, instance_id, sequence (the journal's: per executor process,
// from 1, strictly increasing), state (the executor.v1 InstanceState name,
// e.g. "INSTANCE_STATE_EXITED"), exit_code, reason, message, time (of the
// change) and the instance's labels. Delivery is at most once: a change
// displaced from a full outbox, or one the journal dropped before it was
// published, is counted (Stats().Dropped) and not sent.
//
// It owns the events' outbox. It must not decide what a change is, nor
// touch the journal beyond reading it.
//
// Usage:
//
//	p := eventpub.New(eventpub.Config{ExecutorID: id, Journal: j, JetStream: js})
//	defer p.Close(ctx) // publishes what the journal holds, then drains the outbox
package eventpub

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/internal/journal"
	"github.com/wasmlet/wasmlet/services/executor/internal/outbox"
)

// Config configures a Publisher.
type Config struct {
	ExecutorID string           // required
	Journal    *journal.Journal // required
	JetStream  jetstream.JetStream
	Outbox     outbox.Config
	Logger     *slog.Logger
}

// Publisher follows a journal from the change after its newest at New.
type Publisher struct {
	cfg  Config
	ob   *outbox.Outbox
	stop chan struct{}
	once sync.Once // closes stop
	done chan struct{}
	lost atomic.Uint64 // dropped by the journal before they were published
}

// New starts a Publisher.
func New(cfg Config) *Publisher {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Publisher{
		cfg:  cfg,
		ob:   outbox.New(cfg.JetStream, cfg.Outbox),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go p.follow(cfg.Journal.Seq())
	return p
}

func (p *Publisher) follow(after uint64) {
	defer close(p.done)
	stopping := false
	for {
		evs, changed, err := p.cfg.Journal.After(after)
		if errors.Is(err, instances.ErrBehind) {
			evs, changed, err = p.cfg.Journal.After(0)
			if len(evs) > 0 {
				n := evs[0].Instance.Sequence - after - 1
				p.lost.Add(n)
				p.cfg.Logger.Warn("instance events dropped before they reached the outbox", "events", n)
			}
		}
		if err != nil {
			p.cfg.Logger.Error("instance events no longer published", "error", err)
			return
		}
		for _, ev := range evs {
			if ev.Instance.Sequence <= after {
				continue
			}
			after = ev.Instance.Sequence
			p.publish(ev)
		}
		if stopping {
			return
		}
		select {
		case <-changed:
		case <-p.stop:
			stopping = true
		}
	}
}

func (p *Publisher) publish(ev journal.Event) {
	in := ev.Instance
	b, err := proto.Marshal(&eventsv1.InstanceEvent{
		ExecutorId: p.cfg.ExecutorID,
		InstanceId: in.ID,
		Sequence:   in.Sequence,
		State:      "INSTANCE_STATE_" + in.State.String(),
		ExitCode:   in.ExitCode,
		Reason:     in.Reason,
		Message:    in.Message,
		Time:       timestamppb.New(ev.Time),
		Labels:     maps.Clone(in.Spec.Labels),
	})
	if err != nil {
		p.lost.Add(1)
		return
	}
	p.ob.Publish(subjects.Events(p.cfg.ExecutorID, in.ID), b)
}

// Close publishes what the journal holds, stops following it, and drains
// the outbox, until ctx ends.
func (p *Publisher) Close(ctx context.Context) error {
	p.once.Do(func() { close(p.stop) })
	select {
	case <-p.done:
	case <-ctx.Done():
	}
	return p.ob.Close(ctx)
}

// Stats counts the events by fate; Dropped includes those the journal
// dropped before they were published.
func (p *Publisher) Stats() outbox.Stats {
	st := p.ob.Stats()
	st.Dropped += p.lost.Load()
	return st
}
