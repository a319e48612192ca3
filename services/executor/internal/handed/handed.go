// Package handed keeps the listening sockets the node agent hands the
// executor over its listener socket (package instances/handoff) until the
// Create of their instance takes them (instances.Spec.HandedListeners). It
// owns those sockets while it holds them: a second hand-over for the same
// instance replaces the first and closes its sockets, those not taken
// within the expiry are closed, and it holds those of at most Max
// instances at once. It must not open sockets nor know of engines or
// instance states.
//
// Usage:
//
//	s := handed.New(handed.Config{Logger: log})
//	l, _ := grpcutil.Listen("unix://" + path) // 0600
//	go s.Serve(ctx, l)
//	files, ok := s.Take(id) // by name; the caller owns them now
package handed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/instances/handoff"
)

// Defaults.
const (
	DefaultMax    = 1024
	DefaultExpiry = 2 * time.Minute
	// maxConns bounds the requests read at once.
	maxConns = 16
)

// Config configures a Store.
type Config struct {
	// Max bounds the instances whose sockets are held (default 1024); a
	// hand-over beyond it is refused.
	Max int
	// Expiry is how long sockets wait for their Create (default 2 min).
	Expiry time.Duration
	Logger *slog.Logger
	Now    func() time.Time
}

// Store holds handed-over sockets by instance id. Safe for concurrent use.
type Store struct {
	cfg Config

	mu      sync.Mutex
	pending map[string]entry
}

type entry struct {
	files   map[string]*os.File
	expires time.Time
}

// New returns an empty Store.
func New(cfg Config) *Store {
	if cfg.Max <= 0 {
		cfg.Max = DefaultMax
	}
	if cfg.Expiry <= 0 {
		cfg.Expiry = DefaultExpiry
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Store{cfg: cfg, pending: map[string]entry{}}
}

// Expiry is how long sockets wait for their Create.
func (s *Store) Expiry() time.Duration { return s.cfg.Expiry }

// Put holds r's sockets for r.ID, replacing (and closing) any held for it.
// Refused, with r's sockets closed, when Max instances' are held.
func (s *Store) Put(r handoff.Request) error {
	files := map[string]*os.File{}
	for _, l := range r.Listeners {
		files[l.Name] = l.File
	}
	s.mu.Lock()
	s.expireLocked()
	old, replaced := s.pending[r.ID]
	if !replaced && len(s.pending) >= s.cfg.Max {
		s.mu.Unlock()
		r.Close()
		return fmt.Errorf("the executor holds the handed-over listeners of %d instances not yet created, its maximum; create those instances (or let theirs expire, %v) and hand these over again", s.cfg.Max, s.cfg.Expiry)
	}
	s.pending[r.ID] = entry{files: files, expires: s.cfg.Now().Add(s.cfg.Expiry)}
	s.mu.Unlock()
	if replaced {
		closeFiles(old.files)
	}
	return nil
}

// Take removes and returns the sockets handed over for id, by name; the
// caller closes them. ok is false when none are held (never handed over,
// or expired).
func (s *Store) Take(id string) (map[string]*os.File, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	e, ok := s.pending[id]
	delete(s.pending, id)
	return e.files, ok
}

// Len is how many instances' sockets are held.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// expireLocked closes the sockets past their expiry.
func (s *Store) expireLocked() {
	now := s.cfg.Now()
	for id, e := range s.pending {
		if now.After(e.expires) {
			delete(s.pending, id)
			closeFiles(e.files)
			s.cfg.Logger.Warn("handed-over listeners expired before their instance was created", "instance", id, "expiry", s.cfg.Expiry)
		}
	}
}

// Close closes every socket held.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, e := range s.pending {
		closeFiles(e.files)
		delete(s.pending, id)
	}
}

func closeFiles(fs map[string]*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// Serve accepts hand-overs on l (a unix socket) until ctx ends, then
// closes l and every socket still held.
func (s *Store) Serve(ctx context.Context, l net.Listener) error {
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	go func() {
		// Expired sockets are closed even when nothing else comes.
		t := time.NewTicker(max(s.cfg.Expiry/4, time.Second))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.mu.Lock()
				s.expireLocked()
				s.mu.Unlock()
			}
		}
	}()
	sem := make(chan struct{}, maxConns)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("listener socket: %w", err)
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			defer uc.Close()
			s.handle(uc)
		}()
	}
}

// handle reads one hand-over and answers it.
func (s *Store) handle(c *net.UnixConn) {
	r, err := handoff.Receive(c)
	if err == nil {
		err = s.Put(r)
	}
	if err != nil {
		s.cfg.Logger.Warn("listener hand-over refused", "instance", r.ID, "error", err)
	} else {
		s.cfg.Logger.Info("listeners handed over", "instance", r.ID, "listeners", len(r.Listeners))
	}
	handoff.Answer(c, err)
}
