package server

import (
	"errors"
	"fmt"
	"time"

	"github.com/machq/machq/internal/delivery"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/wire"
)

// Acknowledged delivery: the connection's side.
//
// A message taken in ack mode stays its queue's (queue.Hold) and this
// connection's (c.acks, under c.mu) until the consumer settles it or the
// connection ends; its payload, page or inline bytes, stays with it, so a
// redelivery passes the same sealed memfd again. The outbox carries the
// delivery's token beside its bytes (outTokens): once handed to a write,
// the delivery may be settled and its lease runs (delivery.Set.Sending),
// but its message is freed or redelivered only once that write has ended
// (writeDone), since until then the write may still refer to its page.

// ackMode is what an ack-mode retrieve asked for, within the server's
// bounds.
type ackMode struct {
	lease  time.Duration
	credit int // the most deliveries the connection may hold for this retrieve to be served
}

// ackModeOf returns the ack mode r asks for of q: a lease of its own, or
// else the queue's (CONFIG), or else the server's.
func (c *conn) ackModeOf(r wire.Retrieve, q *queue.Queue) ackMode {
	cfg := &c.s.cfg.Ack
	m := ackMode{lease: cfg.Lease, credit: cfg.MaxPending}
	lease := r.LeaseMillis
	if lease == 0 && q != nil {
		lease = q.Policy().LeaseMillis
	}
	switch lease {
	case 0:
	case wire.NoLease:
		m.lease = 0
	default:
		m.lease = time.Duration(lease) * time.Millisecond
	}
	if r.Credit != 0 {
		m.credit = min(m.credit, int(min(r.Credit, 1<<30)))
	}
	return m
}

// creditLeft reports whether the connection holds fewer deliveries than
// mode allows. c.mu is held.
func (c *conn) creditLeft(mode *ackMode) bool {
	return c.acks.Len() < mode.credit
}

// appendDelivery queues an ack-mode MESSAGE for m, which q holds for this
// connection (queue.Hold), and records the delivery. c.mu is held.
func (c *conn) appendDelivery(id uint64, q *queue.Queue, m *queue.Message, mode *ackMode) {
	token := c.s.nextToken.Add(1)
	c.acks.Add(&delivery.Entry{Token: token, Queue: q, Msg: m, Lease: mode.lease})
	c.s.logDeliver(q, m)
	if c.s.obs != nil {
		c.s.obs.Delivered(true, m.Deliveries > 1)
	}
	if c.info {
		c.log.Info("dequeued", "mode", "ack", "queue", queueLabel(q), "seq", m.Seq, "bytes", m.Size, "page", m.FD >= 0, "id", id, "token", token, "deliveries", m.Deliveries)
	}
	wm := wire.Message{
		Seq: m.Seq, Size: uint64(m.Size), DigestAlg: m.DigestAlg, Digest: []byte(m.Digest),
		Ack: true, Token: token, Deliveries: m.Deliveries, Dead: m.Dead, Note: []byte(m.Note), DiedAfter: m.DiedAfter,
	}
	if m.FD < 0 {
		c.out = wire.AppendMessage(c.out, id, wm, m.Inline, false)
	} else {
		c.fdAt = append(c.fdAt, len(c.out))
		c.outFDs = append(c.outFDs, m.FD)
		c.out = wire.AppendMessage(c.out, id, wm, nil, true)
	}
	c.outTokens = append(c.outTokens, token)
	c.signal()
}

// ackSending records that the deliveries named by tokens are handed to
// the write numbered batch, starting their leases. c.mu is held.
func (c *conn) ackSending(tokens []uint64, batch uint64) {
	for _, t := range tokens {
		c.acks.Sending(t, batch, c.expireLease)
	}
}

// ackWritten records that the write numbered batch has ended: its
// deliveries may be freed or redelivered, and pages among them are on
// their way to the peer until it has read them. c.mu is held.
func (c *conn) ackWritten(batch uint64, pages int) {
	c.writeDone = batch
	c.cond.Broadcast()
	if pages > 0 {
		c.ackUnread += pages
		c.armPoll()
	}
}

// awaitWrite waits until the write carrying e has ended (or the
// connection is closing, its writes over). c.mu is held; the reader calls
// it, while the writer goroutine writes.
func (c *conn) awaitWrite(e *delivery.Entry) {
	for c.writeDone < e.Batch && !c.closed {
		c.cond.Wait()
	}
}

// expireLease takes back a delivery whose lease ran out: the message goes
// back to its queue (or becomes a dead letter), and the consumer's late
// settle gets STALE.
func (c *conn) expireLease(e *delivery.Entry) {
	c.mu.Lock()
	if c.writeDone < e.Batch {
		// Still being written (a lease shorter than the write): the
		// consumer has not had it yet.
		c.acks.Renew(e)
		c.mu.Unlock()
		return
	}
	expired := c.acks.Expire(e)
	c.mu.Unlock()
	if !expired {
		return
	}
	if c.info {
		c.log.Info("lease ran out; message taken back", "queue", queueLabel(e.Queue), "seq", e.Msg.Seq, "token", e.Token, "lease", e.Lease)
	}
	c.s.putBack(e.Queue, e.Msg, "lease of "+e.Lease.String()+" ran out")
	c.creditFreed()
}

