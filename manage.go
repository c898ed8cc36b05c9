package machq

import (
	"context"
	"fmt"
	"time"

	"github.com/machq/machq/internal/wire"
)

// Peek returns a copy of the message at index i in line in queue ("" for
// the private queue; 0: the oldest), without taking it: an index past the
// messages in line is an error wrapping ErrEmpty. A page is the same
// sealed memfd, mapped read-only as Retrieve maps it; Close the Message
// when done. Its Deliveries, DeadReason, DiedAfter and Note say how it
// fared so far. It is verified as Retrieve verifies it. Messages pending
// with consumers, or NAKed and waiting out a delay, are not in line.
func (c *Client) Peek(ctx context.Context, queue string, i int) (*Message, error) {
	if err := checkQueue(queue); err != nil {
		return nil, err
	}
	if i < 0 || int64(i) > int64(^uint32(0)) {
		return nil, fmt.Errorf("machq: peek index %d is outside [0, %d]", i, ^uint32(0))
	}
	op := wire.QueueOp{Index: uint32(i), Queue: []byte(queue)}
	r, err := c.roundTripCall(ctx, &call{op: wire.OpPeek, queue: queue, ack: true, ch: make(chan result, 1)},
		func(b []byte, id uint64) []byte { return wire.AppendQueueOp(b, wire.OpPeek, id, op) })
	if r.msg == nil {
		return nil, err
	}
	if err := r.msg.load(); err != nil {
		r.msg.Close()
		return nil, err
	}
	return r.msg, r.msg.verify(r.expect)
}

// Purged is what Purge and Delete freed.
type Purged struct {
	// Freed counts the messages freed at once: those in line, and those
	// NAKed and waiting out a delay.
	Freed int64
	// Pending counts the messages then pending with consumers in ack
	// mode: each is freed when it comes back unacknowledged (an
	// acknowledgement still settles it).
	Pending int64
}

// Purge frees every message of queue ("" for the private queue): those
// in line and those waiting out a NAK's delay at once, those pending
// with consumers when they come back unacknowledged. Consumers waiting
// on the queue go on waiting.
func (c *Client) Purge(ctx context.Context, queue string) (Purged, error) {
	return c.dropQueue(ctx, wire.OpPurge, queue)
}

// Delete removes the named queue with everything it holds, as Purge
// frees it; consumers waiting on it get an error wrapping ErrCancelled,
// and its name is free for anyone to create again (an owned queue may be
// deleted only by its owner or root). Deleting a queue that does not
// exist succeeds with nothing dropped.
func (c *Client) Delete(ctx context.Context, queue string) (Purged, error) {
	if err := ValidQueueName(queue); err != nil {
		return Purged{}, err
	}
	return c.dropQueue(ctx, wire.OpDelete, queue)
}

func (c *Client) dropQueue(ctx context.Context, op wire.Op, queue string) (Purged, error) {
	if err := checkQueue(queue); err != nil {
		return Purged{}, err
	}
	q := wire.QueueOp{Queue: []byte(queue)}
	r, err := c.roundTrip(ctx, op, func(b []byte, id uint64) []byte { return wire.AppendQueueOp(b, op, id, q) })
	if err != nil {
		return Purged{}, err
	}
	return Purged{Freed: int64(r.dropped.Freed), Pending: int64(r.dropped.Pending)}, nil
}

// QueueConfig is a named queue's own acknowledged-delivery settings.
type QueueConfig struct {
	// MaxDeliveries is how many deliveries in ack mode a message may have
	// before it becomes a dead letter; 0 takes the server's
	// (--max-deliveries).
	MaxDeliveries int
	// Lease is the lease of a Reserve of the queue that asks for none; 0
	// takes the server's (--ack-lease); a negative value means none.
	Lease time.Duration
}

// Configure sets queue's own acknowledged-delivery settings (its consumer
// groups share them), creating the queue if need be; they last as long
// as the queue and replace any set before.
func (c *Client) Configure(ctx context.Context, queue string, cfg QueueConfig) error {
	if err := ValidQueueName(queue); err != nil {
		return err
	}
	if cfg.MaxDeliveries < 0 {
		return fmt.Errorf("machq: MaxDeliveries %d is negative", cfg.MaxDeliveries)
	}
	w := wire.Config{MaxDeliveries: uint32(min(cfg.MaxDeliveries, 1<<31)), Queue: []byte(queue)}
	switch {
	case cfg.Lease < 0:
		w.LeaseMillis = wire.NoLease
	case cfg.Lease > 0:
		w.LeaseMillis = uint32(min(max(cfg.Lease.Milliseconds(), 1), int64(wire.NoLease-1)))
	}
	_, err := c.roundTrip(ctx, wire.OpConfig, func(b []byte, id uint64) []byte {
		start := len(b)
		b = wire.AppendConfig(b, id, w)
		if c.opts.owned {
			b[start+5] |= wire.FlagOwned
		}
		return b
	})
	return err
}
