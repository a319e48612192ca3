// Package journal is the executor's record of instance state changes: each
// change gets the next sequence number of this process (from 1), the
// newest Keep changes are held, and watchers read them in order from a
// sequence they have seen. A watcher further behind than what is held is
// told so (instances.ErrBehind) and must list again; nothing is replayed
// in place of what was dropped.
//
// It owns the sequence, the bounded history and the channel that wakes
// watchers. It must not decide what a change is (the lifecycle's) nor
// publish anywhere (fan-out follows the journal like any watcher).
//
// Usage:
//
//	j := journal.New(10000)
//	in = j.Append(time.Now(), in) // under the lifecycle's lock: in.Sequence set
//	err := j.Watch(ctx, after, "", func(in instances.Instance) error { ...; return nil })
package journal

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// Event is one change: the instance right after it (its Sequence is the
// event's), and when it happened.
type Event struct {
	Time     time.Time
	Instance instances.Instance
}

// Journal holds the newest changes. Safe for concurrent use.
type Journal struct {
	keep int

	mu      sync.Mutex
	seq     uint64
	history []Event // oldest first, at most keep
	changed chan struct{}
}

// New returns a Journal holding the newest keep changes (at least 1).
func New(keep int) *Journal {
	return &Journal{keep: max(keep, 1), changed: make(chan struct{})}
}

// Append records in as the next change, at t, and returns it with its
// sequence set.
func (j *Journal) Append(t time.Time, in instances.Instance) instances.Instance {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.seq++
	in.Sequence = j.seq
	if len(j.history) >= j.keep {
		n := len(j.history) - j.keep + 1
		clear(j.history[:n])
		j.history = j.history[n:]
	}
	j.history = append(j.history, Event{Time: t, Instance: in})
	close(j.changed)
	j.changed = make(chan struct{})
	return in
}

// Seq is the newest sequence, 0 before the first change.
func (j *Journal) Seq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.seq
}

// After returns the changes after sequence after, oldest first, and a
// channel closed at the next change. after 0 gives every change held.
// Errors: instances.ErrBehind when changes after after are no longer
// held; instances.ErrFailedPrecondition when after is newer than the
// newest change (a sequence of another executor process).
func (j *Journal) After(after uint64) ([]Event, <-chan struct{}, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if after > j.seq {
		return nil, nil, fmt.Errorf("%w: sequence %d is newer than this executor's newest event %d; the executor restarted: list instances and watch from the listing's sequence", instances.ErrFailedPrecondition, after, j.seq)
	}
	if after > 0 && len(j.history) > 0 && j.history[0].Instance.Sequence > after+1 {
		return nil, nil, fmt.Errorf("%w: sequence %d is older than the %d events this executor keeps (from %d)", instances.ErrBehind, after, len(j.history), j.history[0].Instance.Sequence)
	}
	i, _ := slices.BinarySearchFunc(j.history, after+1, func(e Event, s uint64) int {
		return cmp.Compare(e.Instance.Sequence, s)
	})
	return slices.Clone(j.history[i:]), j.changed, nil
}

// Watch calls fn with every change after sequence after (of instance id
// only, unless id is ""), in order, until ctx ends or fn returns an error,
// and returns that error; errors of After end it too.
func (j *Journal) Watch(ctx context.Context, after uint64, id string, fn func(instances.Instance) error) error {
	for {
		evs, changed, err := j.After(after)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			after = ev.Instance.Sequence
			if id != "" && ev.Instance.ID != id {
				continue
			}
			if err := fn(ev.Instance); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}
