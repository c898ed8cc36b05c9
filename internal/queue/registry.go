package queue

import (
	"errors"
	"sort"
	"sync"
	"sync/atomic"
)

// ErrTooManyQueues reports that creating one more named queue would pass
// the registry's limit.
var ErrTooManyQueues = errors.New("queue: too many named queues")

// Registry holds the named queues shared by every client. It is safe for
// concurrent use.
//
// A named queue is created by its first use. One that is empty and has no
// waiters is idle: the registry may remove it whenever nobody holds it,
// and its next use creates it again. A removed queue is remembered (its
// owner, or that it had none, and its next sequence number) for as long
// as the last RememberedQueues removals, so that a queue created again
// soon is the same queue to its users: its numbers continue and an open
// queue cannot be claimed by someone else as an owned one. A name no
// longer remembered is new again, though its numbers still continue
// above any the registry has handed out under a forgotten name.
//
// A caller holds a queue from Acquire or Lookup until Release; a held
// queue is never removed, so a message pushed into it cannot be lost with
// it. Idle queues are swept when a Snapshot is taken, when the number of
// queues has doubled since the last sweep, and at the limit when a queue
// may have gone idle since; the hot path (acquire, push or pop, release)
// never takes the write lock for an existing queue.
type Registry struct {
	counter Counter
	max     int // most queues at once; <= 0: no limit

	idle atomic.Bool // a queue may have become idle since the last sweep

	mu        sync.RWMutex
	queues    map[string]*Queue
	sweepAt   int // sweep before creating a queue beyond this many
	gone      map[string]removed
	goneOrder []removal // the removals remembered, oldest first, as a ring
	goneHead  int
	removals  uint64 // removals so far
	nextStart uint64 // first sequence number for a name not remembered
}

// removed is what a Registry remembers of a queue it removed.
type removed struct {
	nextSeq uint64
	owner   *uint32
	n       uint64 // which removal this was
}

// removal names a remembered removal in the ring.
type removal struct {
	name string
	n    uint64
}

// RememberedQueues is how many removed queues a Registry remembers.
const RememberedQueues = 1 << 16

// minSweep is the fewest queues worth sweeping for.
const minSweep = 1024

// NewRegistry returns an empty registry whose queues report to counter,
// which may be nil, and that holds at most maxQueues named queues at once
// (no limit when maxQueues <= 0).
func NewRegistry(counter Counter, maxQueues int) *Registry {
	return &Registry{
		counter:   counter,
		max:       maxQueues,
		queues:    make(map[string]*Queue),
		sweepAt:   minSweep,
		gone:      make(map[string]removed),
		nextStart: 1,
	}
}

// Acquire returns the queue called name, creating it if needed, and holds
// it until Release. A queue it creates is restricted to user id *owner
// when owner is not nil, unless it is a removed queue it remembers: that
// comes back as it was, open or owned. An existing queue is returned as
// it is. It fails with ErrTooManyQueues when creating the queue would
// pass the limit even after idle queues are removed. The caller must have
// validated name.
func (r *Registry) Acquire(name []byte, owner *uint32) (*Queue, error) {
	if q := r.Lookup(name); q != nil {
		return q, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if q := r.queues[string(name)]; q != nil {
		q.refs.Add(1)
		return q, nil
	}
	if len(r.queues) >= r.sweepAt {
		r.sweep()
		r.sweepAt = max(2*len(r.queues), minSweep)
	} else if r.max > 0 && len(r.queues) >= r.max && r.idle.Load() {
		r.sweep()
	}
	if r.max > 0 && len(r.queues) >= r.max {
		return nil, ErrTooManyQueues
	}
	s := string(name)
	q := New(s, r.counter)
	q.idle = &r.idle
	if was, ok := r.gone[s]; ok {
		delete(r.gone, s)
		q.nextSeq, q.owner = was.nextSeq, was.owner
	} else {
		q.nextSeq = r.nextStart
		if owner != nil {
			o := *owner
			q.owner = &o
		}
	}
	q.refs.Add(1)
	r.queues[s] = q
	// A new queue is idle until something is stored in it or waits on
	// it; a request that fails after creating it leaves it so.
	r.idle.Store(true)
	return q, nil
}

// Lookup returns the queue called name, held until Release, or nil when
// there is none; it never creates one.
func (r *Registry) Lookup(name []byte) *Queue {
	r.mu.RLock()
	q := r.queues[string(name)]
	if q != nil {
		q.refs.Add(1) // under the read lock: a sweep cannot be running
	}
	r.mu.RUnlock()
	return q
}

// Release ends the hold Acquire or Lookup took on q.
func (r *Registry) Release(q *Queue) {
	// A queue that went idle while held has set r.idle already, and a
	// sweep that found it held set it again.
	q.refs.Add(-1)
}

// Len returns the number of named queues, idle ones included.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.queues)
}

// sweep removes every idle queue nobody holds, and remembers it. r.mu is
// held for writing, so no hold can be taken meanwhile.
func (r *Registry) sweep() {
	r.idle.Store(false)
	for name, q := range r.queues {
		q.mu.Lock()
		idle := q.n == 0 && len(q.waiters) == 0
		next, owner := q.nextSeq, q.owner
		q.mu.Unlock()
		if !idle {
			continue
		}
		if q.refs.Load() != 0 {
			r.idle.Store(true) // idle once released: look again next time
			continue
		}
		delete(r.queues, name)
		r.remember(name, removed{nextSeq: next, owner: owner})
	}
}

// remember records a removed queue, forgetting the oldest removal beyond
// RememberedQueues. r.mu is held for writing.
func (r *Registry) remember(name string, was removed) {
	r.removals++
	was.n = r.removals
	entry := removal{name: name, n: was.n}
	if len(r.goneOrder) < RememberedQueues {
		r.goneOrder = append(r.goneOrder, entry)
	} else {
		old := r.goneOrder[r.goneHead]
		// The name may have been created again (and removed again, a
		// later removal): forget only this removal.
		if forgotten, ok := r.gone[old.name]; ok && forgotten.n == old.n {
			r.nextStart = max(r.nextStart, forgotten.nextSeq)
			delete(r.gone, old.name)
		}
		r.goneOrder[r.goneHead] = entry
		r.goneHead = (r.goneHead + 1) % RememberedQueues
	}
	r.gone[name] = was
}

// Info describes one queue at one instant.
type Info struct {
	Name     string  `json:"name"`
	Messages int     `json:"messages"`
	Bytes    int64   `json:"bytes"`
	Waiting  int     `json:"waiting"`
	Owner    *uint32 `json:"owner,omitempty"` // the only user id allowed; absent: anyone
}

// Snapshot removes idle queues and describes every other named queue,
// sorted by name.
func (r *Registry) Snapshot() []Info {
	r.mu.Lock()
	r.sweep()
	qs := make([]*Queue, 0, len(r.queues))
	for _, q := range r.queues {
		qs = append(qs, q)
	}
	r.mu.Unlock()
	out := make([]Info, 0, len(qs))
	for _, q := range qs {
		q.mu.Lock()
		out = append(out, Info{Name: q.name, Messages: q.n, Bytes: q.bytes, Waiting: len(q.waiters), Owner: q.owner})
		q.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// DrainAll empties every queue, releasing its messages, and returns the
// totals freed.
func (r *Registry) DrainAll() (messages int, bytes int64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, q := range r.queues {
		m, b := q.Drain()
		messages += m
		bytes += b
	}
	return messages, bytes
}
