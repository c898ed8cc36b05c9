package machq

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/machq/machq/internal/naming"
	"github.com/machq/machq/internal/wire"
)

// Retrieve takes the oldest message from queue ("" for the private queue)
// without waiting: an empty queue is an error wrapping ErrEmpty.
//
// The message is verified against the digest its sender computed and,
// for the private queue, against the digest this client recorded when it
// stored the message, as the original client did. On a mismatch Retrieve
// returns the message together with an error wrapping ErrTampered, so the
// caller can still inspect it; Close it either way.
func (c *Client) Retrieve(ctx context.Context, queue string) (*Message, error) {
	return c.retrieve(ctx, queue, 0, nil)
}

// RetrieveWait is Retrieve that waits for a message to arrive, until ctx
// ends. If none arrives by ctx's deadline it returns an error wrapping
// both ErrEmpty and context.DeadlineExceeded. When ctx ends the client
// cancels the wait and lets the server's answer decide (for up to a
// second): a message the server handed over meanwhile is returned, with
// no error, rather than lost. If the server does not answer in time, a
// message that comes later is not lost either: the next retrieve from the
// same queue on this Client returns it first.
func (c *Client) RetrieveWait(ctx context.Context, queue string) (*Message, error) {
	wait, hasDeadline := waitMillis(ctx)
	m, err := c.retrieve(ctx, queue, wait, nil)
	switch {
	case err == nil:
		return m, nil
	case hasDeadline && (errors.Is(err, ErrEmpty) || errors.Is(err, context.DeadlineExceeded)):
		// The server's timer and ctx's deadline end the wait at the same
		// moment; either way it is the same outcome.
		return nil, fmt.Errorf("%w: nothing arrived in queue %s before the deadline (%w)", ErrEmpty, queueLabel(queue), context.DeadlineExceeded)
	}
	return m, err
}

// waitMillis returns the wait_ms of a RETRIEVE that waits until ctx
// ends, and whether ctx has a deadline.
func waitMillis(ctx context.Context) (uint32, bool) {
	dl, ok := ctx.Deadline()
	if !ok {
		return wire.WaitForever, false
	}
	ms := time.Until(dl).Milliseconds()
	switch {
	case ms <= 0:
		ms = 1
	case ms >= int64(wire.WaitForever):
		ms = int64(wire.WaitForever - 1)
	}
	return uint32(ms), true
}

func queueLabel(q string) string {
	if q == "" {
		return "(private)"
	}
	return q
}

// retrieve takes a message from queue, waiting wait_ms (section 6.5 of
// docs/PROTOCOL.md), in ack mode when ack is not nil.
func (c *Client) retrieve(ctx context.Context, queue string, wait uint32, ack *wire.Retrieve) (*Message, error) {
	if err := checkQueue(queue); err != nil {
		return nil, err
	}
	key := orphanKey(queue, ack != nil)
	if ack != nil && len(ack.Group) > 0 {
		key += "\x00" + string(ack.Group)
	}
	var r result
	c.mu.Lock()
	if rs := c.orphans[key]; len(rs) > 0 {
		r = rs[0]
		c.orphans[key] = rs[1:]
	}
	c.mu.Unlock()

	if r.msg == nil {
		cl := &call{op: wire.OpRetrieve, queue: queue, ch: make(chan result, 1), waits: wait != 0, ack: ack != nil, orphan: key}
		id, err := c.register(ctx, cl)
		if err != nil {
			return nil, err
		}
		req := wire.Retrieve{WaitMillis: wait, Queue: []byte(queue), Owned: c.opts.owned}
		if ack != nil {
			req.Ack, req.LeaseMillis, req.Credit, req.Group = true, ack.LeaseMillis, ack.Credit, ack.Group
		}
		if err := c.enqueue(ctx, -1, func(b []byte) []byte { return wire.AppendRetrieve(b, id, req) }); err != nil {
			return nil, err
		}
		if r, err = c.wait(ctx, id, cl); err != nil {
			if errors.Is(err, ErrEmpty) || ctx.Err() != nil {
				// A message for an earlier retrieve that gave up may
				// have been read meanwhile: it is this one's.
				c.mu.Lock()
				if rs := c.orphans[key]; len(rs) > 0 {
					r, err = rs[0], nil
					c.orphans[key] = rs[1:]
				}
				c.mu.Unlock()
			}
			if err != nil {
				return nil, err
			}
		}
		// A message handed over for an earlier retrieve whose caller gave
		// up may have been read while this one waited: it is older, so
		// it goes first.
		c.mu.Lock()
		if rs := c.orphans[key]; len(rs) > 0 {
			c.orphans[key] = append(rs[1:], r)
			r = rs[0]
		}
		c.mu.Unlock()
	}
	if err := r.msg.load(); err != nil {
		r.msg.Close()
		return nil, err
	}
	return r.msg, r.msg.verify(r.expect)
}

// ValidQueueName reports whether name is a valid named-queue name: 1 to
// 255 characters from [A-Za-z0-9._-]. The error wraps ErrBadQueueName.
func ValidQueueName(name string) error {
	if err := naming.ValidQueueName([]byte(name)); err != nil {
		return fmt.Errorf("%w: %v", ErrBadQueueName, strings.TrimPrefix(err.Error(), naming.ErrBadName.Error()+": "))
	}
	return nil
}

func checkQueue(queue string) error {
	if queue == "" {
		return nil
	}
	return ValidQueueName(queue)
}
