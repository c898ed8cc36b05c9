package queue

import (
	"errors"
	"sort"
	"sync"

	"github.com/machq/machq/internal/stats"
)

// Errors of Acquire and Disown.
var (
	// ErrTooManyQueues reports that creating one more named queue would
	// pass the registry's limit.
	ErrTooManyQueues = errors.New("queue: too many named queues")
	// ErrTooManyQueuesForUID reports that the user creating a queue has
	// created as many as one user may.
	ErrTooManyQueuesForUID = errors.New("queue: too many named queues created by this user")
	// ErrNoQueue reports a name no queue has.
	ErrNoQueue = errors.New("queue: no such queue")
	// ErrNotOwner reports a queue that is not owned by the user asking.
	ErrNotOwner = errors.New("queue: not owned by this user")
	// ErrInUse reports a queue that still holds messages or waiters.
	ErrInUse = errors.New("queue: holds messages or has waiters")
)

// Registry holds the named queues shared by every client. It is safe for
// concurrent use.
//
// A named queue is created by its first use. One that is open (not
// owned), empty and has no waiters is idle: the registry may remove it
// whenever nobody holds it, and its next use creates it again. A removed
// queue is remembered (that it was open, and its next sequence number)
// for as long as the last RememberedQueues removals, so that a queue
// created again soon is the same queue to its users: its numbers
// continue and it cannot be claimed by someone else as an owned one. A
// name no longer remembered is new again, though its numbers still
// continue above any the registry has handed out under a forgotten name.
//
// An owned queue is never removed for being idle: its name stays its
// owner's until the owner gives it up with Disown (or the registry is
// gone), whatever anyone else does. Every queue counts against the limit
// of queues its creator may have, so one user cannot take every name.
//
// A caller holds a queue from Acquire or Lookup until Release; a held
// queue is never removed, so a message pushed into it cannot be lost with
// it. Removal is incremental: a queue that may have become idle puts
// itself on a list, and the registry looks at a bounded number of listed
// queues at a time (one batch per creation once the queues have doubled
// since the list was last emptied, batches until there is room at a
// limit, and every listed queue, batch by batch, for a Snapshot), so that
// no request waits for a sweep of every queue.
//
// Lock order: Registry.mu, then Queue.mu, then Registry.idleMu.
type Registry struct {
	counter   Counter
	logFor    func(name string) Log // nil: no queue is logged
	max       int                   // most queues at once; <= 0: no limit
	maxPerUID int                   // most queues one creator may have; <= 0: no limit

	mu        sync.RWMutex
	queues    map[string]*Queue
	perUID    map[uint32]int // queues by creator
	sweepAt   int            // look at listed queues when creating one beyond this many
	gone      map[string]removed
	goneOrder []removal // the removals remembered, oldest first, as a ring
	goneHead  int
	removals  uint64 // removals so far
	nextStart uint64 // first sequence number for a name not remembered

	idleMu   sync.Mutex
	idleList []*Queue // queues that may be idle, oldest first

	// Consumer groups, in all and by creator, and their limits.
	groupCount, maxGroups, maxGroupsPerUID int
	groupsBy                               map[uint32]int
}

// removed is what a Registry remembers of a queue it removed.
type removed struct {
	nextSeq uint64
	counts  Counts // its delivery counts, which continue too
	policy  Policy // its own settings, which stay
	n       uint64 // which removal this was
}

// removal names a remembered removal in the ring.
type removal struct {
	name string
	n    uint64
}

// RememberedQueues is how many removed queues a Registry remembers.
const RememberedQueues = 1 << 16

// SweepBatch is the most listed queues a registry looks at while holding
// its lock once.
const SweepBatch = 256

// minSweep is the fewest queues worth sweeping for.
const minSweep = 1024

// NewRegistry returns an empty registry whose queues report to counter,
// which may be nil, and that holds at most maxQueues named queues at once
// and at most maxPerUID created by one user id (no limit when <= 0).
func NewRegistry(counter Counter, maxQueues, maxPerUID int) *Registry {
	return &Registry{
		counter:   counter,
		max:       maxQueues,
		maxPerUID: maxPerUID,
		queues:    make(map[string]*Queue),
		perUID:    make(map[uint32]int),
		sweepAt:   minSweep,
		gone:      make(map[string]removed),
		nextStart: 1,
		groupsBy:  make(map[uint32]int),
	}
}

