package server

import (
	"errors"
	"fmt"

	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/quota"
	"github.com/machq/machq/internal/wire"
)

// Stores that wait for room (STORE with FlagWait, protocol version 3):
// a full queue keeps them in line, first come first served, and stores
// each once it fits (queue/room.go). Meanwhile the store counts as a
// waiting request of its connection (--max-waiting and the waiting
// quotas) and its message against the limits it was charged to; CANCEL
// with its id ends the wait with nothing stored.

// blockedStore is a store of this connection waiting for room in q.
type blockedStore struct {
	ws *queue.WaitingStore
	q  *queue.Queue
}

// storeOrWait stores m into q, or waits for room. m is charged already.
// It reports true when the connection must close: id is the id of
// another request waiting already, so any answer under it would be
// ambiguous.
func (c *conn) storeOrWait(id uint64, q *queue.Queue, m *queue.Message, maxMessages, maxBytes int64, which string) (fatal bool) {
	c.mu.Lock()
	if n, max := len(c.waits)+len(c.blocked), c.s.cfg.Limits.MaxWaiting; n >= max {
		c.mu.Unlock()
		c.s.discardPage(m)
		m.Release()
		c.fail(id, wire.CodeLimit, limitError("too many requests waiting on this connection", int64(n), int64(max), "max-waiting", "cancel some, or raise the limit"))
		return false
	}
	if _, dup := c.blocked[id]; dup || c.waits[id] != nil {
		c.mu.Unlock()
		c.s.discardPage(m)
		m.Release()
		c.sendError(0, wire.CodeMalformed, fmt.Sprintf("request id %d is already waiting; ids of outstanding requests must be unique", id))
		return true
	}
	if err := c.acct.Wait(); err != nil {
		c.mu.Unlock()
		c.s.discardPage(m)
		m.Release()
		var e *quota.Exceeded
		if !errors.As(err, &e) {
			c.sendError(id, wire.CodeInternal, err.Error())
			return false
		}
		c.fail(id, wire.CodeLimit, refusalError(err, 0))
		return false
	}
	b := &blockedStore{q: q}
	b.ws = &queue.WaitingStore{Msg: m, MaxMessages: maxMessages, MaxBytes: maxBytes, Stored: func(seq uint64) {
		// Under q's lock: STORED goes out before anyone can see m.
		c.mu.Lock()
		if c.blocked[id] == b {
			delete(c.blocked, id)
			c.acct.Unwait(1)
		}
		c.out = wire.AppendStored(c.out, id, seq)
		c.durableMark(0)
		c.signal()
		c.mu.Unlock()
		if c.info {
			c.log.Info("enqueued", "queue", queueLabel(q), "seq", seq, "bytes", m.Size, "page", m.FD >= 0)
		}
	}}
	b.ws.Abandon = func(why string) {
		c.mu.Lock()
		if c.blocked[id] == b {
			delete(c.blocked, id)
			c.acct.Unwait(1)
		}
		c.mu.Unlock()
		c.s.discardPage(m)
		m.Release()
		c.sendError(id, wire.CodeCancelled, why)
	}
	c.blocked[id] = b
	c.mu.Unlock()
	size := m.Size
	_, stored, waiting := q.PushOrWait(b.ws)
	switch {
	case stored:
	case waiting:
		if c.info {
			c.log.Info("store waits for room", "queue", queueLabel(q), "id", id, "bytes", size)
		}
	default: // it can never fit
		c.mu.Lock()
		delete(c.blocked, id)
		c.acct.Unwait(1)
		c.mu.Unlock()
		c.s.discardPage(m)
		m.Release()
		c.fail(id, wire.CodeLimit, queueFullError(q, size, maxMessages, maxBytes, which))
	}
	return false
}

// cancelStore ends the wait of the blocked store id, if it still waits,
// answering it with code and msg; it reports whether id named one.
func (c *conn) cancelStore(id uint64, code wire.Code, msg string) bool {
	c.mu.Lock()
	b := c.blocked[id]
	c.mu.Unlock()
	if b == nil {
		return false
	}
	if !b.q.CancelStore(b.ws) {
		return true // stored meanwhile: STORED is its answer
	}
	c.mu.Lock()
	if c.blocked[id] == b {
		delete(c.blocked, id)
		c.acct.Unwait(1)
	}
	c.mu.Unlock()
	c.s.discardPage(b.ws.Msg)
	b.ws.Msg.Release()
	c.sendError(id, code, msg)
	return true
}

// cancelAllStores ends every blocked store of the connection, for its
// end, answering each with code and msg.
func (c *conn) cancelAllStores(code wire.Code, msg string) {
	c.mu.Lock()
	ids := make([]uint64, 0, len(c.blocked))
	for id := range c.blocked {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		c.cancelStore(id, code, msg)
	}
}

// failBlocked answers the stores that waited for room in the deleted
// queue name (the queue has let them go) and frees their messages.
func failBlocked(blocked []*queue.WaitingStore, name string) {
	for _, ws := range blocked {
		ws.Abandon(fmt.Sprintf("queue %s was deleted; nothing was stored", name))
	}
}
