package server

import (
	"errors"
	"fmt"
	"time"

	"github.com/machq/machq/internal/delivery"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/quota"
	"github.com/machq/machq/internal/wire"
)

// waiter is a RETRIEVE blocked on an empty queue.
type waiter struct {
	c     *conn
	id    uint64
	q     *queue.Queue
	timer *time.Timer
	ack   *ackMode // nil for a plain retrieve
}

// Deliver implements queue.Waiter. The queue's lock is held. A consumer
// with too much unsent, or an ack-mode one holding as many deliveries as
// its credit allows, is Busy: the queue keeps the message and parks the
// wait, which the connection resumes once its outbox drains or a
// delivery is settled.
func (w *waiter) Deliver(q *queue.Queue, m *queue.Message) queue.Delivery {
	c := w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.waits[w.id] != w {
		return queue.Gone
	}
	if c.outboxFull() || w.ack != nil && !c.creditLeft(w.ack) {
		c.parked = append(c.parked, w)
		return queue.Busy
	}
	c.endWait(w)
	if w.ack != nil {
		q.HoldLocked(m)
		c.appendDelivery(w.id, q, m, w.ack)
	} else {
		c.appendMessage(w.id, q, m)
	}
	return queue.Delivered
}

var _ queue.Waiter = (*waiter)(nil)

// endWait forgets w, which has been answered or is about to be. c.mu is
// held and w is in c.waits.
func (c *conn) endWait(w *waiter) {
	delete(c.waits, w.id)
	c.acct.Unwait(1)
	if w.timer != nil {
		w.timer.Stop()
	}
}

// handleRetrieve serves a RETRIEVE; it reports true when the connection
// must close.
func (c *conn) handleRetrieve(f wire.Frame) (fatal bool) {
	var r wire.Retrieve
	var err error
	var mode *ackMode
	if f.Flags&wire.FlagAck != 0 && c.version >= wire.VersionAck {
		r, err = wire.ParseAckRetrieve(f.Body)
		mode = &ackMode{} // set once the queue is known
	} else {
		r, err = wire.ParseRetrieve(f.Body)
	}
	if err != nil {
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return false
	}
	if mode != nil && len(r.Queue) > 0 {
		if _, err := delivery.DeadLetterQueue(string(r.Queue)); err != nil {
			c.sendError(f.ID, wire.CodeBadQueueName, err.Error())
			return false
		}
	}
	var q *queue.Queue
	var code wire.Code
	if len(r.Group) > 0 {
		var parent *queue.Queue
		q, parent, code, err = c.groupFor(r.Queue, r.Group)
		defer c.release(parent)
	} else {
		q, code, err = c.queueFor(r.Queue, f.Flags, r.WaitMillis != 0)
		defer c.release(q)
	}
	if err != nil {
		c.fail(f.ID, code, err)
		return false
	}
	if mode != nil {
		*mode = c.ackModeOf(r, q)
	}
	if r.WaitMillis == 0 {
		if mode != nil {
			c.mu.Lock()
			held, ok := c.acks.Len(), c.creditLeft(mode)
			c.mu.Unlock()
			if !ok {
				c.fail(f.ID, wire.CodeLimit, limitf("max-pending", "this connection holds %d unsettled deliveries, as many as this retrieve's credit (%d) allows (machqd --max-pending caps it); ACK, NAK or TERM some first", held, mode.credit))
				return false
			}
		}
		var m *queue.Message
		if q != nil {
			m = q.PopMode(mode != nil)
		}
		if m == nil {
			label := string(r.Queue)
			if q != nil {
				label = queueLabel(q)
			}
			c.sendError(f.ID, wire.CodeEmpty, fmt.Sprintf("queue %s is empty", label))
			return false
		}
		c.mu.Lock()
		if mode != nil && !c.creditLeft(mode) {
			// A waiting retrieve took the last credit meanwhile.
			held := c.acks.Len()
			c.mu.Unlock()
			q.Unhold(m)
			c.fail(f.ID, wire.CodeLimit, limitf("max-pending", "this connection holds %d unsettled deliveries, as many as this retrieve's credit (%d) allows (machqd --max-pending caps it); ACK, NAK or TERM some first", held, mode.credit))
			return false
		}
		if mode != nil {
			c.appendDelivery(f.ID, q, m, mode)
		} else {
			c.appendMessage(f.ID, q, m)
		}
		c.mu.Unlock()
		return false
	}

	w := &waiter{c: c, id: f.ID, q: q, ack: mode}
	c.mu.Lock()
	if max := c.s.cfg.Limits.MaxWaiting; len(c.waits)+len(c.blocked) >= max {
		n := len(c.waits) + len(c.blocked)
		c.mu.Unlock()
		c.fail(f.ID, wire.CodeLimit, limitError("too many retrieves waiting on this connection", int64(n), int64(max), "max-waiting", "cancel some, or raise the limit"))
		return false
	}
	if _, dup := c.waits[f.ID]; dup || c.blocked[f.ID] != nil {
		c.mu.Unlock()
		// An answer with this id would be ambiguous: end the connection.
		c.sendError(0, wire.CodeMalformed, fmt.Sprintf("request id %d is already waiting; ids of outstanding requests must be unique", f.ID))
		return true
	}
	if err := c.acct.Wait(); err != nil {
		c.mu.Unlock()
		var e *quota.Exceeded
		if !errors.As(err, &e) {
			c.sendError(f.ID, wire.CodeInternal, err.Error())
			return false
		}
		c.fail(f.ID, wire.CodeLimit, refusalError(err, 0))
		return false
	}
	c.waits[f.ID] = w
	noCredit := mode != nil && !c.creditLeft(mode)
	c.mu.Unlock()

	if noCredit {
		// Served once a delivery is settled and the credit allows: parked
		// in its queue first, then on the connection, so that a resume
		// never finds it half parked; and if credit came back meanwhile,
		// resumed at once.
		q.Park(w)
		c.mu.Lock()
		c.parked = append(c.parked, w)
		again := c.creditLeft(mode)
		c.mu.Unlock()
		if again {
			c.resumeParked()
		}
	} else if m := q.PopOrWaitMode(w, mode != nil); m != nil {
		c.mu.Lock()
		c.endWait(w)
		if mode != nil {
			c.appendDelivery(f.ID, q, m, mode)
		} else {
			c.appendMessage(f.ID, q, m)
		}
		c.mu.Unlock()
		return false
	}
	if c.info {
		c.log.Info("waiting for a message", "queue", queueLabel(q), "id", f.ID, "wait_ms", r.WaitMillis)
	}
	if r.WaitMillis != wire.WaitForever {
		c.mu.Lock()
		if c.waits[f.ID] == w { // not delivered meanwhile
			w.timer = time.AfterFunc(time.Duration(r.WaitMillis)*time.Millisecond, func() {
				c.expire(w, wire.CodeEmpty, fmt.Sprintf("queue %s stayed empty for the %dms wait", queueLabel(q), r.WaitMillis))
			})
		}
		c.mu.Unlock()
	}
	return false
}

