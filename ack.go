package machq

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/machq/machq/internal/wire"
)

// ackInfo is what a delivery in ack mode carries besides the message.
type ackInfo struct {
	token      uint64
	deliveries uint32
	dead       DeadReason
	note       string
	diedAfter  uint32
}

// DeadReason says why a message is a dead letter.
type DeadReason uint8

// Dead-letter reasons.
const (
	// NotDead: the message is not a dead letter.
	NotDead DeadReason = DeadReason(wire.DeadNone)
	// DeadTerminated: a consumer gave up on it (Delivery.Term).
	DeadTerminated DeadReason = DeadReason(wire.DeadTerm)
	// DeadMaxDeliveries: it was delivered as many times as the server
	// allows (machqd --max-deliveries) without being acknowledged.
	DeadMaxDeliveries DeadReason = DeadReason(wire.DeadMaxDeliveries)
)

// String names the reason.
func (r DeadReason) String() string {
	switch r {
	case NotDead:
		return "not dead"
	case DeadTerminated:
		return "terminated"
	case DeadMaxDeliveries:
		return "max deliveries"
	}
	return fmt.Sprintf("DeadReason(%d)", uint8(r))
}

// Outcome says what settling a delivery did.
type Outcome uint8

// Outcomes of Ack, Nak, Touch and Term.
const (
	// Acked: the message is done with and freed.
	Acked Outcome = Outcome(wire.OutcomeAcked)
	// Requeued: the message goes back to its queue, at its original
	// place, after the delay.
	Requeued Outcome = Outcome(wire.OutcomeRequeued)
	// DeadLettered: the message moved to its queue's dead-letter queue
	// (Q.dlq), where Kick can bring it back from.
	DeadLettered Outcome = Outcome(wire.OutcomeDeadLettered)
	// Dropped: a private-queue message that would have become a dead
	// letter was freed: a private queue has no dead-letter queue.
	Dropped Outcome = Outcome(wire.OutcomeDropped)
	// Touched: the lease was renewed.
	Touched Outcome = Outcome(wire.OutcomeTouched)
)

// String names the outcome, such as "dead-lettered".
func (o Outcome) String() string { return wire.Outcome(o).String() }

// ErrStale: a delivery could not be settled because the server no longer
// holds it for this client: its lease ran out and the message went back
// to its queue (it may have been delivered again, to this client or
// another, under a new token), or it was settled already. Acting on a
// stale delivery never settles anyone else's.
var ErrStale = errors.New("machq: delivery no longer pending")

// ErrUnsupported: the server speaks an older protocol version without the
// operation asked for; upgrade it.
var ErrUnsupported = errors.New("machq: operation not supported by the server")

// ErrNoGroup: the queue has no consumer group of that name; create it
// with CreateGroup.
var ErrNoGroup = errors.New("machq: no such consumer group")

// AckOptions tune a retrieve in ack mode. The zero value (or nil) takes
// the server's defaults.
type AckOptions struct {
	// Lease bounds how long the message may be held without being
	// settled or touched: once it runs out, the server takes the message
	// back and hands it to the next consumer, and settling it fails with
	// ErrStale. 0 takes the server's default (machqd --ack-lease; none
	// unless set); a negative value asks for no lease at all. It is
	// rounded down to milliseconds, at least 1.
	Lease time.Duration
	// Credit is the most unsettled deliveries this connection may hold
	// for the retrieve to be served: a waiting retrieve waits for
	// credit as well as for a message, and one that does not wait fails
	// with ErrLimit when the credit is used up. 0 takes the server's
	// maximum (machqd --max-pending), which also caps it.
	Credit int
	// Group takes the message through the queue's consumer group of that
	// name (see CreateGroup): each group receives every message, and its
	// consumers compete for them. Empty: the queue itself.
	Group string
}

// wire returns the ack-mode fields of a RETRIEVE for o.
func (o *AckOptions) wire() *wire.Retrieve {
	r := &wire.Retrieve{Ack: true}
	if o == nil {
		return r
	}
	switch {
	case o.Lease < 0:
		r.LeaseMillis = wire.NoLease
	case o.Lease > 0:
		r.LeaseMillis = uint32(min(max(o.Lease.Milliseconds(), 1), int64(wire.NoLease-1)))
	}
	if o.Credit > 0 {
		r.Credit = uint32(min(o.Credit, 1<<30))
	}
	r.Group = []byte(o.Group)
	return r
}

