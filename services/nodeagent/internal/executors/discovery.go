package executors

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/proxy"
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
		same := e.Address == ann.GetAddress() || (e.info != nil && e.info.ExecutorID == id)
		if same && (e.socket == "" || e.announced) && !ann.GetLeaving() {
			e.socket, e.announced = p.listenerSocketOf(ann), true
		}
		e.mu.Unlock()
		if same {
			return
		}
	}
	e := p.execs[id]
	if e != nil && e.Static {
		return // an executor id equal to a static flavour's name: ignore it
	}
	if reclaiming, ok := p.givenUp[id]; ok && e == nil {
		// Given up, yet announcing: its pods were told their instances
		// were lost and start elsewhere, so what it still runs are
		// duplicates. Remove them; the next announcement brings it back
		// as a new, empty replica.
		switch {
		case ann.GetLeaving():
			delete(p.givenUp, id)
		case !reclaiming:
			p.givenUp[id] = true
			go p.reclaim(id, ann.GetAddress())
		}
		return
	}
	restarted := false
	if e != nil {
		e.mu.Lock()
		restarted = ann.GetSequence() < e.ann.GetSequence() || ann.GetAddress() != e.Address || ann.GetFlavour() != e.Flavour
		e.mu.Unlock()
	}
	// The client comes before any change: an announcement whose address
	// cannot be dialled is refused whole, and gives up no replica it names
	// or whose address it claims.
	var ne *Executor
	if restarted || (e == nil && !ann.GetLeaving()) {
		var err error
		if ne, err = p.dial(id, ann.GetFlavour(), ann.GetAddress(), false); err != nil {
			p.warnUndialled(id, ann.GetAddress(), err)
			return
		}
		ne.socket, ne.announced = p.listenerSocketOf(ann), true
	}
	if restarted {
		drops = append(drops, dropped{e, fmt.Sprintf("executor %s restarted; its instances were lost", e)})
		delete(p.execs, id)
		e = nil
	}
	if ann.GetLeaving() {
		if ne != nil {
			ne.conn.Close()
		}
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
		e = ne
		p.execs[id] = e
		close(p.changed)
		p.changed = make(chan struct{})
		p.cfg.Log.Info("executor replica discovered", "executor", id, "flavour", e.Flavour, "address", e.Address,
			"listener_socket", ne.socket, "engine", ann.GetEngine(), "max_instances", ann.GetMaxInstances())
		p.startWatchLocked(e)
	}
	e.mu.Lock()
	e.ann, e.seen = ann, now
	e.mu.Unlock()
}

// listenerSocketOf is the listener socket an announcement names, when it
// is an absolute path; another is logged and not used (the executor then
// opens its pods' listeners itself). Whether this node agent sees the same
// socket at that path (a shared filesystem) shows at the first hand-over.
func (p *Pool) listenerSocketOf(ann *eventsv1.ExecutorAnnouncement) string {
	path := ann.GetListenerSocket()
	if path != "" && !filepath.IsAbs(path) {
		p.cfg.Log.Warn("announced listener socket is not an absolute path; the executor opens its pods' listeners itself", "executor", ann.GetExecutorId(), "listener_socket", path)
		return ""
	}
	return path
}

// warnUndialled says, once per executor and address (it announces itself
// again every period), that an announced executor is not used; p.mu is held.
func (p *Pool) warnUndialled(id, addr string, err error) {
	key := id + " " + addr
	if _, said := p.undialled[key]; said {
		return
	}
	if p.undialled == nil {
		p.undialled = map[string]struct{}{}
	}
	p.undialled[key] = struct{}{}
	p.cfg.Log.Warn("announced executor cannot be dialled; pods do not run on it", "executor", id, "address", addr, "err", err)
}

// reclaim force-deletes every instance of a replica that came back after
// the pool had given it up, then lets it be discovered again; on failure
// the next announcement tries again.
func (p *Pool) reclaim(id, addr string) {
	done := false
	defer func() {
		p.mu.Lock()
		if done {
			delete(p.givenUp, id)
		} else if _, ok := p.givenUp[id]; ok {
			p.givenUp[id] = false
		}
		p.mu.Unlock()
	}()
	conn, err := grpcutil.DialTLS(addr, p.cfg.TLS)
	if err != nil {
		return
	}
	defer conn.Close()
	rt := proxy.New(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := rt.Info(ctx)
	if err != nil {
		return
	}
	if info.ExecutorID != id {
		done = true // another executor answers there: nothing of id's is left
		return
	}
	list, _, err := rt.List(ctx, nil)
	if err != nil {
		return
	}
	for _, inst := range list {
		if err := rt.Delete(ctx, inst.ID, true); err != nil && !errors.Is(err, instances.ErrNotFound) {
			p.cfg.Log.Warn("remove instance left on a replica given up", "executor", id, "instance", inst.ID, "err", err)
			return
		}
	}
	p.cfg.Log.Info("executor replica came back after it was given up; removed the instances its pods had left", "executor", id, "address", addr, "instances", len(list))
	done = true
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
