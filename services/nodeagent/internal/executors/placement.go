package executors

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// candidate is what placement knows of one replica.
type candidate struct {
	id       string
	static   bool
	ok       bool // healthy, not draining
	used     int  // instances it holds, or this agent placed there, whichever is more
	capacity int  // 0: unknown
}

// choose returns the index of the replica a new instance goes to, or -1:
// among healthy, not draining replicas with room, the one with the fewest
// instances relative to its capacity, then the most free, then by id. When
// none qualifies, a static replica is kept (it is never given up, and a
// call to it says what is wrong); an announced one is not.
func choose(cs []candidate) int {
	const unknown = 1 << 30
	best := -1
	for i, c := range cs {
		cp := c.capacity
		if cp <= 0 {
			cp = unknown
		}
		if !c.ok || c.used >= cp {
			continue
		}
		if best < 0 {
			best = i
			continue
		}
		b := cs[best]
		bp := b.capacity
		if bp <= 0 {
			bp = unknown
		}
		// c.used/cp < b.used/bp, without division.
		l, r := int64(c.used)*int64(bp), int64(b.used)*int64(cp)
		switch {
		case l < r:
			best = i
		case l == r && cp-c.used > bp-b.used:
			best = i
		case l == r && cp-c.used == bp-b.used && c.id < b.id:
			best = i
		}
	}
	if best >= 0 {
		return best
	}
	for i, c := range cs {
		if c.static {
			return i
		}
	}
	return -1
}

func (e *Executor) candidate() candidate {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := candidate{id: e.ID, static: e.Static, ok: e.healthy, used: e.bound}
	if e.info != nil {
		c.capacity = e.info.MaxInstances
		c.used = max(c.used, e.info.Instances)
	}
	if a := e.ann; a != nil {
		c.capacity = int(a.GetMaxInstances())
		c.used = max(c.used, int(a.GetRunningInstances()))
		c.ok = c.ok && a.GetHealthy() && !a.GetDraining()
	}
	return c
}

// place picks the replica of flavour for weight more instances and counts
// them on it; nil when no replica can take them.
func (p *Pool) place(flavour string, weight int) *Executor {
	reps := p.replicas(flavour)
	cs := make([]candidate, len(reps))
	for i, e := range reps {
		cs[i] = e.candidate()
	}
	i := choose(cs)
	if i < 0 {
		return nil
	}
	reps[i].addBound(weight)
	return reps[i]
}

func (e *Executor) addBound(n int) {
	e.mu.Lock()
	e.bound += n
	e.mu.Unlock()
}

// Bind binds one pod to a replica of flavour: the replica that already
// holds instances matching selector (asked only when the flavour has more
// than one replica; a single one re-adopts through the pod worker's own
// List), else the one placement chooses: the healthy replica with the most
// free capacity (fewest instances relative to its maximum, counting the
// pods this agent placed there). weight is how many
// instances the pod holds at once. With no replica live now the Binding
// stays unbound and its calls fail with Unavailable until one is.
func (p *Pool) Bind(ctx context.Context, flavour string, selector map[string]string, weight int) *Binding {
	b := &Binding{pool: p, flavour: flavour, weight: max(weight, 1)}
	reps := p.replicas(flavour)
	if len(reps) > 1 {
		for _, e := range reps {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			list, _, err := e.Runtime.List(cctx, selector)
			cancel()
			if err == nil && len(list) > 0 && !e.Gone() {
				e.addBound(b.weight)
				b.e = e
				return b
			}
		}
	}
	b.e = p.place(flavour, b.weight)
	return b
}

// Binding is one pod's hold on a replica. It is a grpc.ClientConnInterface
// whose every call goes to that replica's connection; once the pool has
// given the replica up, the next call places the pod on another one of its
// flavour. With none live, a call fails with Unavailable (which the proxy
// turns into instances.ErrUnavailable). Safe for concurrent use.
type Binding struct {
	pool    *Pool
	flavour string
	weight  int

	mu       sync.Mutex
	e        *Executor
	left     []string // replicas it was moved off because they were gone
	released bool
}

var _ grpc.ClientConnInterface = (*Binding)(nil)

// Replica is the ID of the replica the pod is bound to; "" when none.
func (b *Binding) Replica() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.e == nil {
		return ""
	}
	return b.e.ID
}

// WasOn reports whether the pod is, or was until the pool gave that
// replica up, bound to replica: the loss of a replica concerns the pods
// that were on it even if one of their calls has already moved them.
func (b *Binding) WasOn(replica string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return (b.e != nil && b.e.ID == replica) || slices.Contains(b.left, replica)
}

// ListenerSocket is the listener socket of the replica the pod is bound
// to (Executor.ListenerSocket); "" when it has none, or the pod is on none.
func (b *Binding) ListenerSocket() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.e == nil {
		return ""
	}
	return b.e.ListenerSocket()
}

// Flavour is the flavour the pod runs on.
func (b *Binding) Flavour() string { return b.flavour }

// Release gives the pod's place up; the Binding must not be used after.
func (b *Binding) Release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.e != nil && !b.released {
		b.e.addBound(-b.weight)
	}
	b.released = true
	b.e = nil
}

// conn is the connection of the replica the pod is bound to, placing it
// first when it is bound to none live.
func (b *Binding) conn() (*grpc.ClientConn, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.e != nil && !b.e.Gone() {
		return b.e.conn, nil
	}
	if b.e != nil {
		b.e.addBound(-b.weight)
		b.left = append(b.left, b.e.ID)
		b.e = nil
	}
	if !b.released {
		b.e = b.pool.place(b.flavour, b.weight)
	}
	if b.e == nil {
		n := b.pool.cfg.Node
		return nil, status.Errorf(codes.Unavailable,
			"no executor of flavour %q is live on node %s: start one (executor --flavour %s --node %s --nats URL announces itself) or give the node agent --executor %s=ADDRESS",
			b.flavour, n, b.flavour, n, b.flavour)
	}
	return b.e.conn, nil
}

// Invoke implements grpc.ClientConnInterface.
func (b *Binding) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	c, err := b.conn()
	if err != nil {
		return err
	}
	return c.Invoke(ctx, method, args, reply, opts...)
}

// NewStream implements grpc.ClientConnInterface.
func (b *Binding) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	c, err := b.conn()
	if err != nil {
		return nil, err
	}
	return c.NewStream(ctx, desc, method, opts...)
}

// String names the binding for logs.
func (b *Binding) String() string {
	return fmt.Sprintf("%s/%s", b.flavour, b.Replica())
}
