// Package queue holds stored messages in FIFO order and hands them to
// waiting consumers. It knows nothing of sockets: a message is a payload
// (inline bytes or a page descriptor) plus its digest, and a consumer is
// anything that implements Waiter.
package queue

import (
	"errors"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/quota"
	"github.com/machq/machq/internal/stats"
)

// Message is one stored payload. A Message is owned by exactly one place
// at a time: the sender's request, a Queue, or the response that delivers
// it. Whoever owns it last calls Release.
type Message struct {
	Seq  uint64 // position in its queue, assigned by Push
	Size int64  // payload bytes
	// FD is the sealed memfd holding the payload, or -1 for an inline
	// payload. Set it to -1 explicitly: 0 is a valid descriptor.
	FD     int
	Inline []byte // payload carried inline, when FD is -1
	Digest string
	// Charge is the account the message is charged to, from the moment
	// the server accepted it until Release; nil if it is charged to none.
	Charge *quota.Account

	// Note is, for a dead letter, the TERM reason or the text of the
	// last NAK (see Dead).
	Note string
	// Group is the consumer group the message was delivered through, for
	// a dead letter of one: KICK gives it back to that group.
	Group string

	// LogID names the message in its queue's log (Log.Stored sets it);
	// 0 for a message of a queue that is not logged. PayloadFile is the
	// payload file a server prepared for a page bound for a logged
	// queue, for Log.Stored to name.
	LogID       uint64
	PayloadFile string
	// LogFile is the payload file of the data directory holding a page's
	// bytes once a log recorded it (Log.Stored sets it): the views of
	// the page in other groups, and its dead letter, name the same file.
	LogFile string

	shared *shared // for a view: the payload it shares with other groups' views

	// Deliveries counts the message's deliveries in ack mode (Hold).
	Deliveries uint32
	// DiedAfter is, for a dead letter, its Deliveries when it became
	// one; Deliveries then counts again in the dead-letter queue.
	DiedAfter uint32
	heldIn    uint32 // the queue's purges when it was last held in ack mode
	DigestAlg uint8
	// Dead says why a dead letter is one (wire.DeadTerm,
	// wire.DeadMaxDeliveries), 0 for a live message.
	Dead uint8
	sent bool // Sent closed the page, whose charge stays until Release
}

// Sent closes the message's page once a write to a socket has handed the
// kernel a reference of its own, but keeps the page's charge until
// Release: the page exists until the peer has received it.
func (m *Message) Sent() {
	if m.shared != nil {
		return // the page is the views'; the last Release closes it
	}
	if m.FD >= 0 {
		unix.Close(m.FD)
		m.FD = -1
		m.sent = true
	}
}

// Release discharges the message from its account and closes its page,
// if it has one. It is safe to call more than once.
func (m *Message) Release() {
	if m.shared != nil {
		sh := m.shared
		m.shared, m.FD, m.Inline = nil, -1, nil
		sh.release()
		return
	}
	if m.Charge != nil {
		m.Charge.Unhold(m.Size, m.FD >= 0 || m.sent)
		m.Charge = nil
	}
	m.sent = false
	if m.FD >= 0 {
		unix.Close(m.FD)
		m.FD = -1
	}
	m.Inline = nil
}

// Waiter is a consumer blocked on an empty queue. Implementations must be
// comparable (pointers are), since CancelWait finds a waiter by ==.
type Waiter interface {
	// Deliver offers m to the waiter. It is called with the queue's lock
	// held and must not block or call back into the queue. On Delivered
	// the waiter has taken ownership of m and stops waiting; otherwise the
	// queue keeps m and offers it to the next waiter or stores it.
	Deliver(q *Queue, m *Message) Delivery
}

// Delivery is a Waiter's answer to a message offered to it.
type Delivery uint8

const (
	// Delivered: the waiter took the message and stops waiting.
	Delivered Delivery = iota
	// Gone: the waiter can never take a message (its connection is
	// closing); the queue forgets it.
	Gone
	// Busy: the waiter cannot take a message now (its consumer has not
	// read what it was sent). The queue parks it, skipping it, until
	// Resume puts it back in line.
	Busy
)

// Counter is told of every change to the number of messages, of pages
// (messages whose payload is a descriptor) and of bytes held by any queue,
// so that an owner can keep totals across many queues. It is called with
// the queue's lock held.
type Counter interface {
	// Add reports a change of what queues hold in line.
	Add(messages, pages, bytes int64)
	// AddOut reports a change of what queues hold out of line: messages
	// pending with consumers in ack mode, and NAKed messages waiting out
	// their delay.
	AddOut(messages, pages, bytes int64)
}