// Delivery is a message taken in ack mode (Reserve, ReserveWait): it
// stays pending with this client until settled with Ack, Nak or Term. If
// the connection ends first (Close, a crash, SIGKILL), or its lease runs
// out, the server puts the message back at its original place in its
// queue at once, for the next consumer. Settle a Delivery once; Close
// its Message (which Ack, Nak and Term do not) when done reading it.
type Delivery struct {
	*Message
	c       *Client
	settled bool
	outcome Outcome
}

// Token names this delivery attempt: each delivery of a message, and
// each redelivery, has its own.
func (d *Delivery) Token() uint64 { return d.ack.token }

// Outcome returns what the settle did, once Ack, Nak or Term succeeded.
func (d *Delivery) Outcome() Outcome { return d.outcome }

// Ack acknowledges the delivery: the message is done with and the server
// frees it. It fails with ErrStale if the server took the message back
// (its lease ran out).
func (d *Delivery) Ack(ctx context.Context) error {
	return d.settle(ctx, wire.OpAck, wire.Settle{})
}

// Nak puts the message back at its original place in its queue, after
// delay; with delay 0 the server chooses a delay that grows with each
// delivery (machqd --nak-backoff), so that a message nobody can handle
// does not spin. reason (at most 512 bytes) travels with the message,
// and with it into the dead-letter queue if this was its last allowed
// delivery (Outcome then reports DeadLettered).
func (d *Delivery) Nak(ctx context.Context, delay time.Duration, reason string) error {
	ms := uint32(0)
	if delay > 0 {
		ms = uint32(min(max(delay.Milliseconds(), 1), int64(^uint32(0))))
	}
	return d.settle(ctx, wire.OpNak, wire.Settle{DelayMillis: ms, Text: []byte(reason)})
}

// Term makes the message a dead letter at once: it moves to its queue's
// dead-letter queue (Q.dlq) with reason (at most 512 bytes). A message
// of the private queue, which has none, is freed (Outcome Dropped).
func (d *Delivery) Term(ctx context.Context, reason string) error {
	return d.settle(ctx, wire.OpTerm, wire.Settle{Text: []byte(reason)})
}

// Touch tells the server the message is still being worked on: its lease
// starts again, and Touch returns how long it now runs (0 for a
// delivery without a lease).
func (d *Delivery) Touch(ctx context.Context) (time.Duration, error) {
	r, err := d.c.roundTrip(ctx, wire.OpTouch, func(b []byte, id uint64) []byte {
		return wire.AppendSettle(b, wire.OpTouch, id, wire.Settle{Token: d.ack.token})
	})
	if err != nil {
		return 0, d.settleErr(err)
	}
	return time.Duration(r.settled.LeaseMillis) * time.Millisecond, nil
}

func (d *Delivery) settle(ctx context.Context, op wire.Op, s wire.Settle) error {
	if d.settled {
		return fmt.Errorf("%w: delivery %d was settled already (%s)", ErrStale, d.ack.token, d.outcome)
	}
	s.Token = d.ack.token
	r, err := d.c.roundTrip(ctx, op, func(b []byte, id uint64) []byte { return wire.AppendSettle(b, op, id, s) })
	if err != nil {
		return d.settleErr(err)
	}
	d.settled, d.outcome = true, Outcome(r.settled.Outcome)
	if d.Queue == "" && d.outcome != Requeued {
		d.c.forgetPrivate(d.Seq)
	}
	return nil
}

func (d *Delivery) settleErr(err error) error {
	if errors.Is(err, ErrStale) {
		d.settled = true
	}
	return err
}

// roundTrip sends one request of version 3 without a descriptor, encoded
// by encode, and waits for its answer.
func (c *Client) roundTrip(ctx context.Context, op wire.Op, encode func(b []byte, id uint64) []byte) (result, error) {
	return c.roundTripCall(ctx, &call{op: op, ch: make(chan result, 1)}, encode)
}

// roundTripCall is roundTrip for a call prepared by the caller.
func (c *Client) roundTripCall(ctx context.Context, cl *call, encode func(b []byte, id uint64) []byte) (result, error) {
	if c.welcome.Version < wire.VersionAck {
		return result{}, fmt.Errorf("%w: %s needs protocol version %d; the server at %s speaks %d", ErrUnsupported, cl.op, wire.VersionAck, c.path, c.welcome.Version)
	}
	id, err := c.register(ctx, cl)
	if err != nil {
		return result{}, err
	}
	if err := c.enqueue(ctx, -1, func(b []byte) []byte { return encode(b, id) }); err != nil {
		return result{}, err
	}
	return c.wait(ctx, id, cl)
}

