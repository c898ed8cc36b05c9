package server

import (
	"errors"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/wire"
)

// The outbox: the responses a connection has yet to send, and the
// goroutines that send them (see conn).

// backpressure holds the reader while more than maxOutbox bytes of
// responses wait for a client that is not reading them.
func (c *conn) backpressure() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.out) > maxOutbox && !c.closed && !c.stopping {
		if !c.flushing {
			c.mu.Unlock()
			c.flush() // blocks while the client does not read
			c.mu.Lock()
			continue
		}
		c.cond.Wait()
	}
}

// appendMessage queues a MESSAGE response for m, taking ownership of m:
// it stays charged to its account until the response is written. c.mu is
// held on entry.
func (c *conn) appendMessage(id uint64, q *queue.Queue, m *queue.Message) {
	if c.info {
		c.log.Info("dequeued", "queue", queueLabel(q), "seq", m.Seq, "bytes", m.Size, "page", m.FD >= 0, "id", id)
	}
	wm := wire.Message{Seq: m.Seq, Size: uint64(m.Size), DigestAlg: m.DigestAlg, Digest: []byte(m.Digest)}
	if c.s.obs != nil {
		c.s.obs.Delivered(false, false)
	}
	if m.LogID != 0 {
		// Taken from a durable queue: the answer waits until that is
		// on disk, so the message never comes back once received.
		c.durableMark(c.s.logTake(q, m.LogID))
	}
	if m.FD < 0 {
		c.out = wire.AppendMessage(c.out, id, wm, m.Inline, false)
		m.Inline = nil
	} else {
		c.fdAt = append(c.fdAt, len(c.out))
		c.outFDs = append(c.outFDs, m.FD)
		c.out = wire.AppendMessage(c.out, id, wm, nil, true)
	}
	c.outMsgs = append(c.outMsgs, m)
	c.signal()
}

// durableMark makes the answers in the outbox wait until every record
// of the durable queues' log appended so far is durable; lsn, if not 0,
// is one they need. c.mu is held.
func (c *conn) durableMark(lsn uint64) {
	if c.s.store == nil {
		return
	}
	c.outLSN = max(c.outLSN, lsn, c.s.store.LastAppended())
}

// outboxFull reports whether the client has so much unsent that it must
// receive no further message until it reads. c.mu is held.
func (c *conn) outboxFull() bool {
	return len(c.out)+c.writing >= maxOutbox || c.pagesUnreceived() >= maxOutboxPages
}

// signal makes sure what was just appended to the outbox gets sent: by
// the goroutine flushing it now, by the reader before it next waits, or
// else by the writer, which it wakes. c.mu is held on entry.
func (c *conn) signal() {
	if c.flushing || c.busy {
		return
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writeLoop sends what is appended while the reader waits, until quit is
// closed and the outbox is empty, or a write fails.
func (c *conn) writeLoop() {
	for {
		select {
		case <-c.wake:
			if !c.flush() {
				return
			}
		case <-c.quit:
			c.flush()
			return
		}
	}
}

// flush writes the outbox until it is empty, unless another goroutine is
// already doing so (it then sends what is pending too). It reports false
// once a write has failed and the connection is closing.
func (c *conn) flush() bool {
	c.mu.Lock()
	if c.flushing {
		c.mu.Unlock()
		return true
	}
	if c.closed && len(c.out) == 0 {
		c.mu.Unlock()
		return true
	}
	c.flushing = true
	for len(c.out) > 0 {
		buf, fds, fdAt, msgs, toks := c.out, c.outFDs, c.fdAt, c.outMsgs, c.outTokens
		c.out, c.outFDs, c.fdAt, c.outMsgs, c.outTokens = c.spare[:0], c.spareFDs[:0], c.spareFdAt[:0], c.spareMsgs[:0], c.spareToks[:0]
		need := c.outLSN
		c.outLSN = 0
		c.writing = len(buf)
		c.batch++
		batch := c.batch
		c.ackSending(toks, batch)
		c.cond.Broadcast()
		c.mu.Unlock()

		var err error
		if need > 0 {
			// Answers about durable queues go out once the records
			// they speak of are on disk; if that fails, none goes out.
			err = c.s.waitDurable(need)
		}
		if err == nil {
			err = c.write(buf, fds, fdAt)
		}
		// The pages among fds that are not msgs' are the deliveries'.
		ackPages := 0
		if err == nil && len(toks) > 0 {
			ackPages = len(fds)
			for _, m := range msgs {
				if m != nil && m.FD >= 0 {
					ackPages--
				}
			}
		}
		c.mu.Lock()
		c.ackWritten(batch, ackPages)
		c.mu.Unlock()
		if err == nil {
			c.sent(msgs)
		}
		for i, m := range msgs {
			if m != nil {
				m.Release()
				msgs[i] = nil
			}
		}
		if err != nil {
			if errors.Is(err, ErrDurable) {
				c.log.Error("answers withheld: the durable queues' log failed; closing connection", "err", err)
			} else if !isPeerGone(err) && !errors.Is(err, unix.EPIPE) {
				c.log.Warn("write failed; closing connection", "err", err)
			}
			c.uc.Close() // the reader notices and tears down
			c.mu.Lock()
			c.flushing = false
			c.writing = 0
			c.mu.Unlock()
			c.discardOutbox()
			return false
		}
		if c.info {
			c.log.Info("responded", "bytes", len(buf), "pages", len(fds))
		}
		c.mu.Lock()
		c.writing = 0
		c.spare, c.spareFDs, c.spareFdAt, c.spareMsgs, c.spareToks = buf[:0], fds[:0], fdAt[:0], msgs[:0], toks[:0]
	}
	c.flushing = false
	c.cond.Broadcast()
	resume := len(c.parked) > 0 && !c.closed
	c.mu.Unlock()
	if resume {
		c.resumeParked()
	}
	return true
}

// write sends buf; each frame carrying a page starts its own sendmsg.
func (c *conn) write(buf []byte, fds, fdAt []int) error {
	return wire.WriteFrames(c.uc, buf, fds, fdAt)
}

// discardOutbox drops responses that can no longer be sent, releasing
// their pages, and stops further queueing.
func (c *conn) discardOutbox() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for _, m := range c.outMsgs {
		m.Release()
	}
	// Deliveries in the outbox stay in c.acks: the teardown returns
	// them to their queues.
	c.out, c.outFDs, c.fdAt, c.outMsgs, c.outTokens = nil, nil, nil, nil, nil
	c.cond.Broadcast()
}