// Acquire returns the queue called name, creating it if needed, and holds
// it until Release. A queue it creates counts against the limits of user
// id creator, and is restricted to that user when owned is set, unless it
// is a removed queue it remembers: that comes back open, as it was. An
// existing queue is returned as it is: the caller checks its owner. It
// fails with ErrTooManyQueues or ErrTooManyQueuesForUID when creating the
// queue would pass a limit even after idle queues are removed. The caller
// must have validated name.
func (r *Registry) Acquire(name []byte, creator uint32, owned bool) (*Queue, error) {
	if q := r.Lookup(name); q != nil {
		return q, nil
	}
	toLook := -1 // listed queues still to look at for room; -1: not counted yet
	for {
		r.mu.Lock()
		if q := r.queues[string(name)]; q != nil {
			q.refs.Add(1)
			r.mu.Unlock()
			return q, nil
		}
		full := r.max > 0 && len(r.queues) >= r.max
		uidFull := r.maxPerUID > 0 && r.perUID[creator] >= r.maxPerUID
		if full || uidFull {
			// Make room, one bounded batch per hold of the lock, looking
			// at most at the queues listed when the search began.
			if toLook < 0 {
				toLook = r.listed()
			}
			if toLook > 0 {
				r.sweep(min(toLook, SweepBatch))
				toLook -= SweepBatch
				r.mu.Unlock()
				continue
			}
			r.mu.Unlock()
			if full {
				return nil, ErrTooManyQueues
			}
			return nil, ErrTooManyQueuesForUID
		}
		if len(r.queues) >= r.sweepAt {
			// The queues have doubled since the list was last emptied:
			// look at one batch of it now, another at the next creation.
			r.sweep(SweepBatch)
			if r.listed() == 0 {
				r.sweepAt = max(2*len(r.queues), minSweep)
			}
		}
		q := r.create(string(name), creator, owned)
		r.mu.Unlock()
		return q, nil
	}
}

// create makes the queue called s, held once. r.mu is held for writing.
func (r *Registry) create(s string, creator uint32, owned bool) *Queue {
	q := New(s, r.counter)
	q.reg = r
	q.creator = creator
	if r.logFor != nil {
		q.log = r.logFor(s)
	}
	if was, ok := r.gone[s]; ok {
		delete(r.gone, s)
		q.nextSeq = was.nextSeq // remembered: comes back open
		q.counts = was.counts
		q.policy = was.policy
	} else {
		q.nextSeq = r.nextStart
		if owned {
			o := creator
			q.owner = &o
		}
	}
	q.refs.Add(1)
	r.queues[s] = q
	r.perUID[creator]++
	// A new queue is idle until something is stored in it or waits on
	// it; a request that fails after creating it leaves it so.
	q.mu.Lock()
	q.mayBeIdle()
	q.mu.Unlock()
	return q
}

// RaiseNextSeq makes every queue of r, and every queue created from now
// on, number its next message at least next: a server recovering durable
// queues gives no number its log says was given.
func (r *Registry) RaiseNextSeq(next uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextStart = max(r.nextStart, next)
	for _, q := range r.queues {
		q.mu.Lock()
		q.nextSeq = max(q.nextSeq, next)
		q.mu.Unlock()
	}
	for name, was := range r.gone {
		was.nextSeq = max(was.nextSeq, next)
		r.gone[name] = was
	}
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
	// A queue found idle while held stays on the list, to be looked at
	// again once released.
	q.refs.Add(-1)
}