// Reserve takes the oldest message of queue ("" for the private queue)
// in ack mode, without waiting: an empty queue is an error wrapping
// ErrEmpty. The message stays pending with this client until the
// Delivery is settled; see Delivery. o may be nil.
//
// The message is verified as Retrieve verifies it; on a mismatch Reserve
// returns the Delivery together with an error wrapping ErrTampered, so
// that the caller can Nak it (another consumer may be able to verify it)
// or Term it, rather than lose it.
func (c *Client) Reserve(ctx context.Context, queue string, o *AckOptions) (*Delivery, error) {
	return c.reserve(ctx, queue, 0, o)
}

// ReserveWait is Reserve that waits, until ctx ends, for a message to
// arrive and for the credit to take it. As with RetrieveWait, a message
// handed over just as ctx ends is not lost: it stays pending with this
// client, and the next ReserveWait of the same queue returns it first.
func (c *Client) ReserveWait(ctx context.Context, queue string, o *AckOptions) (*Delivery, error) {
	wait, hasDeadline := waitMillis(ctx)
	d, err := c.reserve(ctx, queue, wait, o)
	if err != nil && d == nil && hasDeadline && (errors.Is(err, ErrEmpty) || errors.Is(err, context.DeadlineExceeded)) {
		return nil, fmt.Errorf("%w: nothing arrived in queue %s before the deadline (%w)", ErrEmpty, queueLabel(queue), context.DeadlineExceeded)
	}
	return d, err
}

func (c *Client) reserve(ctx context.Context, queue string, wait uint32, o *AckOptions) (*Delivery, error) {
	if o != nil && o.Group != "" {
		if queue == "" {
			return nil, fmt.Errorf("%w: a private queue has no consumer groups", ErrBadQueueName)
		}
		if err := ValidQueueName(o.Group); err != nil {
			return nil, fmt.Errorf("group name: %w", err)
		}
	}
	if c.welcome.Version < wire.VersionAck {
		return nil, fmt.Errorf("%w: ack mode needs protocol version %d; the server at %s speaks %d", ErrUnsupported, wire.VersionAck, c.path, c.welcome.Version)
	}
	m, err := c.retrieve(ctx, queue, wait, o.wire())
	if m == nil {
		return nil, err
	}
	return &Delivery{Message: m, c: c}, err
}

// Kick moves up to n dead letters (all of them when n <= 0) from queue's
// dead-letter queue (queue.dlq) back to queue, each at its original place
// in the order with a fresh delivery count, and returns how many moved.
func (c *Client) Kick(ctx context.Context, queue string, n int) (int, error) {
	if err := ValidQueueName(queue); err != nil {
		return 0, err
	}
	k := wire.Kick{Queue: []byte(queue)}
	if n > 0 {
		k.Count = uint32(min(n, int(^uint32(0)>>1)))
	}
	r, err := c.roundTrip(ctx, wire.OpKick, func(b []byte, id uint64) []byte { return wire.AppendKick(b, id, k) })
	if err != nil {
		return 0, err
	}
	return int(r.kicked), nil
}

// CreateGroup gives queue a consumer group called group (a name with the
// rules of queue names), creating the queue if need be: from then on,
// every message stored into queue goes to each of its groups, and is
// freed once every group has acknowledged it; consumers take messages
// through a group with AckOptions.Group, competing for them within it.
// With fromOldest the group also takes every message in line in the
// queue (those in its own line, which leave it, and those in the other
// groups' lines, each once; not those pending with other groups'
// consumers), returned as adopted. created is false if the group existed
// already (nothing changes then). Each group's copy of a message counts
// as one message against its storer's quotas.
func (c *Client) CreateGroup(ctx context.Context, queue, group string, fromOldest bool) (adopted int, created bool, err error) {
	if err := ValidQueueName(queue); err != nil {
		return 0, false, err
	}
	if err := ValidQueueName(group); err != nil {
		return 0, false, fmt.Errorf("group name: %w", err)
	}
	action := wire.GroupCreate
	if fromOldest {
		action = wire.GroupCreateFromOldest
	}
	r, err := c.groupRequest(ctx, wire.Group{Action: action, Queue: []byte(queue), Group: []byte(group)})
	return int(r.Count), r.Changed, err
}

// DeleteGroup removes the consumer group called group of queue: the
// messages in its line are freed at once (unless other groups still hold
// them), those pending with its consumers when they come back
// unacknowledged; consumers waiting on it get an error wrapping
// ErrCancelled. Deleting a group that does not exist succeeds with
// nothing freed.
func (c *Client) DeleteGroup(ctx context.Context, queue, group string) (Purged, error) {
	if err := ValidQueueName(queue); err != nil {
		return Purged{}, err
	}
	if err := ValidQueueName(group); err != nil {
		return Purged{}, fmt.Errorf("group name: %w", err)
	}
	r, err := c.groupRequest(ctx, wire.Group{Action: wire.GroupDelete, Queue: []byte(queue), Group: []byte(group)})
	return Purged{Freed: int64(r.Count), Pending: int64(r.Pending)}, err
}

