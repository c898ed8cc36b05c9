package queue

import (
	"sort"
	"sync"
)

// Registry holds the named queues shared by every client. A named queue is
// created by its first use and lives as long as the Registry. It is safe
// for concurrent use.
type Registry struct {
	counter Counter

	mu     sync.RWMutex
	queues map[string]*Queue
}

// NewRegistry returns an empty registry whose queues report to counter,
// which may be nil.
func NewRegistry(counter Counter) *Registry {
	return &Registry{counter: counter, queues: make(map[string]*Queue)}
}

// Get returns the queue called name, creating it if needed. The caller
// must have validated name.
func (r *Registry) Get(name []byte) *Queue { return r.get(name, nil) }

// GetOwned is Get, except that a queue it creates is restricted to user
// id owner. An existing queue is returned as it is.
func (r *Registry) GetOwned(name []byte, owner uint32) *Queue { return r.get(name, &owner) }

func (r *Registry) get(name []byte, owner *uint32) *Queue {
	r.mu.RLock()
	q := r.queues[string(name)]
	r.mu.RUnlock()
	if q != nil {
		return q
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if q = r.queues[string(name)]; q == nil {
		s := string(name)
		q = New(s, r.counter)
		q.owner = owner
		r.queues[s] = q
	}
	return q
}

// Info describes one queue at one instant.
type Info struct {
	Name     string  `json:"name"`
	Messages int     `json:"messages"`
	Bytes    int64   `json:"bytes"`
	Waiting  int     `json:"waiting"`
	Owner    *uint32 `json:"owner,omitempty"` // the only user id allowed; absent: anyone
}

// Snapshot describes every named queue, sorted by name.
func (r *Registry) Snapshot() []Info {
	r.mu.RLock()
	qs := make([]*Queue, 0, len(r.queues))
	for _, q := range r.queues {
		qs = append(qs, q)
	}
	r.mu.RUnlock()
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
