package server

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/naming"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/wire"
)

// Queue management: PEEK, PURGE and DELETE (protocol version 3).

// handlePeek serves a PEEK: a copy of the message at an index in line,
// in the ack-mode MESSAGE layout with token 0. A page is passed as a
// duplicate of its descriptor, charged to the peeker until received, so
// that it stays valid whatever becomes of the message meanwhile.
func (c *conn) handlePeek(f wire.Frame) {
	op, err := wire.ParseQueueOp(wire.OpPeek, f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return
	}
	q, code, err := c.queueFor(op.Queue, 0, false)
	if err != nil {
		c.fail(f.ID, code, err)
		return
	}
	if q == nil {
		c.sendError(f.ID, wire.CodeEmpty, fmt.Sprintf("queue %s is empty", op.Queue))
		return
	}
	defer c.release(q)
	// A peeker may have at most maxOutboxPages pages on their way to
	// it, as a consumer may.
	c.mu.Lock()
	full := c.pagesUnreceived() >= maxOutboxPages
	c.mu.Unlock()
	if full {
		c.flush()
		c.refreshReceived()
		c.mu.Lock()
		n := c.pagesUnreceived()
		c.mu.Unlock()
		if n >= maxOutboxPages {
			c.fail(f.ID, wire.CodeLimit, limitf("connection-outbox", "%d pages are on their way to this connection and not yet received, as many as one connection may have; read them before peeking more", n))
			return
		}
	}
	p, ok, err := q.Peek(int(op.Index))
	switch {
	case err != nil:
		c.fail(f.ID, wire.CodeLimit, limitf("max-descriptors", "cannot duplicate the page's descriptor to pass it: %v; retrieve some pages, or raise the descriptor limit", err))
		return
	case !ok:
		n, _ := q.Len()
		c.sendError(f.ID, wire.CodeEmpty, fmt.Sprintf("queue %s holds %d messages in line; none at index %d", queueLabel(q), n, op.Index))
		return
	}
	isPage := p.FD >= 0
	// The duplicate counts as a page of the peeker's until received.
	if err := c.acct.Hold(0, isPage); err != nil {
		if isPage {
			unix.Close(p.FD)
		}
		c.fail(f.ID, wire.CodeLimit, refusalError(err, 0))
		return
	}
	held := &queue.Message{FD: p.FD, Charge: c.acct}
	wm := wire.Message{
		Seq: p.Seq, Size: uint64(p.Size), DigestAlg: p.DigestAlg, Digest: []byte(p.Digest),
		Ack: true, Deliveries: p.Deliveries, Dead: p.Dead, Note: []byte(p.Note), DiedAfter: p.DiedAfter,
	}
	c.mu.Lock()
	if isPage {
		c.fdAt = append(c.fdAt, len(c.out))
		c.outFDs = append(c.outFDs, p.FD)
		c.out = wire.AppendMessage(c.out, f.ID, wm, nil, true)
	} else {
		c.out = wire.AppendMessage(c.out, f.ID, wm, p.Inline, false)
	}
	c.outMsgs = append(c.outMsgs, held)
	c.signal()
	c.mu.Unlock()
	if c.info {
		c.log.Info("peeked", "queue", queueLabel(q), "seq", p.Seq, "index", op.Index, "bytes", p.Size, "page", isPage)
	}
}

// handlePurge serves a PURGE: every message of a queue is freed, those
// pending with consumers when they come back unacknowledged.
func (c *conn) handlePurge(f wire.Frame) {
	op, err := wire.ParseQueueOp(wire.OpPurge, f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return
	}
	q, code, err := c.queueFor(op.Queue, 0, false)
	if err != nil {
		c.fail(f.ID, code, err)
		return
	}
	var d wire.Dropped
	if q != nil {
		freed, pending := q.Purge()
		c.release(q)
		d = wire.Dropped{Freed: uint64(freed), Pending: uint64(pending)}
		c.log.Info("queue purged", "queue", queueLabel(q), "freed", freed, "pending", pending)
	}
	c.mu.Lock()
	c.out = wire.AppendDropped(c.out, wire.OpPurged, f.ID, d)
	c.durableMark(0)
	c.signal()
	c.mu.Unlock()
}

