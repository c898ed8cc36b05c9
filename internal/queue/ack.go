package queue

import (
	"cmp"
	"container/heap"
	"slices"
	"time"
)

// Acknowledged delivery.
//
// A message taken in ack mode leaves the line but stays the queue's: it
// is pending with its consumer until settled, and counts against the
// queue's limits and in its statistics as if it were in line. Settling
// it ends that: Settle (ACK) frees it; Return (the consumer left, its
// lease ran out, or a NAK) puts it back at its original place in the
// order; Delay (a NAK with a delay) puts it back once the delay is over;
// TakeOut lets it go elsewhere (a dead-letter queue). The queue does not
// know who holds a pending message: the server keeps that, per
// connection.

// Hold records that m, just taken from q (Pop, PopOrWait, Resume), is
// delivered in ack mode: it is pending until settled, and its delivery
// count rises.
func (q *Queue) Hold(m *Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.hold(m)
}

// HoldLocked is Hold for a Waiter's Deliver, which runs with q's lock
// held; it must not be called anywhere else.
func (q *Queue) HoldLocked(m *Message) { q.hold(m) }

// hold is Hold with q.mu held.
func (q *Queue) hold(m *Message) {
	m.heldIn = q.purges
	m.Deliveries++
	if m.Deliveries > 1 {
		q.counts.Redelivered++
	}
	q.putOut(m)
}

// putOut counts m as the queue's while out of line. q.mu is held.
func (q *Queue) putOut(m *Message) {
	q.out++
	q.outBytes += m.Size
	if q.counter != nil && m.shared == nil {
		q.counter.AddOut(1, m.pages(), m.Size)
	}
}

// takeOut stops counting m as the queue's out of line. q.mu is held.
func (q *Queue) takeOut(m *Message) {
	q.out--
	q.outBytes -= m.Size
	if q.counter != nil && m.shared == nil {
		q.counter.AddOut(-1, -m.pages(), -m.Size)
	}
	q.mayBeIdle()
}

// Settle records that the pending message m was acknowledged: it is no
// longer the queue's, and the caller releases it.
func (q *Queue) Settle(m *Message) {
	defer q.roomFreed()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.counts.Acked++
	q.takeOut(m)
}

// Return puts the pending message m back at its original place in the
// order (or hands it to a waiter in line), keeping its sequence number
// and delivery count: its consumer left, its lease ran out, or it was
// NAKed (nacked set) without delay.
//
// A message of a queue purged or deleted since it was delivered is freed
// instead (Discards).
func (q *Queue) Return(m *Message, nacked bool) {
	q.mu.Lock()
	if nacked {
		q.counts.Nacked++
	}
	q.takeOut(m)
	if q.discards(m) {
		m.Release()
		q.mu.Unlock()
		q.roomFreed()
		return
	}
	q.place(m, true)
	q.mu.Unlock()
}

// Delay puts the pending message m back at its original place once d
// has passed: it was NAKed (nacked set), or has nowhere else to go for
// now. Until then it stays out of line, counted as the queue's; Drain
// frees it.
func (q *Queue) Delay(m *Message, d time.Duration, nacked bool) {
	q.mu.Lock()
	if nacked {
		q.counts.Nacked++
	}
	if q.discards(m) {
		q.takeOut(m)
		m.Release()
		q.mu.Unlock()
		q.roomFreed()
		return
	}
	if q.delayed == nil {
		q.delayed = make(map[*Message]*delay)
	}
	dl := &delay{m: m, due: time.Now().Add(d), timer: time.AfterFunc(d, func() { q.undelay(m) })}
	q.delayed[m] = dl
	heap.Push(&q.dueOrder, dl)
	q.mu.Unlock()
}

// delay is a delayed message, the time it is due back and its timer.
type delay struct {
	m     *Message
	due   time.Time
	timer *time.Timer
}

// dueOrder is a heap of the delayed messages, the first due first (the
// oldest sequence number first among those due together).
type dueOrder []*delay

func (h dueOrder) Len() int { return len(h) }
func (h dueOrder) Less(i, j int) bool {
	if c := h[i].due.Compare(h[j].due); c != 0 {
		return c < 0
	}
	return h[i].m.Seq < h[j].m.Seq
}
func (h dueOrder) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *dueOrder) Push(x any)   { *h = append(*h, x.(*delay)) }
func (h *dueOrder) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return x
}

