package queue

import (
	"cmp"
	"errors"
	"slices"
	"sort"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/quota"
	"github.com/machq/machq/internal/stats"
)

// Consumer groups.
//
// A named queue may have consumer groups. Each group is a Queue of its
// own (its line, waiters, pending deliveries, counts), held by the queue
// and reached by name; a RETRIEVE through a group works on it exactly as
// on a queue. Once a queue has a group, a message stored into it goes to
// every group instead of the queue's own line: each group gets a view of
// it, a Message of its own (its own delivery count, note, pending state)
// sharing one payload, the same inline bytes or the same page descriptor.
// The payload is freed, and discharged from its storer's account, when
// the last view is released: when every group has acknowledged it (or
// taken it plainly, or dropped it). Each view beyond the first counts as
// one more message, of no bytes, against the storer's quotas: a view
// costs the server memory, and groups must not multiply what one user
// can make the server hold beyond what is counted. A queue without groups behaves as if
// groups did not exist; the messages in its own line when the first
// group is created stay there for plain consumers, unless the group is
// created from the oldest, which adopts them.
//
// Lock order: the queue's mu, then a group's mu.

// Errors of CreateGroup and DeleteGroup.
var (
	// ErrGroupExists: the queue has a group of that name already.
	ErrGroupExists = errors.New("queue: consumer group exists")
	// ErrNoGroup: the queue has no group of that name.
	ErrNoGroup = errors.New("queue: no such consumer group")
	// ErrTooManyGroups: the queue has as many groups as allowed.
	ErrTooManyGroups = errors.New("queue: too many consumer groups")
)

// MaxGroups is the most consumer groups one queue may have.
const MaxGroups = 256

// shared is a payload several views hold: one per consumer group.
type shared struct {
	refs    atomic.Int32
	seq     uint64
	fd      int
	inline  []byte
	size    int64
	digest  string
	alg     uint8
	charge  *quota.Account
	counter Counter // told once, for every view together
	file    string  // the payload file of a logged page (Message.LogFile)
}

// share turns m, accepted for q, into a shared payload with no view yet,
// counted once by q's counter. m must not be used afterwards, and must
// not be a view.
func (q *Queue) share(m *Message) *shared {
	if m.shared != nil {
		panic("queue: sharing a view")
	}
	sh := &shared{
		seq: m.Seq, fd: m.FD, inline: m.Inline, size: m.Size, digest: m.Digest, alg: m.DigestAlg,
		charge: m.Charge, counter: q.counter, file: cmp.Or(m.PayloadFile, m.LogFile),
	}
	if sh.counter != nil {
		sh.counter.Add(1, m.pages(), m.Size)
	}
	m.FD, m.Inline, m.Charge, m.PayloadFile = -1, nil, nil, ""
	return sh
}

// view returns a new view of sh. The caller holds a view of sh (or sh
// has none yet), so that sh cannot be freed meanwhile; every view but
// the first is charged as one more message by extraViews.
func (sh *shared) view() *Message {
	sh.refs.Add(1)
	return &Message{Seq: sh.seq, Size: sh.size, FD: sh.fd, Inline: sh.inline, DigestAlg: sh.alg, Digest: sh.digest, LogFile: sh.file, shared: sh}
}

// release drops one view; the last frees the payload, each other one
// its charge of one message.
func (sh *shared) release() {
	if sh.refs.Add(-1) != 0 {
		if sh.charge != nil {
			sh.charge.UnholdMessages(1)
		}
		return
	}
	page := sh.fd >= 0
	var pages int64
	if page {
		pages = 1
	}
	if sh.counter != nil {
		sh.counter.Add(-1, -pages, -sh.size)
	}
	if sh.charge != nil {
		sh.charge.Unhold(sh.size, page)
	}
	if page {
		unix.Close(sh.fd)
	}
}

// Group returns the consumer group called name of q, or nil.
func (q *Queue) Group(name string) *Queue {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.groups[name]
}

// GroupName returns the name of the consumer group q is; "" for a queue.
func (q *Queue) GroupName() string { return q.group }

// HasGroups reports whether q has consumer groups.
func (q *Queue) HasGroups() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.groups) > 0
}

// CreateGroup gives q a consumer group called name, which receives every
// message stored from now on; with fromOldest it also takes every message
// in line in q: those in q's own line (taken from it) and those in the
// other groups' lines (a message pending with another group's consumer,
// or waiting out a NAK's delay, is not taken). It returns how many
// messages it took that way.
func (q *Queue) CreateGroup(name string, fromOldest bool) (adopted int, err error) {
	return q.createGroup(name, fromOldest, 0)
}