// count tells the queue's Counter that m joined (sign 1) or left (-1)
// its line. A view is not counted: its shared payload is, once, for all
// the groups. q.mu is held.
func (q *Queue) count(sign int64, m *Message) {
	if q.counter != nil && m.shared == nil {
		q.counter.Add(sign, sign*m.pages(), sign*m.Size)
	}
}

// pages returns 1 if m's payload is a page, 0 if it is inline.
func (m *Message) pages() int64 {
	if m.FD >= 0 {
		return 1
	}
	return 0
}

// Queue is a FIFO of messages with a FIFO of waiters. It is safe for
// concurrent use.
//
// Invariant: a queue that holds messages has no waiter in line (parked
// waiters may exist: they are skipped until resumed).
type Queue struct {
	name    string
	counter Counter
	reg     *Registry    // nil outside a Registry
	refs    atomic.Int64 // holds taken through a Registry
	creator uint32       // the user id that created it, in a Registry
	log     Log          // nil: not logged

	mu      sync.Mutex
	owner   *uint32 // the only user id that may use the queue; nil: anyone
	items   []*Message
	head    int
	n       int
	bytes   int64
	nextSeq uint64
	waiters []Waiter // in line, oldest first
	parked  []Waiter // skipped while Busy, until Resume
	listed  bool     // on the registry's list of queues that may be idle

	// Messages out of line but still the queue's: pending with consumers
	// in ack mode, and NAKed ones waiting out a delay (delayed, with the
	// timer that brings each back). They count against the queue's
	// limits as if they were in line.
	out      int
	outBytes int64
	delayed  map[*Message]*delay
	dueOrder dueOrder // the delayed, by time due
	counts   Counts
	// purges counts the queue's purges: a message held in ack mode
	// before the last one (its heldIn is smaller) is freed if it comes
	// back. deleted: the queue was deleted; everything that comes back
	// is freed.
	purges  uint32
	deleted bool

	policy     Policy          // its own settings (CONFIG)
	blocked    []*WaitingStore // stores waiting for room, oldest first
	hasBlocked atomic.Bool     // len(blocked) > 0, read without the lock

	groupState
}

// Counts are a queue's deliveries and settlements.
type Counts = stats.Counts

// New returns an empty queue. counter may be nil.
func New(name string, counter Counter) *Queue {
	return &Queue{name: name, counter: counter, nextSeq: 1}
}

// Name returns the queue's name; the empty string for a private queue.
func (q *Queue) Name() string { return q.name }

// Owner returns the user id the queue is restricted to, if it is.
func (q *Queue) Owner() (uid uint32, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.owner == nil {
		return 0, false
	}
	return *q.owner, true
}

// Push appends m, assigning its sequence number, or hands it straight to
// the oldest waiter that can take it. It takes ownership of m and returns
// the sequence number. If stored is not nil it is called with the
// sequence number, under the queue's lock, before any waiter sees m: a
// server uses it to acknowledge the store before the message can be
// delivered.
func (q *Queue) Push(m *Message, stored func(seq uint64)) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.push(m, stored)
}

// PushWithin is Push unless the queue would then hold more than
// maxMessages messages or maxBytes payload bytes: it then keeps nothing,
// does not call stored, and returns false. A message for which a waiter
// is in line is not refused: it is handed over, unless every waiter turns
// out unable to take it, and then stored past the limit by that one
// message.
func (q *Queue) PushWithin(m *Message, maxMessages, maxBytes int64, stored func(seq uint64)) (uint64, bool) {
	seq, err := q.PushLimited(m, maxMessages, maxBytes, stored)
	return seq, err == nil
}

// ErrFull reports a message refused because its queue (or a consumer
// group of it) is at its limits.
var ErrFull = errors.New("queue: full")

// PushLimited is PushWithin, saying why a message is refused: ErrFull,
// or, for a queue with consumer groups, the *quota.Exceeded of charging
// the views the message needs beyond its first.
func (q *Queue) PushLimited(m *Message, maxMessages, maxBytes int64, stored func(seq uint64)) (uint64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.fits(m.Size, maxMessages, maxBytes) {
		return 0, ErrFull
	}
	if len(q.groups) > 0 {
		if err := q.chargeViews(m); err != nil {
			return 0, err
		}
		return q.fanOut(m, stored, true), nil
	}
	return q.push(m, stored), nil
}