// undelay brings a delayed message back, unless Drain freed it, and with
// it every other delayed message already due, oldest sequence number
// first. Timers due together fire in no particular order: without this,
// a waiting consumer could be handed a later message before the earlier
// one whose timer happened to run second.
func (q *Queue) undelay(m *Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.delayed[m]; !ok {
		return
	}
	// m is among them: its timer fires no earlier than it is due.
	now := time.Now()
	var due []*Message
	for len(q.dueOrder) > 0 && !q.dueOrder[0].due.After(now) {
		dl := heap.Pop(&q.dueOrder).(*delay)
		dl.timer.Stop() // if it fires, it finds its message gone
		delete(q.delayed, dl.m)
		due = append(due, dl.m)
	}
	slices.SortFunc(due, func(a, b *Message) int { return cmp.Compare(a.Seq, b.Seq) })
	for _, o := range due {
		q.takeOut(o)
		q.place(o, true)
	}
}

// TakeOut records that the pending message m leaves the queue for good
// without being acknowledged (dead lettered): the caller owns it.
func (q *Queue) TakeOut(m *Message) {
	defer q.roomFreed()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.counts.DeadLettered++
	q.takeOut(m)
}

// Append stores m, keeping its sequence number and delivery record, at
// the tail (or hands it to a waiter in line): a dead letter arriving in
// its dead-letter queue. It is never refused: m is counted already.
func (q *Queue) Append(m *Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.log != nil {
		q.log.Stored(q, m)
	}
	q.place(m, false)
}

// Insert stores m, keeping its sequence number, at its place in the
// order (or hands it to a waiter in line): a dead letter kicked back
// into the queue it came from.
func (q *Queue) Insert(m *Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.log != nil {
		q.log.Stored(q, m)
	}
	q.place(m, true)
}

// Out returns the messages pending with consumers and those NAKed and
// waiting out a delay.
func (q *Queue) Out() (pending, delayed int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.out - len(q.delayed), len(q.delayed)
}

// Counts returns the queue's delivery counts.
func (q *Queue) Counts() Counts {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.counts
}

// MoveTo moves up to n messages (every one when n <= 0) from the head of
// q to dst, each at its place in dst's order by sequence number, with a
// fresh delivery record: dead letters kicked back into the queue they
// came from (a consumer group's into that group). It returns how many
// moved.
//
// arrived, if not nil, is called with each message's former LogID once it
// is in its new queue: the server logs it gone from q then, after its
// arrival, so that a crash in between keeps it twice rather than lose it.
func (q *Queue) MoveTo(dst *Queue, n int, arrived func(logID uint64)) int {
	q.mu.Lock()
	var moved []*Message
	for n <= 0 || len(moved) < n {
		m := q.pop()
		if m == nil {
			break
		}
		moved = append(moved, m)
	}
	q.mu.Unlock()
	if len(moved) > 0 {
		q.roomFreed()
	}
	for _, m := range moved {
		m.Deliveries, m.Dead, m.Note, m.DiedAfter = 0, 0, "", 0
		to := dst
		if m.Group != "" {
			// A dead letter of a consumer group goes back to that group,
			// if it still exists; else to the queue's own line.
			if g := dst.Group(m.Group); g != nil {
				to = g
			}
			m.Group = ""
		}
		was := m.LogID
		m.LogID = 0 // named anew by dst's log, if it has one
		to.Insert(m)
		if arrived != nil {
			arrived(was)
		}
	}
	return len(moved)
}

// Parent returns the queue a consumer group belongs to; nil for a queue.
func (q *Queue) Parent() *Queue { return q.parent }

// Creator returns the user id that created the queue, in a Registry.
func (q *Queue) Creator() uint32 { return q.creator }

// Policy is a queue's own acknowledged-delivery settings (CONFIG); a zero
// field takes the server's.
type Policy struct {
	MaxDeliveries uint32 // deliveries before a dead letter; 0: the server's
	LeaseMillis   uint32 // default lease of its ack-mode retrieves; 0: the server's; NoLease: none
}

// SetPolicy sets q's own settings.
func (q *Queue) SetPolicy(p Policy) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.policy = p
}

// Policy returns q's own settings: for a consumer group, its queue's.
func (q *Queue) Policy() Policy {
	t := q
	if q.parent != nil {
		t = q.parent
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.policy
}

// Unhold undoes the Hold (or PopMode with ack) of m, just taken from q by
// a consumer that could not take it after all: m goes back to its place,
// as if never taken.
func (q *Queue) Unhold(m *Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	m.Deliveries--
	if m.Deliveries > 0 {
		q.counts.Redelivered--
	}
	q.counts.Delivered--
	q.out--
	q.outBytes -= m.Size
	if q.counter != nil && m.shared == nil {
		q.counter.AddOut(-1, -m.pages(), -m.Size)
	}
	q.place(m, true)
}
