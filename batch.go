package machq

import (
	"context"
	"errors"
	"fmt"

	"github.com/machq/machq/internal/wire"
)

// SendBatch stores each payload at the tail of queue ("" for the private
// queue), in order, as Send would, but sends all the requests in one
// write and then waits for all the acknowledgements: many small messages
// cost one round trip instead of one each.
//
// If some stores fail, the error joins one error per failed payload, each
// naming its index; the others were stored. If ctx ends first, SendBatch
// returns ctx's error; some payloads may have been stored.
func (c *Client) SendBatch(ctx context.Context, queue string, payloads [][]byte) error {
	if err := checkQueue(queue); err != nil {
		return err
	}
	fds := make([]int, len(payloads))
	for i, p := range payloads {
		fd, err := c.pageFor(p)
		if err != nil {
			for _, fd := range fds[:i] {
				closeFD(fd)
			}
			return fmt.Errorf("payload %d: %w", i, err)
		}
		fds[i] = fd
	}
	// One allocation each for the batch's calls and their digests.
	callv := make([]call, len(payloads))
	var sentv []sentDigest
	if queue == "" {
		sentv = make([]sentDigest, len(payloads))
	}
	calls := make([]*call, len(payloads))
	ids := make([]uint64, len(payloads))
	frames := make([]outFrame, len(payloads))
	qname := []byte(queue)
	for i, p := range payloads {
		sum, err := c.opts.digest.Sum(p)
		if err == nil {
			cl := &callv[i]
			*cl = call{op: wire.OpStore, queue: queue, ch: make(chan result, 1)}
			if queue == "" {
				sentv[i] = sentDigest{alg: uint8(c.opts.digest), digest: sum}
				cl.private = &sentv[i]
			}
			calls[i] = cl
			ids[i], err = c.register(ctx, cl)
		}
		if err != nil {
			for _, id := range ids[:i] {
				c.unregister(id)
			}
			for _, fd := range fds {
				closeFD(fd)
			}
			return err
		}
		st := wire.Store{Size: uint64(len(p)), DigestAlg: uint8(c.opts.digest), Digest: sum, Queue: qname, Owned: c.opts.owned}
		inline, fd := p, fds[i]
		if fd >= 0 {
			inline = nil
		}
		frames[i] = outFrame{fd: fd, op: wire.OpStore, id: ids[i], st: st, inline: inline, page: fd >= 0}
	}
	if err := c.enqueueFrames(ctx, frames); err != nil {
		return err
	}
	var errs []error
	for i, cl := range calls {
		if _, err := c.wait(ctx, ids[i], cl); err != nil {
			if ctx.Err() != nil {
				return err
			}
			errs = append(errs, fmt.Errorf("payload %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// RetrieveBatch takes up to n of the oldest messages from queue ("" for
// the private queue), in FIFO order, sending the n requests in one write:
// fewer come back when the queue runs empty, none at all is an error
// wrapping ErrEmpty. Every message is verified as Retrieve verifies it.
//
// The messages returned must be closed even when the error is not nil: a
// message that fails verification is returned with an error wrapping
// ErrTampered, and messages retrieved before an error are returned with it.
func (c *Client) RetrieveBatch(ctx context.Context, queue string, n int) ([]*Message, error) {
	if err := checkQueue(queue); err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, fmt.Errorf("machq: RetrieveBatch of %d messages; ask for at least 1", n)
	}
	got, short, err := c.retrieveBatch(ctx, queue, n, wire.Retrieve{Queue: []byte(queue), Owned: c.opts.owned}, queue, ErrEmpty)
	if err == nil && len(got) > 0 {
		// Messages for earlier retrieves that gave up, read meanwhile,
		// are older than these: they go first, and the newest beyond n
		// wait for the next retrieve.
		c.mu.Lock()
		if rs := c.orphans[queue]; len(rs) > 0 {
			got = append(append([]result(nil), rs...), got...)
			c.orphans[queue] = nil
			if len(got) > n {
				c.orphans[queue] = append(c.orphans[queue], got[n:]...)
				got = got[:n]
			}
		}
		c.mu.Unlock()
	}
	if len(got) == 0 && err == nil {
		if short == nil {
			short = fmt.Errorf("%w: queue %s is empty", ErrEmpty, queueLabel(queue))
		}
		return nil, short
	}
	return c.deliverBatch(got, err)
}

// retrieveBatch takes up to n messages from queue with RETRIEVEs like
// req, sent in one write, first those kept under the orphan key key. A
// RETRIEVE answered with an error wrapping one of the ends (the queue is
// empty, or the credit used up) only makes the batch short, and the first
// such error is returned as short; other errors are joined in err, with
// ctx's error if it ended (the answers of those that gave up are kept
// then, or returned if they came already).
func (c *Client) retrieveBatch(ctx context.Context, queue string, n int, req wire.Retrieve, key string, ends ...error) (got []result, short, err error) {
	c.mu.Lock()
	if rs := c.orphans[key]; len(rs) > 0 {
		k := min(n, len(rs))
		got = append(got, rs[:k]...)
		c.orphans[key] = rs[k:]
	}
	c.mu.Unlock()
	want := n - len(got)
	if want <= 0 {
		return got, nil, nil
	}
	callv := make([]call, want) // one allocation for the batch's calls
	calls := make([]*call, want)
	ids := make([]uint64, want)
	frames := make([]outFrame, want)
	for i := range calls {
		cl := &callv[i]
		*cl = call{op: wire.OpRetrieve, queue: queue, ch: make(chan result, 1), ack: req.Ack, orphan: key}
		id, err := c.register(ctx, cl)
		if err != nil {
			for _, id := range ids[:i] {
				c.unregister(id)
			}
			return got, nil, err
		}
		calls[i], ids[i] = cl, id
		frames[i] = outFrame{fd: -1, op: wire.OpRetrieve, id: id, req: req}
	}
	if err := c.enqueueFrames(ctx, frames); err != nil {
		return got, nil, err
	}
	var errs []error
	for i, cl := range calls {
		r, err := c.wait(ctx, ids[i], cl)
		switch {
		case err == nil:
			got = append(got, r)
		case ctx.Err() != nil:
			// The rest gave up too; what they receive is kept for the
			// next retrieve.
			for j := i + 1; j < len(calls); j++ {
				if r, err := c.wait(ctx, ids[j], calls[j]); err == nil && r.msg != nil {
					got = append(got, r) // arrived already: never dropped
				}
			}
			return got, nil, err
		case isAny(err, ends):
			if short == nil {
				short = err
			}
		default:
			errs = append(errs, err)
		}
	}
	return got, short, errors.Join(errs...)
}

// isAny reports whether err wraps one of targets.
func isAny(err error, targets []error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// deliverBatch loads and verifies the messages in rs and returns them
// with err and any verification failures.
func (c *Client) deliverBatch(rs []result, err error) ([]*Message, error) {
	errs := []error{err}
	msgs := make([]*Message, 0, len(rs))
	for _, r := range rs {
		if lerr := r.msg.load(); lerr != nil {
			r.msg.Close()
			errs = append(errs, lerr)
			continue
		}
		msgs = append(msgs, r.msg)
		errs = append(errs, r.msg.verify(r.expect))
	}
	return msgs, errors.Join(errs...)
}