func (c *Client) groupRequest(ctx context.Context, g wire.Group) (wire.Grouped, error) {
	r, err := c.roundTrip(ctx, wire.OpGroup, func(b []byte, id uint64) []byte {
		start := len(b)
		b = wire.AppendGroup(b, id, g)
		if c.opts.owned {
			// A queue this creates is the client's user's alone, as a
			// store would make it.
			b[start+5] |= wire.FlagOwned
		}
		return b
	})
	return r.grouped, err
}

// ReserveBatch takes up to n of the oldest messages of queue in ack mode,
// as Reserve would, sending the n requests in one write: fewer come back
// when the queue runs empty or the credit (o.Credit, machqd
// --max-pending) is used up; none at all is that error (wrapping ErrEmpty
// or ErrLimit). Every message is verified as Retrieve verifies it; the
// Deliveries returned must be settled and closed even when the error is
// not nil (one that fails verification comes back with an error wrapping
// ErrTampered).
func (c *Client) ReserveBatch(ctx context.Context, queue string, n int, o *AckOptions) ([]*Delivery, error) {
	if err := checkQueue(queue); err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, fmt.Errorf("machq: ReserveBatch of %d messages; ask for at least 1", n)
	}
	if c.welcome.Version < wire.VersionAck {
		return nil, fmt.Errorf("%w: ack mode needs protocol version %d; the server at %s speaks %d", ErrUnsupported, wire.VersionAck, c.path, c.welcome.Version)
	}
	req := o.wire()
	req.Queue, req.Owned = []byte(queue), c.opts.owned
	key := orphanKey(queue, true)
	if len(req.Group) > 0 {
		key += "\x00" + string(req.Group)
	}
	got, short, err := c.retrieveBatch(ctx, queue, n, *req, key, ErrEmpty, ErrLimit)
	if len(got) == 0 && err == nil {
		return nil, short
	}
	return c.deliverDeliveries(got, err)
}

// deliverDeliveries is deliverBatch for ack-mode messages.
func (c *Client) deliverDeliveries(rs []result, err error) ([]*Delivery, error) {
	msgs, err := c.deliverBatch(rs, err)
	ds := make([]*Delivery, len(msgs))
	for i, m := range msgs {
		ds[i] = &Delivery{Message: m, c: c}
	}
	return ds, err
}

// AckBatch acknowledges every delivery of ds taken on this client, as
// Ack would, in one write and one wait for all the answers. The error
// joins one error per delivery that could not be acknowledged, naming its
// index; the others were.
func (c *Client) AckBatch(ctx context.Context, ds []*Delivery) error {
	if c.welcome.Version < wire.VersionAck {
		return fmt.Errorf("%w: ack mode needs protocol version %d; the server at %s speaks %d", ErrUnsupported, wire.VersionAck, c.path, c.welcome.Version)
	}
	calls := make([]*call, len(ds))
	ids := make([]uint64, len(ds))
	var frames []outFrame
	var errs []error
	for i, d := range ds {
		switch {
		case d.c != c:
			errs = append(errs, fmt.Errorf("delivery %d: taken on another client", i))
			continue
		case d.settled:
			errs = append(errs, fmt.Errorf("delivery %d: %w: settled already (%s)", i, ErrStale, d.outcome))
			continue
		}
		cl := &call{op: wire.OpAck, ch: make(chan result, 1)}
		id, err := c.register(ctx, cl)
		if err != nil {
			for _, id := range ids[:i] {
				if id != 0 {
					c.unregister(id)
				}
			}
			return err
		}
		calls[i], ids[i] = cl, id
		s := wire.Settle{Token: d.ack.token}
		frames = append(frames, outFrame{fd: -1, encode: func(b []byte) []byte { return wire.AppendSettle(b, wire.OpAck, id, s) }})
	}
	if len(frames) > 0 {
		if err := c.enqueueFrames(ctx, frames); err != nil {
			return err
		}
	}
	for i, cl := range calls {
		if cl == nil {
			continue
		}
		r, err := c.wait(ctx, ids[i], cl)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			errs = append(errs, fmt.Errorf("delivery %d: %w", i, ds[i].settleErr(err)))
			continue
		}
		d := ds[i]
		d.settled, d.outcome = true, Outcome(r.settled.Outcome)
		if d.Queue == "" {
			d.c.forgetPrivate(d.Seq)
		}
	}
	return errors.Join(errs...)
}