// createGroup is CreateGroup recording the user id that creates it.
func (q *Queue) createGroup(name string, fromOldest bool, creator uint32) (adopted int, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.groups[name] != nil {
		return 0, ErrGroupExists
	}
	if len(q.groups) >= MaxGroups {
		return 0, ErrTooManyGroups
	}
	g := New(q.name, nil)
	g.group = name
	g.parent = q
	g.creator = creator
	g.log = q.log
	if g.log != nil {
		g.log.GroupCreated(g)
	}
	if fromOldest {
		views, left := q.adoptable()
		g.mu.Lock()
		for _, v := range views {
			if g.log != nil {
				g.log.Stored(g, v)
			}
			g.append(v)
		}
		g.mu.Unlock()
		if q.log != nil {
			// Only now that the views name their payload files may the
			// messages that held them go.
			for _, id := range left {
				q.log.Left(q, id)
			}
		}
		adopted = len(views)
	}
	if q.groups == nil {
		q.groups = make(map[string]*Queue)
	}
	q.groups[name] = g
	return adopted, nil
}

// adoptable returns, in order, a view of every message in line in q: the
// messages of q's own line, taken from it (a view there, a dead letter of
// a group since deleted, is used as it is), and one of each payload in
// the other groups' lines, once whatever the number of groups holding
// it; and the log's names of the messages taken from q's own line.
// q.mu is held.
func (q *Queue) adoptable() (views []*Message, left []uint64) {
	seen := make(map[*shared]bool)
	for m := q.pop(); m != nil; m = q.pop() {
		if m.LogID != 0 {
			left = append(left, m.LogID)
		}
		if m.shared == nil {
			m = q.share(m).view() // its first view: charged already
		}
		if seen[m.shared] {
			m.Release() // two views of one payload in the line
			continue
		}
		seen[m.shared] = true
		views = append(views, m)
	}
	for _, g := range q.groups {
		g.mu.Lock()
		for i := range g.n {
			v := g.items[(g.head+i)%len(g.items)]
			if seen[v.shared] {
				continue
			}
			seen[v.shared] = true
			// v, in g's line under g's lock, keeps the payload alive.
			if v.shared.charge != nil {
				v.shared.charge.ForceHoldMessages(1)
			}
			views = append(views, v.shared.view())
		}
		g.mu.Unlock()
	}
	sort.Slice(views, func(i, j int) bool { return views[i].Seq < views[j].Seq })
	return views, left
}

// deleteGroup removes the group called name: its line is freed, its
// pending messages are freed as they come back, and its waiters are
// returned for the caller to answer. q.mu is held.
func (q *Queue) deleteGroup(name string) (freed, pending int, waiters []Waiter, err error) {
	g := q.groups[name]
	if g == nil {
		return 0, 0, nil, ErrNoGroup
	}
	delete(q.groups, name)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.log != nil && !q.deleted {
		g.log.Dropped(g) // a queue's deletion drops its groups
	}
	g.deleted = true
	freed = g.drainLocked()
	waiters = append(append(waiters, g.waiters...), g.parked...)
	g.waiters, g.parked = nil, nil
	return freed, g.out, waiters, nil
}

// chargeViews charges the views a message of q's groups needs beyond its
// first, one message each, to m's account, within its limits. q.mu is
// held.
func (q *Queue) chargeViews(m *Message) error {
	if m.Charge == nil || len(q.groups) < 2 {
		return nil
	}
	return m.Charge.HoldMessages(int64(len(q.groups) - 1))
}

// fanOut stores m, accepted for q, in every group of q, keeping q's
// sequence number, as views of one shared payload; the views beyond the
// first are charged here unless charged is set (chargeViews). q.mu is
// held.
func (q *Queue) fanOut(m *Message, stored func(seq uint64), charged bool) uint64 {
	if !charged && m.Charge != nil && len(q.groups) > 1 {
		m.Charge.ForceHoldMessages(int64(len(q.groups) - 1))
	}
	m.Seq = q.nextSeq
	q.nextSeq++
	sh := q.share(m)
	// Every view exists before any is delivered: a consumer that takes
	// and acknowledges one at once must not free the payload under the
	// other groups.
	views := make([]*Message, 0, len(q.groups))
	for range q.groups {
		views = append(views, sh.view())
	}
	gs := q.sortedGroups()
	// Logged before stored is told, as a queue's own store is: the
	// answer that speaks of the message waits for the records appended
	// until then.
	for i, g := range gs {
		if g.log != nil {
			g.mu.Lock()
			g.log.Stored(g, views[i])
			g.mu.Unlock()
		}
	}
	if stored != nil {
		stored(m.Seq)
	}
	for i, g := range gs {
		g.mu.Lock()
		g.place(views[i], false)
		g.mu.Unlock()
	}
	return m.Seq
}

