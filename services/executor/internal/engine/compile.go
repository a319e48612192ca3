package engine

import (
	"context"
	"sync"
)

// KeyedLock serialises work per key (a compile per module), so that two
// callers never compile the same module at once: the second waits, then
// finds the first one's result. Waiting ends with the caller's context.
// The zero value is ready to use.
type KeyedLock struct {
	mu   sync.Mutex
	held map[string]chan struct{}
}

// Lock takes key, or returns ctx's error if ctx ends first. unlock must
// be called exactly once.
func (k *KeyedLock) Lock(ctx context.Context, key string) (unlock func(), err error) {
	for {
		k.mu.Lock()
		ch, busy := k.held[key]
		if !busy {
			if k.held == nil {
				k.held = map[string]chan struct{}{}
			}
			ch = make(chan struct{})
			k.held[key] = ch
			k.mu.Unlock()
			return func() {
				k.mu.Lock()
				delete(k.held, key)
				k.mu.Unlock()
				close(ch)
			}, nil
		}
		k.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Slots bounds work running at once (compiles: each uses every core);
// waiting for a slot ends with the caller's context.
type Slots chan struct{}

// NewSlots returns n slots (at least one).
func NewSlots(n int) Slots { return make(Slots, max(n, 1)) }

// Acquire takes a slot, or returns ctx's error if ctx ends first.
func (s Slots) Acquire(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Release gives a slot back.
func (s Slots) Release() { <-s }