// deleteAttempts bounds how often DELETE tries again while requests hold
// the queue: each hold lasts as long as one request's handling.
const deleteAttempts = 1000

// handleDelete serves a DELETE: the named queue is removed with what it
// holds; its waiting retrieves are answered CANCELLED, and its pending
// messages are freed when they come back unacknowledged.
func (c *conn) handleDelete(f wire.Frame) {
	op, err := wire.ParseQueueOp(wire.OpDelete, f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return
	}
	if len(op.Queue) == 0 {
		c.sendError(f.ID, wire.CodeBadQueueName, "DELETE needs a named queue: the private queue lives as long as its connection (PURGE empties it)")
		return
	}
	if err := naming.ValidQueueName(op.Queue); err != nil {
		c.sendError(f.ID, wire.CodeBadQueueName, err.Error())
		return
	}
	// The caller must be allowed to use the queue at all.
	q, code, err := c.queueFor(op.Queue, 0, false)
	if err != nil {
		c.fail(f.ID, code, err)
		return
	}
	if q != nil {
		c.release(q)
	}
	uid := c.acct.UID()
	var freed, pending int
	var waiters []queue.Waiter
	var blocked []*queue.WaitingStore
	for range deleteAttempts {
		freed, pending, waiters, blocked, err = c.s.named.Delete(op.Queue, uid)
		if !errors.Is(err, queue.ErrInUse) {
			break
		}
		runtime.Gosched()
	}
	switch {
	case err == nil, errors.Is(err, queue.ErrNoQueue):
	case errors.Is(err, queue.ErrNotOwner):
		c.sendError(f.ID, wire.CodeForbidden, fmt.Sprintf("queue %s is not owned by uid %d; only its owner (or root) may delete it", op.Queue, uid))
		return
	case errors.Is(err, queue.ErrInUse):
		c.sendError(f.ID, wire.CodeInUse, fmt.Sprintf("queue %s is busy with other requests; try again", op.Queue))
		return
	default:
		c.sendError(f.ID, wire.CodeInternal, err.Error())
		return
	}
	for _, w := range waiters {
		if w, ok := w.(*waiter); ok {
			w.c.endDeleted(w, string(op.Queue))
		}
	}
	failBlocked(blocked, string(op.Queue))
	if err == nil {
		c.log.Info("queue deleted", "queue", string(op.Queue), "freed", freed, "pending", pending, "waiters", len(waiters))
	}
	c.mu.Lock()
	c.out = wire.AppendDropped(c.out, wire.OpDeleted, f.ID, wire.Dropped{Freed: uint64(freed), Pending: uint64(pending)})
	c.durableMark(0)
	c.signal()
	c.mu.Unlock()
}

// endDeleted answers a wait on a queue that was deleted (the queue has
// forgotten it already).
func (c *conn) endDeleted(w *waiter, name string) {
	c.mu.Lock()
	if c.waits == nil || c.waits[w.id] != w {
		c.mu.Unlock()
		return // answered, or the connection is closing and answers it
	}
	c.endWait(w)
	c.mu.Unlock()
	c.sendError(w.id, wire.CodeCancelled, fmt.Sprintf("queue %s was deleted", name))
}

// handleConfig serves a CONFIG: a named queue's own acknowledged-delivery
// settings, which its consumer groups share.
func (c *conn) handleConfig(f wire.Frame) {
	cfg, err := wire.ParseConfig(f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return
	}
	if len(cfg.Queue) == 0 {
		c.sendError(f.ID, wire.CodeBadQueueName, "CONFIG needs a named queue")
		return
	}
	q, code, err := c.queueFor(cfg.Queue, f.Flags&wire.FlagOwned, true)
	if err != nil {
		c.fail(f.ID, code, err)
		return
	}
	q.SetPolicy(queue.Policy{MaxDeliveries: cfg.MaxDeliveries, LeaseMillis: cfg.LeaseMillis})
	c.s.logMeta(q)
	c.release(q)
	c.log.Info("queue configured", "queue", string(cfg.Queue), "max_deliveries", cfg.MaxDeliveries, "lease_ms", cfg.LeaseMillis)
	c.mu.Lock()
	c.out = wire.AppendConfigured(c.out, f.ID)
	c.durableMark(0)
	c.signal()
	c.mu.Unlock()
}