// sortedGroups returns q's groups by name. q.mu is held.
func (q *Queue) sortedGroups() []*Queue {
	gs := make([]*Queue, 0, len(q.groups))
	for _, g := range q.groups {
		gs = append(gs, g)
	}
	slices.SortFunc(gs, func(a, b *Queue) int {
		switch {
		case a.group < b.group:
			return -1
		case a.group > b.group:
			return 1
		}
		return 0
	})
	return gs
}

// groupsFull reports whether a group of q holds maxMessages messages, or
// would pass maxBytes with size more. q.mu is held.
func (q *Queue) groupsFull(size, maxMessages, maxBytes int64) bool {
	for _, g := range q.groups {
		g.mu.Lock()
		full := !(len(g.waiters) > 0 && g.out == 0) && (int64(g.n+g.out) >= maxMessages || size > maxBytes-g.bytes-g.outBytes)
		g.mu.Unlock()
		if full {
			return true
		}
	}
	return false
}

// FullestGroup returns the messages (in line, pending and delayed) and
// bytes of q's fullest group, by messages; zeros without groups.
func (q *Queue) FullestGroup() (messages int, bytes int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, g := range q.groups {
		g.mu.Lock()
		if n := g.n + g.out; n > messages {
			messages, bytes = n, g.bytes+g.outBytes
		}
		g.mu.Unlock()
	}
	return messages, bytes
}

// GroupInfo describes one consumer group of a queue.
type GroupInfo = stats.Group

// groupInfos describes q's groups, by name. q.mu is held.
func (q *Queue) groupInfos() []GroupInfo {
	if len(q.groups) == 0 {
		return nil
	}
	out := make([]GroupInfo, 0, len(q.groups))
	for _, g := range q.sortedGroups() {
		g.mu.Lock()
		in := GroupInfo{
			Name: g.group, Messages: g.n, Bytes: g.bytes, Waiting: len(g.waiters) + len(g.parked),
			Pending: g.out - len(g.delayed), Delayed: len(g.delayed), Counts: g.counts,
		}
		if g.n > 0 {
			in.Position = g.items[g.head].Seq
		}
		g.mu.Unlock()
		out = append(out, in)
	}
	return out
}

// groupState is what a queue keeps for consumer groups, and what a group
// keeps of its queue.
type groupState struct {
	groups map[string]*Queue // the queue's groups, by name
	group  string            // for a group: its name
	parent *Queue            // for a group: its queue
}

// RestoreGroup gives q, a queue the caller holds, the consumer group
// called name, created by creator, as recovered from q's log: nothing is
// logged, and the registry's group limits are not applied (the groups
// were within them when created). Its views are restored with Restore.
func (r *Registry) RestoreGroup(q *Queue, name string, creator uint32) (*Queue, error) {
	q.mu.Lock()
	if q.groups[name] != nil {
		q.mu.Unlock()
		return nil, ErrGroupExists
	}
	g := New(q.name, nil)
	g.group, g.parent, g.creator, g.log = name, q, creator, q.log
	if q.groups == nil {
		q.groups = make(map[string]*Queue)
	}
	q.groups[name] = g
	q.mu.Unlock()
	r.mu.Lock()
	r.groupCount++
	r.groupsBy[creator]++
	r.mu.Unlock()
	return g, nil
}

// Payload is the payload of a recovered message that the views of
// several consumer groups share.
type Payload struct{ sh *shared }

// SharePayload makes the payload of m, a recovered message of q charged
// as one message (its bytes, its page), shareable by views: m must not
// be used afterwards.
func (q *Queue) SharePayload(m *Message) *Payload {
	q.mu.Lock()
	defer q.mu.Unlock()
	return &Payload{q.share(m)}
}

// View returns a new view of p, to Restore into a group. Every view
// beyond the first is to be charged as one more message to the account
// p's message was charged to (quota.Account.ForceHoldMessages).
func (p *Payload) View() *Message { return p.sh.view() }
