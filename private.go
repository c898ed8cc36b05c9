package machq

// sentDigest is the client-side record of one message stored in the
// private queue, the original's per-client digest FIFO.
type sentDigest struct {
	seq    uint64
	alg    uint8
	digest []byte
	// out: the message was delivered in ack mode and not yet settled:
	// it may come back, at its place or later, without breaking the
	// FIFO.
	out bool
}

// expectPrivate returns the record of the private-queue message seq, or
// nil if the server may not hand that message over now. The private
// queue is this connection's alone: a message it hands over must be the
// oldest this client stored and has not received (FIFO), or one
// delivered before in ack mode and not settled, which comes back at its
// place or after a delay. A message received in ack mode keeps its
// record, marked out, until it is settled (forgetPrivate); one received
// plainly gives its record up.
func (c *Client) expectPrivate(seq uint64, ack bool) *sentDigest {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.private {
		e := &c.private[i]
		if e.seq != seq {
			if !e.out {
				return nil // an older message has not come yet
			}
			continue
		}
		rec := *e
		if ack {
			e.out = true
		} else {
			c.private = append(c.private[:i], c.private[i+1:]...)
		}
		return &rec
	}
	return nil
}

// lookPrivate returns the record of the private-queue message seq, for a
// PEEK, which takes nothing: nil if this client never stored it.
func (c *Client) lookPrivate(seq uint64) *sentDigest {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.private {
		if e.seq == seq {
			return &e
		}
	}
	return nil
}

// forgetPrivate drops the record of the private-queue message seq, once
// it is settled for good.
func (c *Client) forgetPrivate(seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.private {
		if c.private[i].seq == seq {
			c.private = append(c.private[:i], c.private[i+1:]...)
			return
		}
	}
}
