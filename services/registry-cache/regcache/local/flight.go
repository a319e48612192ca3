package local

import (
	"context"
	"time"
)

// sharedPullTimeout bounds a download that several callers share: it runs
// on past the first caller's cancellation, so it needs its own bound.
const sharedPullTimeout = 10 * time.Minute

// flight is a download shared by the callers waiting for it.
type flight struct {
	done    chan struct{}
	val     any
	err     error
	waiters int
	cancel  context.CancelFunc
}

// shared runs fn once for all concurrent callers with the same key. fn's
// context is independent of any one caller's, so that a caller giving up
// does not fail the others; when the last waiting caller gives up, fn's
// context is cancelled, and a later caller starts afresh.
func (c *Cache) shared(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	c.fmu.Lock()
	f, ok := c.flights[key]
	if !ok {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sharedPullTimeout)
		f = &flight{done: make(chan struct{}), cancel: cancel}
		c.flights[key] = f
		go func() {
			defer cancel()
			v, err := fn(fctx)
			c.fmu.Lock()
			if c.flights[key] == f {
				delete(c.flights, key)
			}
			f.val, f.err = v, err
			c.fmu.Unlock()
			close(f.done)
		}()
	}
	f.waiters++
	c.fmu.Unlock()
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		c.fmu.Lock()
		f.waiters--
		if f.waiters == 0 {
			f.cancel()
			if c.flights[key] == f {
				delete(c.flights, key)
			}
		}
		c.fmu.Unlock()
		return nil, ctx.Err()
	}
}
