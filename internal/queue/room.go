package queue

// Stores that wait for room.
//
// A STORE into a queue at its limits may wait for room instead of being
// refused (backpressure). It waits in its queue's line of blocked stores,
// first come first served; whenever a message leaves the queue (taken,
// acknowledged, dropped, dead-lettered, purged), the oldest blocked
// stores that now fit are stored, in order, and told their sequence
// numbers. A queue with consumer groups keeps the blocked stores; room
// in any group is a reason to look again.

// WaitingStore is a store waiting for room in a queue. The queue owns
// Msg while it waits; Stored is called, with the queue's lock held, once
// the message is stored, before any consumer can see it.
type WaitingStore struct {
	Msg         *Message
	MaxMessages int64
	MaxBytes    int64
	Stored      func(seq uint64)
	// Abandon is called, by whoever deletes the queue while the store
	// waits, to answer it and free Msg; why says why.
	Abandon func(why string)
}

// PushOrWait is PushWithin, except that a message over the limits waits
// for room as ws (whose Msg is m): it then returns waiting, and the queue
// stores it, and calls ws.Stored, once it fits.
//
// A message larger than MaxBytes could never fit: it is refused (neither
// stored nor waiting).
func (q *Queue) PushOrWait(ws *WaitingStore) (seq uint64, stored, waiting bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.blocked) == 0 && q.fits(ws.Msg.Size, ws.MaxMessages, ws.MaxBytes) {
		return q.push(ws.Msg, ws.Stored), true, false
	}
	if ws.Msg.Size > ws.MaxBytes || ws.MaxMessages < 1 {
		return 0, false, false
	}
	q.blocked = append(q.blocked, ws)
	q.hasBlocked.Store(true)
	return 0, false, true
}

// fits reports whether a message of size bytes may be stored under the
// limits: in q's line, or in every group of q. Messages taken in ack mode
// and not yet settled count as the queue's; a message for a waiter in
// line is handed over, not kept, so it fits when nothing is pending. q.mu
// is held.
func (q *Queue) fits(size, maxMessages, maxBytes int64) bool {
	if len(q.groups) > 0 {
		return !q.groupsFull(size, maxMessages, maxBytes)
	}
	if len(q.waiters) > 0 && q.out == 0 {
		return true
	}
	return int64(q.n+q.out) < maxMessages && size <= maxBytes-q.bytes-q.outBytes
}

// CancelStore takes ws out of the line of blocked stores, and reports
// whether it was still waiting (false: it was stored, and Stored called).
// The caller owns ws.Msg again only if it was.
func (q *Queue) CancelStore(ws *WaitingStore) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, b := range q.blocked {
		if b == ws {
			q.blocked = append(q.blocked[:i], q.blocked[i+1:]...)
			q.hasBlocked.Store(len(q.blocked) > 0)
			q.unblock() // the stores behind it may fit
			return true
		}
	}
	return false
}

// Blocked returns the number of stores waiting for room.
func (q *Queue) Blocked() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.blocked)
}

// unblock stores the oldest blocked stores that now fit. q.mu is held.
func (q *Queue) unblock() {
	for len(q.blocked) > 0 {
		ws := q.blocked[0]
		if !q.fits(ws.Msg.Size, ws.MaxMessages, ws.MaxBytes) {
			return
		}
		q.blocked[0] = nil
		q.blocked = q.blocked[1:]
		q.push(ws.Msg, ws.Stored)
	}
	q.hasBlocked.Store(false)
}

// roomFreed looks for blocked stores that now fit, after a message left
// q (or, for a consumer group, left the group). It is called with no lock
// held, and costs an atomic load when no store waits.
func (q *Queue) roomFreed() {
	t := q
	if q.parent != nil {
		t = q.parent
	}
	if !t.hasBlocked.Load() {
		return
	}
	t.mu.Lock()
	t.unblock()
	t.mu.Unlock()
}

// takeBlocked removes every blocked store and returns them, for a queue
// being deleted. q.mu is held.
func (q *Queue) takeBlocked() []*WaitingStore {
	b := q.blocked
	q.blocked = nil
	q.hasBlocked.Store(false)
	return b
}
