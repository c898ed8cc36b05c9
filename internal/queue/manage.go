package queue

import (
	"golang.org/x/sys/unix"
)

// Queue management: peeking, purging and deleting.

// Peeked is a copy of a message in line, taken without taking the
// message: its payload is the same inline bytes (not to be modified) or
// a duplicate of its page's descriptor, which the caller owns and
// closes.
type Peeked struct {
	Message
}

// Peek returns the message at index i in line (0: the oldest) without
// taking it, or false when the queue holds no more than i messages. A
// page's descriptor is duplicated (close-on-exec) so that it stays valid
// whatever becomes of the message; err reports a failed duplication.
func (q *Queue) Peek(i int) (p Peeked, ok bool, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if i < 0 || i >= q.n {
		return Peeked{}, false, nil
	}
	m := q.items[(q.head+i)%len(q.items)]
	p.Message = Message{
		Seq: m.Seq, Size: m.Size, FD: -1, Inline: m.Inline,
		DigestAlg: m.DigestAlg, Digest: m.Digest,
		Deliveries: m.Deliveries, Dead: m.Dead, Note: m.Note, DiedAfter: m.DiedAfter,
	}
	if m.FD >= 0 {
		fd, err := unix.FcntlInt(uintptr(m.FD), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return Peeked{}, false, err
		}
		p.FD = fd
	}
	return p, true, nil
}

// Purge frees every message in line and every NAKed one waiting out its
// delay, and marks the messages pending with consumers to be freed if
// they come back instead of being acknowledged. It returns how many were
// freed and how many pending ones are so marked.
//
// Purging a queue with consumer groups purges every group too: a message
// the groups held is counted once per group.
func (q *Queue) Purge() (freed, pending int) {
	defer q.roomFreed()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.purges++
	if q.log != nil {
		q.log.Purged(q)
	}
	freed = q.drainLocked()
	pending = q.out
	for _, g := range q.groups {
		g.mu.Lock()
		if g.log != nil {
			g.log.Purged(g)
		}
		g.purges++
		freed += g.drainLocked()
		pending += g.out
		g.mu.Unlock()
	}
	return freed, pending
}

// discards reports whether m, coming back to q, is to be freed: the queue
// was deleted, or purged since m was taken in ack mode. q.mu is held.
func (q *Queue) discards(m *Message) bool {
	return q.deleted || m.heldIn < q.purges
}

// Discards reports whether m, a message of q pending with a consumer, is
// to be freed rather than put back or dead-lettered when it comes back.
func (q *Queue) Discards(m *Message) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.discards(m)
}

// Drop frees m, a pending message of q that Discards, and stops counting
// it.
func (q *Queue) Drop(m *Message) {
	defer q.roomFreed()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.takeOut(m)
	m.Release()
}

// drainLocked frees every message in line and every delayed one, and
// returns how many. q.mu is held.
func (q *Queue) drainLocked() int {
	n := 0
	q.dueOrder = nil
	for m, d := range q.delayed {
		d.timer.Stop() // a timer that fired finds m gone and does nothing
		delete(q.delayed, m)
		q.takeOut(m)
		m.Release()
		n++
	}
	for m := q.pop(); m != nil; m = q.pop() {
		m.Release()
		n++
	}
	return n
}