// creditFreed resumes the waits that were parked for want of credit, now
// that a delivery has been settled.
func (c *conn) creditFreed() {
	c.mu.Lock()
	resume := len(c.parked) > 0 && !c.closed
	c.mu.Unlock()
	if resume {
		c.resumeParked()
	}
}

// returnPending puts back every delivery the connection held, for its
// end: each message returns to its place in its queue at once, marked by
// its delivery count, or becomes a dead letter if it has been delivered
// the most times allowed.
func (c *conn) returnPending() int {
	c.mu.Lock()
	held := c.acks.TakeAll()
	c.mu.Unlock()
	for _, e := range held {
		c.s.putBack(e.Queue, e.Msg, "consumer gone")
	}
	return len(held)
}

// exhausted reports whether m, of q, has been delivered the most times
// q's settings (or else the server's) allow.
func (s *Server) exhausted(q *queue.Queue, m *queue.Message) bool {
	p := s.policy
	if n := q.Policy().MaxDeliveries; n > 0 {
		p.MaxDeliveries = n
	}
	return p.Exhausted(m)
}

// putBack returns a pending message m of q that its consumer did not
// settle (it left, or its lease ran out): to its place in q, or to the
// dead-letter queue once it has been delivered the most times allowed.
func (s *Server) putBack(q *queue.Queue, m *queue.Message, why string) {
	if q.Discards(m) {
		q.Drop(m) // purged or deleted since it was delivered
		return
	}
	if s.exhausted(q, m) {
		if m.Note == "" {
			m.Note = why
		}
		s.deadLetter(q, m, wire.DeadMaxDeliveries)
		return
	}
	q.Return(m, false)
}

// deadLetter moves the pending message m of q to q's dead-letter queue
// Q.dlq, created if need be with q's owner. A private queue has none: the
// message is freed (OutcomeDropped). If the dead-letter queue cannot be
// used (it belongs to someone else, or no more queues may be created),
// the message stays in q, coming back after the longest NAK backoff, so
// that nothing is lost; this is logged.
func (s *Server) deadLetter(q *queue.Queue, m *queue.Message, why uint8) wire.Outcome {
	if q.Discards(m) {
		q.Drop(m) // purged or deleted since it was delivered
		return wire.OutcomeDropped
	}
	m.Dead = why
	if q.Name() == "" {
		q.TakeOut(m)
		s.deadLettered(why)
		s.log.Info("private-queue message dropped: a private queue has no dead-letter queue", "seq", m.Seq, "deliveries", m.Deliveries, "note", m.Note)
		m.Release()
		return wire.OutcomeDropped
	}
	name, err := delivery.DeadLetterQueue(q.Name())
	var dlq *queue.Queue
	root := q // a consumer group's dead letters go to its queue's
	if p := q.Parent(); p != nil {
		root = p
	}
	owner, owned := root.Owner()
	if err == nil {
		creator := root.Creator()
		if owned {
			creator = owner
		}
		dlq, err = s.named.Acquire([]byte(name), creator, owned)
	}
	if err == nil {
		if o, ok := dlq.Owner(); ok != owned || o != owner {
			s.named.Release(dlq)
			err = errors.New("it exists with another owner")
		}
	}
	if err != nil {
		m.Dead = wire.DeadNone
		s.log.Warn("dead letter kept in its queue: its dead-letter queue cannot take it", "queue", q.Name(), "dead_letter_queue", name, "seq", m.Seq, "err", err, "retry_in", s.cfg.Ack.NakBackoffMax)
		q.Delay(m, s.cfg.Ack.NakBackoffMax, false)
		return wire.OutcomeRequeued
	}
	q.TakeOut(m)
	m.DiedAfter, m.Deliveries = m.Deliveries, 0
	m.Group = q.GroupName()
	was := m.LogID
	// Logged in its dead-letter queue (by Append) before it is logged
	// gone from q: a crash in between keeps it twice, never loses it.
	m.LogID = 0
	failures := s.storeFailures.Load()
	dlq.Append(m)
	s.moved(q, dlq, was, failures)
	s.named.Release(dlq)
	s.deadLettered(why)
	s.log.Info("message dead-lettered", "queue", queueLabel(q), "dead_letter_queue", name, "seq", m.Seq, "deliveries", m.DiedAfter, "reason", deadReason(why), "note", m.Note)
	return wire.OutcomeDeadLettered
}

func deadReason(why uint8) string {
	switch why {
	case wire.DeadTerm:
		return "terminated"
	case wire.DeadMaxDeliveries:
		return "max deliveries"
	}
	return "none"
}

