package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
)

// queuedSink is the event sink of client-go's broadcaster, with a queue of
// its own. The broadcaster holds at most 1,000 events for its sink and
// drops what comes beyond, and its sink writes one event at a time: in a
// burst of 1,000 pod starts (3,000 events within ~20 s on 2 cores) about
// a third of the pods' events were lost. Create, Update and Patch here
// queue the write and return at once, so the broadcaster never backs up;
// one goroutine writes the queue in order, as the broadcaster's did (no
// more load on the API server at once), retrying what fails for a reason
// other than the API server's refusal, and paced (pace) as the kubelet's
// --event-qps paces its events. Past limit queued writes an event is
// dropped, logged and counted (wasmlet_events_dropped_total).
//
// What the broadcaster learns from a write (the stored event, for the next
// Patch of an aggregated one) is the event it sent: a Patch queued behind
// its Create runs after it, and a Patch that finds no event creates it,
// as client-go does.
type queuedSink struct {
	sink    record.EventSink
	log     *slog.Logger
	dropped prometheus.Counter
	retry   time.Duration // between tries of a write that failed
	pace    *rate.Limiter // nil: unpaced

	mu     sync.Mutex
	queue  []eventWrite
	limit  int
	wake   chan struct{}
	closed bool
	full   bool // dropping since the queue last emptied (logged once)
}

type eventWrite struct {
	verb  string // "create", "update" or "patch"
	event *v1.Event
	patch []byte
}

// maxEventTries bounds the tries of one write (client-go's broadcaster
// makes 12, 10 s apart).
const maxEventTries = 12

func newQueuedSink(sink record.EventSink, limit int, log *slog.Logger, reg prometheus.Registerer) *queuedSink {
	q := &queuedSink{sink: sink, log: log, limit: limit, retry: 10 * time.Second, wake: make(chan struct{}, 1),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wasmlet_events_dropped_total",
			Help: "Kubernetes events not written because the node agent's queue of event writes was full.",
		})}
	reg.MustRegister(q.dropped)
	return q
}

func (q *queuedSink) Create(e *v1.Event) (*v1.Event, error) { return q.add("create", e, nil) }
func (q *queuedSink) Update(e *v1.Event) (*v1.Event, error) { return q.add("update", e, nil) }
func (q *queuedSink) Patch(e *v1.Event, data []byte) (*v1.Event, error) {
	return q.add("patch", e, data)
}

func (q *queuedSink) add(verb string, e *v1.Event, patch []byte) (*v1.Event, error) {
	q.mu.Lock()
	if q.closed || len(q.queue) >= q.limit {
		first := !q.full && !q.closed
		q.full = true
		q.mu.Unlock()
		q.dropped.Inc()
		if first {
			q.log.Warn("dropping events until the queue of event writes empties: the API server takes them slower than pods make them",
				"queued", q.limit, "first_dropped", e.Reason+" "+e.InvolvedObject.Namespace+"/"+e.InvolvedObject.Name)
		}
		return e, nil
	}
	q.queue = append(q.queue, eventWrite{verb: verb, event: e.DeepCopy(), patch: patch})
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return e, nil
}

// Run writes queued events until ctx ends; what is still queued then is
// written first, for up to a few seconds.
func (q *queuedSink) Run(ctx context.Context) {
	for {
		q.mu.Lock()
		var w eventWrite
		ok := len(q.queue) > 0
		if ok {
			w = q.queue[0]
			q.queue[0] = eventWrite{}
			q.queue = q.queue[1:]
		} else {
			q.full = false
		}
		q.mu.Unlock()
		if ok {
			if q.pace != nil && q.pace.Wait(ctx) != nil {
				// ctx ended (Wait fails for nothing else here): what is
				// queued is written unpaced, as at any shutdown.
				q.requeue(w)
				q.drain()
				return
			}
			q.write(ctx, w)
			continue
		}
		select {
		case <-q.wake:
		case <-ctx.Done():
			q.drain()
			return
		}
	}
}

// requeue puts w back at the head of the queue.
func (q *queuedSink) requeue(w eventWrite) {
	q.mu.Lock()
	q.queue = append([]eventWrite{w}, q.queue...)
	q.mu.Unlock()
}

// drain writes what is queued at shutdown, each write tried once, for up
// to 5 s; later events are dropped.
func (q *queuedSink) drain() {
	q.mu.Lock()
	rest := q.queue
	q.queue, q.closed = nil, true
	q.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for _, w := range rest {
		if time.Now().After(deadline) {
			q.dropped.Inc()
			continue
		}
		q.try(w)
	}
}

// write tries w until it is written, refused, or out of tries.
func (q *queuedSink) write(ctx context.Context, w eventWrite) {
	for try := 1; ; try++ {
		err := q.try(w)
		if err == nil {
			return
		}
		if _, refused := err.(apierrors.APIStatus); refused {
			// The API server answered: trying again will not change it.
			q.log.Warn("event not written", "reason", w.event.Reason, "object", w.event.InvolvedObject.Namespace+"/"+w.event.InvolvedObject.Name, "err", err)
			return
		}
		if try == maxEventTries {
			q.dropped.Inc()
			q.log.Warn("event not written after retries", "reason", w.event.Reason, "tries", try, "err", err)
			return
		}
		select {
		case <-time.After(q.retry):
		case <-ctx.Done():
			return
		}
	}
}

func (q *queuedSink) try(w eventWrite) error {
	var err error
	switch w.verb {
	case "patch":
		_, err = q.sink.Patch(w.event, w.patch)
		if !apierrors.IsNotFound(err) {
			return err
		}
		// The event was removed (events expire): create it afresh.
		w.event.ResourceVersion = ""
		fallthrough
	case "create":
		_, err = q.sink.Create(w.event)
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
	case "update":
		_, err = q.sink.Update(w.event)
	}
	return err
}

// restEventSink writes events as client-go's EventSinkImpl does (POST,
// PUT, strategic-merge PATCH in the event's namespace), without decoding
// the API server's answer: queuedSink hands the broadcaster the event it
// sent, never the stored one, so the decoded answer was thrown away, three
// times per pod start. Refusals still come back as the API server's status
// errors (apierrors.IsNotFound, IsAlreadyExists, APIStatus).
type restEventSink struct{ client rest.Interface }

func (s restEventSink) Create(e *v1.Event) (*v1.Event, error) {
	return e, s.client.Post().NamespaceIfScoped(e.Namespace, e.Namespace != "").Resource("events").
		Body(e).Do(context.Background()).Error()
}

func (s restEventSink) Update(e *v1.Event) (*v1.Event, error) {
	return e, s.client.Put().NamespaceIfScoped(e.Namespace, e.Namespace != "").Resource("events").Name(e.Name).
		Body(e).Do(context.Background()).Error()
}

func (s restEventSink) Patch(e *v1.Event, data []byte) (*v1.Event, error) {
	return e, s.client.Patch(types.StrategicMergePatchType).NamespaceIfScoped(e.Namespace, e.Namespace != "").Resource("events").Name(e.Name).
		Body(data).Do(context.Background()).Error()
}