// push is Push with q.mu held. A queue with consumer groups stores the
// message in every group instead of its own line.
func (q *Queue) push(m *Message, stored func(seq uint64)) uint64 {
	if len(q.groups) > 0 {
		return q.fanOut(m, stored, false)
	}
	m.Seq = q.nextSeq
	q.nextSeq++
	if q.log != nil {
		q.log.Stored(q, m)
	}
	if stored != nil {
		stored(m.Seq)
	}
	for len(q.waiters) > 0 {
		w := q.waiters[0]
		q.waiters[0] = nil
		if len(q.waiters) == 1 {
			// Keep the array: the next PopOrWait appends without allocating.
			q.waiters = q.waiters[:0]
		} else {
			q.waiters = q.waiters[1:]
		}
		switch w.Deliver(q, m) {
		case Delivered:
			q.counts.Delivered++
			q.mayBeIdle()
			return m.Seq
		case Busy:
			q.parked = append(q.parked, w)
		}
	}
	q.append(m)
	return m.Seq
}

// append adds m at the tail. q.mu is held on entry.
func (q *Queue) append(m *Message) {
	q.grow()
	q.items[(q.head+q.n)%len(q.items)] = m
	q.n++
	q.bytes += m.Size
	q.count(1, m)
}

// grow makes room for one more message. q.mu is held on entry.
func (q *Queue) grow() {
	if q.n == len(q.items) {
		grown := make([]*Message, max(8, 2*len(q.items)))
		for i := 0; i < q.n; i++ {
			grown[i] = q.items[(q.head+i)%len(q.items)]
		}
		q.items, q.head = grown, 0
	}
}

// Requeue puts m, taken from q by Pop or Resume but not handed over,
// back at the head, where it came from, keeping its sequence number. It
// goes to a waiter in line if there is one (there is none when m was just
// taken, unless one arrived since).
func (q *Queue) Requeue(m *Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.counts.Delivered-- // counted when taken
	q.place(m, true)
}

// place hands m to the oldest waiter in line that takes it or, failing
// that, puts it in line keeping its sequence number: at its place in the
// order (before the first message with a greater number) when ordered,
// else at the tail. q.mu is held on entry.
func (q *Queue) place(m *Message, ordered bool) {
	for len(q.waiters) > 0 {
		w := q.waiters[0]
		q.waiters[0] = nil
		q.waiters = q.waiters[1:]
		switch w.Deliver(q, m) {
		case Delivered:
			q.counts.Delivered++
			q.mayBeIdle()
			return
		case Busy:
			q.parked = append(q.parked, w)
		}
	}
	if !ordered {
		q.append(m)
		return
	}
	q.grow()
	// Find the place: usually the head, since a message comes back
	// older than those that stayed.
	at := 0
	for at < q.n && q.items[(q.head+at)%len(q.items)].Seq < m.Seq {
		at++
	}
	// Open the slot by moving the messages before it one step back.
	q.head = (q.head - 1 + len(q.items)) % len(q.items)
	for i := 0; i < at; i++ {
		q.items[(q.head+i)%len(q.items)] = q.items[(q.head+i+1)%len(q.items)]
	}
	q.items[(q.head+at)%len(q.items)] = m
	q.n++
	q.bytes += m.Size
	q.count(1, m)
}

// Pop removes and returns the oldest message, or nil when the queue is
// empty. The caller owns the message.
func (q *Queue) Pop() *Message {
	return q.PopMode(false)
}

// PopMode is Pop, holding the message in ack mode (as Hold does, in the
// same step) when ack is set: a message taken in ack mode leaves the line
// but still counts against the queue's limits, so it makes no room for a
// store waiting for it.
func (q *Queue) PopMode(ack bool) *Message {
	q.mu.Lock()
	m := q.take()
	if m != nil && ack {
		q.hold(m)
	}
	q.mu.Unlock()
	if m != nil && !ack {
		q.roomFreed()
	}
	return m
}

// take is pop for a consumer: the message counts as delivered. q.mu is
// held on entry.
func (q *Queue) take() *Message {
	m := q.pop()
	if m != nil {
		q.counts.Delivered++
	}
	return m
}

// pop removes the oldest message. q.mu is held on entry.
func (q *Queue) pop() *Message {
	if q.n == 0 {
		return nil
	}
	m := q.items[q.head]
	q.items[q.head] = nil
	q.head = (q.head + 1) % len(q.items)
	q.n--
	q.bytes -= m.Size
	q.count(-1, m)
	if q.n == 0 {
		q.head = 0
		if len(q.items) > 1024 {
			q.items = nil // let a drained burst's ring go
		}
		q.mayBeIdle()
	}
	return m
}