// handleSettle serves ACK, NAK, TOUCH and TERM.
func (c *conn) handleSettle(f wire.Frame) {
	st, err := wire.ParseSettle(f.Op, f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return
	}
	c.mu.Lock()
	var e *delivery.Entry
	var lease time.Duration
	if f.Op == wire.OpTouch {
		lease, err = c.acks.Touch(st.Token)
	} else if e, err = c.acks.Settle(st.Token); err == nil {
		c.awaitWrite(e)
	}
	c.mu.Unlock()
	switch {
	case errors.Is(err, delivery.ErrUnknown):
		c.sendError(f.ID, wire.CodeStale, fmt.Sprintf("delivery %d is not pending on this connection: it was settled already, its lease ran out and the message went back to its queue (it may be redelivered, to this consumer or another, under a new token), or it was never delivered here", st.Token))
		return
	case errors.Is(err, delivery.ErrUnsent):
		c.sendError(f.ID, wire.CodeBadRequest, fmt.Sprintf("delivery %d has not been sent to this connection yet; settle a delivery only once its MESSAGE has arrived", st.Token))
		return
	case err != nil:
		c.sendError(f.ID, wire.CodeInternal, err.Error())
		return
	}
	res := wire.Settled{}
	var lsn uint64 // of the records this answer speaks of
	switch f.Op {
	case wire.OpTouch:
		res = wire.Settled{Outcome: wire.OutcomeTouched, LeaseMillis: uint32(min(lease.Milliseconds(), int64(wire.NoLease-1)))}
	case wire.OpAck:
		e.Queue.Settle(e.Msg)
		lsn = c.s.logTake(e.Queue, e.Msg.LogID)
		e.Msg.Release()
		res.Outcome = wire.OutcomeAcked
	case wire.OpNak:
		if len(st.Text) > 0 {
			e.Msg.Note = string(st.Text)
		}
		switch {
		case e.Queue.Discards(e.Msg):
			e.Queue.Drop(e.Msg) // purged or deleted since it was delivered
			res.Outcome = wire.OutcomeDropped
		case c.s.exhausted(e.Queue, e.Msg):
			res.Outcome = c.s.deadLetter(e.Queue, e.Msg, wire.DeadMaxDeliveries)
		default:
			e.Queue.Delay(e.Msg, c.s.policy.NakDelay(e.Msg.Deliveries, time.Duration(st.DelayMillis)*time.Millisecond), true)
			res.Outcome = wire.OutcomeRequeued
		}
	case wire.OpTerm:
		e.Msg.Note = string(st.Text)
		res.Outcome = c.s.deadLetter(e.Queue, e.Msg, wire.DeadTerm)
	}
	if c.info {
		c.log.Info("settled", "op", f.Op.String(), "token", st.Token, "outcome", res.Outcome.String())
	}
	c.mu.Lock()
	c.out = wire.AppendSettled(c.out, f.ID, res)
	c.durableMark(lsn)
	c.signal()
	c.mu.Unlock()
	if f.Op != wire.OpTouch {
		c.creditFreed()
	}
}

// handleKick serves a KICK: dead letters of Q move from Q.dlq back to Q,
// each at its original place, with a fresh delivery count.
func (c *conn) handleKick(f wire.Frame) {
	k, err := wire.ParseKick(f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return
	}
	if len(k.Queue) == 0 {
		c.sendError(f.ID, wire.CodeBadQueueName, "KICK needs a named queue: a private queue has no dead-letter queue")
		return
	}
	dlqName, err := delivery.DeadLetterQueue(string(k.Queue))
	if err != nil {
		c.sendError(f.ID, wire.CodeBadQueueName, err.Error())
		return
	}
	dlq, code, err := c.queueFor([]byte(dlqName), 0, false)
	if err != nil {
		c.fail(f.ID, code, err)
		return
	}
	moved := 0
	if dlq == nil {
		// Nothing to move; still, the answer about another user's
		// queue is that it is not this user's, not that it has no dead
		// letters.
		q, code, err := c.queueFor(k.Queue, 0, false)
		if err != nil {
			c.fail(f.ID, code, err)
			return
		}
		if q != nil {
			c.release(q)
		}
	} else {
		defer c.release(dlq)
		q, code, err := c.queueFor(k.Queue, 0, true)
		if err != nil {
			c.fail(f.ID, code, err)
			return
		}
		defer c.release(q)
		failures := c.s.storeFailures.Load()
		moved = dlq.MoveTo(q, int(k.Count), func(was uint64) { c.s.moved(dlq, q, was, failures) })
	}
	if c.info || moved > 0 {
		c.log.Info("dead letters kicked back", "queue", string(k.Queue), "moved", moved)
	}
	c.mu.Lock()
	c.out = wire.AppendKicked(c.out, f.ID, uint32(moved))
	c.durableMark(0)
	c.signal()
	c.mu.Unlock()
}