// Disown gives up the name of an owned queue: by its owner, or by root
// (uid 0). The queue must be empty with nobody waiting (ErrInUse
// otherwise); it is removed, and the name is free for anyone to create
// again, open or owned. It fails with ErrNoQueue or ErrNotOwner.
func (r *Registry) Disown(name []byte, uid uint32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.queues[string(name)]
	if q == nil {
		return ErrNoQueue
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.owner == nil || (*q.owner != uid && uid != 0) {
		return ErrNotOwner
	}
	if q.n != 0 || q.out != 0 || len(q.waiters) != 0 || len(q.parked) != 0 || len(q.groups) != 0 || len(q.blocked) != 0 || q.refs.Load() != 0 {
		return ErrInUse
	}
	q.owner = nil
	if q.log != nil {
		q.log.Dropped(q) // its description, kept while owned, goes
	}
	r.remove(q, false)
	return nil
}

// Delete removes the queue called name at once, whatever it holds: the
// messages in line and the NAKed ones waiting out a delay are freed, the
// ones pending with consumers will be freed when they come back (an
// acknowledgement still settles them), and its waiters, in line and
// parked, are returned for the caller to answer: the queue forgets them.
// Its name is then free, as after Disown. An owned queue may be deleted
// only by its owner or by root (uid 0): else ErrNotOwner. It fails with
// ErrNoQueue, or with ErrInUse while a request holds the queue (holds
// last as long as one request's handling: try again). The stores waiting
// for room in it are returned too (blocked), for the caller to answer and
// free.
func (r *Registry) Delete(name []byte, uid uint32) (freed, pending int, waiters []Waiter, blocked []*WaitingStore, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.queues[string(name)]
	if q == nil {
		return 0, 0, nil, nil, ErrNoQueue
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.owner != nil && *q.owner != uid && uid != 0 {
		return 0, 0, nil, nil, ErrNotOwner
	}
	if q.refs.Load() != 0 {
		return 0, 0, nil, nil, ErrInUse
	}
	q.deleted = true
	if q.log != nil {
		q.log.Dropped(q)
	}
	blocked = q.takeBlocked()
	freed = q.drainLocked()
	pending = q.out
	waiters = append(append(waiters, q.waiters...), q.parked...)
	q.waiters, q.parked = nil, nil
	for name, g := range q.groups {
		f, p, w, _ := q.deleteGroup(name)
		freed, pending, waiters = freed+f, pending+p, append(waiters, w...)
		r.groupGone(g.creator)
	}
	q.owner = nil
	r.remove(q, false)
	return freed, pending, waiters, blocked, nil
}

// CreateGroup gives the queue called name (created if need be, by
// creator, as Acquire does, but never owned by this) a consumer group;
// see AddGroup.
func (r *Registry) CreateGroup(name []byte, group string, creator uint32, fromOldest bool) (adopted int, err error) {
	q, err := r.Acquire(name, creator, false)
	if err != nil {
		return 0, err
	}
	defer r.Release(q)
	return r.AddGroup(q, group, creator, fromOldest)
}

// SetGroupLimits bounds the consumer groups of all queues together, and
// those one user id creates (<= 0: no limit).
func (r *Registry) SetGroupLimits(total, perUID int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.maxGroups, r.maxGroupsPerUID = total, perUID
}

// AddGroup gives q, a queue the caller holds (Acquire, Lookup), a
// consumer group created by creator; see Queue.CreateGroup. It fails with
// ErrTooManyGroups past the registry's group limits, or ErrGroupExists.
func (r *Registry) AddGroup(q *Queue, group string, creator uint32, fromOldest bool) (adopted int, err error) {
	r.mu.Lock()
	if r.maxGroups > 0 && r.groupCount >= r.maxGroups || r.maxGroupsPerUID > 0 && r.groupsBy[creator] >= r.maxGroupsPerUID {
		r.mu.Unlock()
		return 0, ErrTooManyGroups
	}
	r.groupCount++
	r.groupsBy[creator]++
	r.mu.Unlock()
	adopted, err = q.createGroup(group, fromOldest, creator)
	if err != nil {
		r.mu.Lock()
		r.groupGone(creator)
		r.mu.Unlock()
		return 0, err
	}
	return adopted, nil
}

// Groups returns how many consumer groups exist, and how many each user
// id created.
func (r *Registry) Groups() (total int, byUID map[uint32]int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	byUID = make(map[uint32]int, len(r.groupsBy))
	for uid, n := range r.groupsBy {
		byUID[uid] = n
	}
	return r.groupCount, byUID
}

// groupGone uncounts a group creator created. r.mu is held for writing.
func (r *Registry) groupGone(creator uint32) {
	r.groupCount--
	if r.groupsBy[creator]--; r.groupsBy[creator] <= 0 {
		delete(r.groupsBy, creator)
	}
}

// DeleteGroup removes the consumer group called group of the queue
// called name: its line is freed, its pending messages are freed as they
// come back, and its waiters are returned for the caller to answer. It
// fails with ErrNoQueue, ErrNoGroup, or ErrInUse while a request holds
// the queue (try again).
func (r *Registry) DeleteGroup(name []byte, group string) (freed, pending int, waiters []Waiter, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.queues[string(name)]
	if q == nil {
		return 0, 0, nil, ErrNoQueue
	}
	if q.refs.Load() != 0 {
		return 0, 0, nil, ErrInUse
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	g := q.groups[group]
	freed, pending, waiters, err = q.deleteGroup(group)
	if err == nil {
		r.groupGone(g.creator)
		q.unblock() // the group was perhaps the full one
	}
	q.mayBeIdle()
	return freed, pending, waiters, err
}

// Len returns the number of named queues, idle ones included.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.queues)
}

// CreatedBy returns how many named queues each user id has created that
// still exist.
func (r *Registry) CreatedBy() map[uint32]int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make(map[uint32]int, len(r.perUID))
	for uid, n := range r.perUID {
		out[uid] = n
	}
	return out
}

// listed returns how many queues are on the list of those that may be
// idle.
func (r *Registry) listed() int {
	r.idleMu.Lock()
	defer r.idleMu.Unlock()
	return len(r.idleList)
}

// listIdle puts q on the list of queues that may be idle. q.mu is held.
func (r *Registry) listIdle(q *Queue) {
	r.idleMu.Lock()
	r.idleList = append(r.idleList, q)
	r.idleMu.Unlock()
}

// sweep looks at up to n listed queues, oldest first, removes those that
// are idle and not held, and returns how many it removed. A listed queue
// found held stays listed. r.mu is held for writing, so no hold can be
// taken meanwhile.
func (r *Registry) sweep(n int) (removedCount int) {
	r.idleMu.Lock()
	n = min(n, len(r.idleList))
	batch := make([]*Queue, n)
	copy(batch, r.idleList)
	rest := copy(r.idleList, r.idleList[n:])
	clear(r.idleList[rest:])
	r.idleList = r.idleList[:rest]
	if cap(r.idleList) > 4*SweepBatch && rest < cap(r.idleList)/4 {
		r.idleList = append([]*Queue(nil), r.idleList...) // let a burst's array go
	}
	r.idleMu.Unlock()

	var keep []*Queue
	for _, q := range batch {
		if r.queues[q.name] != q {
			continue // removed already (Disown)
		}
		q.mu.Lock()
		idle := q.idle()
		if !idle {
			q.listed = false // listed again once it goes idle
		} else if q.refs.Load() != 0 {
			keep = append(keep, q) // idle once released: look again later
		} else {
			q.listed = false
			r.remove(q, true)
			removedCount++
		}
		q.mu.Unlock()
	}
	if len(keep) > 0 {
		r.idleMu.Lock()
		r.idleList = append(r.idleList, keep...)
		r.idleMu.Unlock()
	}
	return removedCount
}

// remove deletes q, remembering it when remember is set. r.mu is held for
// writing and q.mu is held.
func (r *Registry) remove(q *Queue, remember bool) {
	delete(r.queues, q.name)
	if r.perUID[q.creator]--; r.perUID[q.creator] <= 0 {
		delete(r.perUID, q.creator)
	}
	if remember {
		r.remember(q.name, removed{nextSeq: q.nextSeq, counts: q.counts, policy: q.policy})
	} else {
		r.nextStart = max(r.nextStart, q.nextSeq)
		if was, ok := r.gone[q.name]; ok {
			r.nextStart = max(r.nextStart, was.nextSeq)
			delete(r.gone, q.name)
		}
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
type Info = stats.Queue

// Snapshot removes idle queues and describes every other named queue,
// sorted by name. It sweeps in batches, releasing the lock between them,
// and looks at most at the queues listed when it began.
func (r *Registry) Snapshot() []Info {
	for listed := r.listed(); listed > 0; {
		r.mu.Lock()
		r.sweep(min(listed, SweepBatch))
		r.mu.Unlock()
		listed -= SweepBatch
	}
	r.mu.RLock()
	qs := make([]*Queue, 0, len(r.queues))
	for _, q := range r.queues {
		qs = append(qs, q)
	}
	r.mu.RUnlock()
	out := make([]Info, 0, len(qs))
	for _, q := range qs {
		q.mu.Lock()
		in := Info{Name: q.name, Messages: q.n, Bytes: q.bytes, Waiting: len(q.waiters) + len(q.parked),
			Pending: q.out - len(q.delayed), Delayed: len(q.delayed), Counts: q.counts, Groups: q.groupInfos(), Blocked: len(q.blocked),
			MaxDeliveries: q.policy.MaxDeliveries, LeaseMillis: q.policy.LeaseMillis, Durable: q.log != nil}
		if q.owner != nil {
			o := *q.owner
			in.Owner = &o
		}
		q.mu.Unlock()
		out = append(out, in)
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
