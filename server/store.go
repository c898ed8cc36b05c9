package server

import (
	"errors"
	"fmt"

	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/wire"
)

// handleStore serves a STORE; it reports true when the connection must
// close.
func (c *conn) handleStore(f wire.Frame) (fatal bool) {
	st, inline, err := wire.ParseStore(f.Header, f.Body)
	if err != nil {
		wire.CloseFDs(f.FDs)
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return false
	}
	m, code, err := c.admit(f, st, inline)
	if err != nil {
		c.fail(f.ID, code, err)
		return false
	}
	isPage := m.FD >= 0
	// From here on the message counts against the totals and its
	// user's limits, wherever it is, until it is released.
	if err := c.acct.Hold(m.Size, isPage); err != nil {
		m.Release()
		c.fail(f.ID, wire.CodeLimit, refusalError(err, m.Size))
		return false
	}
	m.Charge = c.acct
	q, code, err := c.queueFor(st.Queue, f.Flags, true)
	if err != nil {
		m.Release()
		c.fail(f.ID, code, err)
		return false
	}
	defer c.release(q)
	if err := c.s.durableRefusal(q, m.Size, m.FD >= 0); err != nil {
		m.Release()
		c.fail(f.ID, durableCode(err), err)
		return false
	}
	if err := c.s.preparePage(q, m); err != nil {
		m.Release()
		c.fail(f.ID, durableCode(err), err)
		return false
	}
	lim := &c.s.cfg.Limits
	maxMessages, maxBytes, flags := lim.MaxQueueMessages, lim.MaxQueueBytes, "queue"
	if q == c.private {
		maxMessages, maxBytes, flags = lim.MaxPrivateMessages, lim.MaxPrivateBytes, "private"
	}
	if st.Wait && c.version >= wire.VersionAck {
		return c.storeOrWait(f.ID, q, m, maxMessages, maxBytes, flags)
	}
	// STORED goes into the outbox before a waiter on this very connection
	// (a RETRIEVE of the private queue) can be handed the message, so the
	// client always learns of a store before it receives what it stored.
	seq, err := q.PushLimited(m, maxMessages, maxBytes, func(seq uint64) {
		c.mu.Lock()
		c.out = wire.AppendStored(c.out, f.ID, seq)
		c.durableMark(0)
		c.signal()
		c.mu.Unlock()
	})
	if err != nil {
		size := m.Size
		c.s.discardPage(m)
		m.Release()
		if errors.Is(err, queue.ErrFull) {
			err = queueFullError(q, size, maxMessages, maxBytes, flags)
		} else {
			err = refusalError(err, size) // the views of a queue with groups
		}
		c.fail(f.ID, wire.CodeLimit, err)
		return false
	}
	if c.info {
		c.log.Info("enqueued", "queue", queueLabel(q), "seq", seq, "bytes", st.Size, "page", isPage)
	}
	return false
}

// admit checks a STORE's payload and turns it into a queue.Message. It
// takes ownership of f.FDs whatever the outcome.
func (c *conn) admit(f wire.Frame, st wire.Store, inline []byte) (*queue.Message, wire.Code, error) {
	fail := func(code wire.Code, err error) (*queue.Message, wire.Code, error) {
		wire.CloseFDs(f.FDs)
		return nil, code, err
	}
	if st.Size > uint64(c.s.cfg.MaxMessageSize) {
		return fail(wire.CodeTooLarge, fmt.Errorf("payload of %d bytes exceeds the server's maximum of %d (machqd --max-message)", st.Size, c.s.cfg.MaxMessageSize))
	}
	m := &queue.Message{Size: int64(st.Size), FD: -1, DigestAlg: st.DigestAlg, Digest: string(st.Digest)}
	if f.Flags&wire.FlagInline != 0 {
		if len(f.FDs) > 0 {
			return fail(wire.CodeBadDescriptor, fmt.Errorf("inline STORE carried %d descriptor(s); send the payload either inline or as one memfd", len(f.FDs)))
		}
		if len(inline) > c.s.cfg.MaxInline {
			return fail(wire.CodeTooLarge, fmt.Errorf("inline payload of %d bytes exceeds the server's inline maximum of %d; send it as a sealed memfd", len(inline), c.s.cfg.MaxInline))
		}
		if f.Owned {
			m.Inline = inline // read into memory of its own: keep it
		} else {
			m.Inline = append([]byte(nil), inline...)
		}
		return m, 0, nil
	}
	if len(f.FDs) != 1 {
		return fail(wire.CodeBadDescriptor, fmt.Errorf("out-of-line STORE carried %d descriptors; it takes exactly one sealed memfd", len(f.FDs)))
	}
	if err := page.Check(f.FDs[0], int64(st.Size)); err != nil {
		return fail(wire.CodeBadPage, err)
	}
	m.FD = f.FDs[0]
	return m, 0, nil
}

// queueFullError says why a store of size bytes does not fit in q, whose
// limits come from the flags named by which ("queue" or "private").
func queueFullError(q *queue.Queue, size, maxMessages, maxBytes int64, which string) error {
	n, b := q.Len()
	pending, delayed := q.Out()
	n += pending + delayed
	if q.HasGroups() {
		gn, gb := q.FullestGroup()
		if int64(gn) >= maxMessages {
			return limitError(fmt.Sprintf("a consumer group of queue %s is full", queueLabel(q)), int64(gn), maxMessages, "max-"+which+"-messages", "have its consumers take some, store with the wait flag to wait for room (machq.WithWaitForRoom), or raise the limit")
		}
		return limitError(fmt.Sprintf("storing %d more bytes would overfill a consumer group of queue %s", size, queueLabel(q)), gb, maxBytes, "max-"+which+"-bytes", "have its consumers take some, store with the wait flag to wait for room (machq.WithWaitForRoom), or raise the limit")
	}
	if int64(n) >= maxMessages {
		return limitError(fmt.Sprintf("queue %s is full", queueLabel(q)), int64(n), maxMessages, "max-"+which+"-messages", "retrieve some, store with the wait flag to wait for room (machq.WithWaitForRoom), or raise the limit")
	}
	return limitError(fmt.Sprintf("storing %d more bytes would overfill queue %s", size, queueLabel(q)), b, maxBytes, "max-"+which+"-bytes", "retrieve some, store with the wait flag to wait for room (machq.WithWaitForRoom), or raise the limit")
}