// idle reports whether q holds nothing, nobody waits on it and nobody
// owns it, so that a registry may remove it. q.mu is held.
func (q *Queue) idle() bool {
	return q.n == 0 && q.out == 0 && len(q.waiters) == 0 && len(q.parked) == 0 && q.owner == nil && len(q.groups) == 0 && len(q.blocked) == 0
}

// mayBeIdle puts q on its registry's list of queues to look at, if it is
// idle and not listed already. q.mu is held.
func (q *Queue) mayBeIdle() {
	if q.reg != nil && !q.listed && q.idle() {
		q.listed = true
		q.reg.listIdle(q)
	}
}

// PopOrWait removes and returns the oldest message; when the queue is
// empty it registers w to receive the next message pushed and returns nil.
func (q *Queue) PopOrWait(w Waiter) *Message {
	return q.PopOrWaitMode(w, false)
}

// PopOrWaitMode is PopOrWait, holding a message it takes in ack mode (as
// Hold does, in the same step) when ack is set.
func (q *Queue) PopOrWaitMode(w Waiter, ack bool) *Message {
	q.mu.Lock()
	m := q.take()
	switch {
	case m == nil:
		q.waiters = append(q.waiters, w)
	case ack:
		q.hold(m)
	}
	q.mu.Unlock()
	if m != nil && !ack {
		q.roomFreed()
	}
	return m
}

// Park registers w as a waiter that cannot take a message now (its
// consumer holds as many pending messages as it may): it is skipped, as
// if Deliver had answered Busy, until Resume.
func (q *Queue) Park(w Waiter) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.parked = append(q.parked, w)
}

// Resume puts a parked waiter back: it offers w the oldest message, if
// there is one, under the queue's lock, as Push would (Delivered: w took
// it and no longer waits; Busy: w stays parked and the message stays;
// Gone: w is forgotten), else puts w in line again. It reports whether w
// took a message; a waiter that is not parked (it was cancelled) is
// offered nothing.
func (q *Queue) Resume(w Waiter) (delivered bool) {
	defer func() {
		if delivered {
			q.roomFreed()
		}
	}()
	q.mu.Lock()
	defer q.mu.Unlock()
	if !remove(&q.parked, w) {
		return false
	}
	m := q.pop()
	if m == nil {
		q.waiters = append(q.waiters, w)
		return false
	}
	switch w.Deliver(q, m) {
	case Delivered:
		q.counts.Delivered++
		return true
	case Busy:
		q.parked = append(q.parked, w)
	}
	q.unpop(m)
	return false
}

// unpop puts m, just taken by pop, back at the head. q.mu is held.
func (q *Queue) unpop(m *Message) {
	q.grow()
	q.head = (q.head - 1 + len(q.items)) % len(q.items)
	q.items[q.head] = m
	q.n++
	q.bytes += m.Size
	q.count(1, m)
}

// remove deletes w from *list, keeping the order, and reports whether it
// was there.
func remove(list *[]Waiter, w Waiter) bool {
	l := *list
	for i, x := range l {
		if x == w {
			copy(l[i:], l[i+1:])
			l[len(l)-1] = nil
			*list = l[:len(l)-1]
			return true
		}
	}
	return false
}

// CancelWait removes w from the waiters, in line or parked. It reports
// whether w was still waiting; false means a message has already been
// delivered to it.
func (q *Queue) CancelWait(w Waiter) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if remove(&q.waiters, w) || remove(&q.parked, w) {
		q.mayBeIdle()
		return true
	}
	return false
}

// Len returns the number of stored messages and their payload bytes.
func (q *Queue) Len() (messages int, bytes int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n, q.bytes
}

// Pages returns the number of stored messages that are pages.
func (q *Queue) Pages() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for i := range q.n {
		if q.items[(q.head+i)%len(q.items)].FD >= 0 {
			n++
		}
	}
	return n
}

// Waiting returns the number of registered waiters, parked ones included.
func (q *Queue) Waiting() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiters) + len(q.parked)
}

// Drain removes every message in line and every NAKed one waiting out a
// delay, in q and in its consumer groups, releases it, and returns how
// many messages (a view of a group counted as one) and bytes were freed.
// Waiters stay registered; messages pending with consumers are theirs.
func (q *Queue) Drain() (messages int, bytes int64) {
	defer q.roomFreed()
	q.mu.Lock()
	defer q.mu.Unlock()
	bytes = q.bytes
	for m := range q.delayed {
		bytes += m.Size
	}
	messages = q.drainLocked()
	for _, g := range q.groups {
		g.mu.Lock()
		bytes += g.bytes
		for m := range g.delayed {
			bytes += m.Size
		}
		messages += g.drainLocked()
		g.mu.Unlock()
	}
	return messages, bytes
}
