package executors

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/subjects"
)

// discover subscribes to this node's announcements and asks its executors
// to announce themselves now.
func (p *Pool) discover() error {
	subject := subjects.ExecutorsOf(p.cfg.Node)
	sub, err := p.cfg.NATS.Subscribe(subject, func(m *nats.Msg) {
		var ann eventsv1.ExecutorAnnouncement
		if err := proto.Unmarshal(m.Data, &ann); err != nil {
			p.cfg.Log.Warn("undecodable executor announcement", "subject", m.Subject, "err", err)
			return
		}
		p.announced(&ann, time.Now())
	})
	if err != nil {
		return fmt.Errorf("executors: subscribe to %s: %w", subject, err)
	}
	p.sub = sub
	b, err := proto.Marshal(&eventsv1.ExecutorDiscovery{Node: p.cfg.Node})
	if err != nil {
		return err
	}
	// On the connection that subscribed: the server has the subscription
	// before any executor hears the request.
	if err := p.cfg.NATS.Publish(subjects.Discover(p.cfg.Node), b); err != nil {
		return fmt.Errorf("executors: ask for announcements: %w", err)
	}
	return nil
}

// announced takes one announcement in: a new replica is dialled, a known
// one is marked seen, a leaving one is dropped, and one that restarted
// under the same id (its sequence went back) or whose address another
// executor took is dropped and replaced.
func (p *Pool) announced(ann *eventsv1.ExecutorAnnouncement, now time.Time) {
	if ann.GetNode() != p.cfg.Node || ann.GetExecutorId() == "" || ann.GetFlavour() == "" || ann.GetAddress() == "" {
		return
	}
	var drops []dropped
	defer func() {
		for _, d := range drops {
			p.drop(d.e, d.reason)
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	id := ann.GetExecutorId()
	for _, e := range p.execs {
		if !e.Static {
			continue
		}
		// A static executor that also announces itself (e.g. the
		// supervised child) is known already.
		e.mu.Lock()
		same := e.Address == ann.GetAddress() || (e.info != nil && e.info.GetExecutorId() == id)
		e.mu.Unlock()
		if same {
			return
		}
	}
	e := p.execs[id]
	if e != nil && e.Static {
		return // an executor id equal to a static flavour's name: ignore it
	}
	if e != nil {
		e.mu.Lock()
		restarted := ann.GetSequence() < e.ann.GetSequence() || ann.GetAddress() != e.Address || ann.GetFlavour() != e.Flavour
		e.mu.Unlock()
		if restarted {
			drops = append(drops, dropped{e, fmt.Sprintf("executor %s restarted; its instances were lost", e)})
			delete(p.execs, id)
			e = nil
		}
	}
	if ann.GetLeaving() {
		if e != nil {
			drops = append(drops, dropped{e, fmt.Sprintf("executor %s stopped; its instances ended with it", e)})
			delete(p.execs, id)
		}
		return
	}
	if e == nil {
		for _, old := range p.execs {
			if !old.Static && old.Address == ann.GetAddress() {
				drops = append(drops, dropped{old, fmt.Sprintf("executor %s was replaced by executor %s; its instances were lost", old, id)})
				delete(p.execs, old.ID)
			}
		}
		ne, err := p.dial(id, ann.GetFlavour(), ann.GetAddress(), false)
		if err != nil {
			// Said once per executor and address: it announces itself again every period.
			key := id + " " + ann.GetAddress()
			if _, said := p.undialled[key]; !said {
				if p.undialled == nil {
					p.undialled = map[string]struct{}{}
				}
				p.undialled[key] = struct{}{}
				p.cfg.Log.Warn("announced executor cannot be dialled; pods do not run on it", "executor", id, "address", ann.GetAddress(), "err", err)
			}
			return
		}
		e = ne
		p.execs[id] = e
		close(p.changed)
		p.changed = make(chan struct{})
		p.cfg.Log.Info("executor replica discovered", "executor", id, "flavour", e.Flavour, "address", e.Address,
			"engine", ann.GetEngine(), "max_instances", ann.GetMaxInstances())
		p.startWatchLocked(e)
	}
	e.mu.Lock()
	e.ann, e.seen = ann, now
	e.mu.Unlock()
}

type dropped struct {
	e      *Executor
	reason string
}

// expire drops the announced replicas that have been silent for
// TTLPeriods periods and do not answer their health check either.
func (p *Pool) expire(now time.Time) {
	var drops []dropped
	p.mu.Lock()
	for _, e := range p.execs {
		if e.Static {
			continue
		}
		e.mu.Lock()
		period := e.ann.GetPeriod().AsDuration()
		if period <= 0 {
			period = defaultPeriod
		}
		silent := now.Sub(e.seen)
		if silent > TTLPeriods*period && !e.healthy {
			drops = append(drops, dropped{e, fmt.Sprintf("executor %s has not announced itself for %s and does not answer; its instances were lost",
				e, silent.Round(time.Second))})
		}
		e.mu.Unlock()
	}
	p.mu.Unlock()
	for _, d := range drops {
		p.drop(d.e, d.reason)
	}
}