// expire ends a wait that is still pending with an error response.
func (c *conn) expire(w *waiter, code wire.Code, msg string) {
	if !w.q.CancelWait(w) {
		return // a message was delivered first
	}
	c.mu.Lock()
	if c.waits != nil && c.waits[w.id] != w {
		c.mu.Unlock()
		return
	}
	// c.waits is nil while the connection tears down: the teardown will
	// find w no longer waiting, so answer it here.
	if c.waits != nil {
		c.endWait(w)
	}
	c.mu.Unlock()
	c.sendError(w.id, code, msg)
}

func (c *conn) handleCancel(f wire.Frame) {
	target, err := wire.ParseCancel(f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return
	}
	if c.cancelStore(target, wire.CodeCancelled, "store cancelled by the client; nothing was stored") {
		return
	}
	c.mu.Lock()
	w := c.waits[target]
	if w != nil && w.timer != nil {
		w.timer.Stop()
	}
	c.mu.Unlock()
	if w != nil {
		c.expire(w, wire.CodeCancelled, "retrieve cancelled by the client")
	}
}

// resumeParked puts the waits that were skipped while the outbox was full
// back in line, oldest first, handing each a message its queue holds
// meanwhile, until the outbox is full again; the rest stay parked for the
// next drain.
func (c *conn) resumeParked() {
	c.mu.Lock()
	parked := c.parked
	c.parked = nil
	c.mu.Unlock()
	for i, w := range parked {
		// Deliver, under the queue's lock, decides: a wait that ended is
		// forgotten, one still unable to take a message parks again.
		w.q.Resume(w)
		c.mu.Lock()
		full := c.outboxFull()
		if full {
			c.parked = append(c.parked, parked[i+1:]...)
		}
		c.mu.Unlock()
		if full {
			return
		}
	}
}
