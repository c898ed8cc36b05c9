// Package delivery keeps what a consumer holds in ack mode: the
// deliveries sent to one connection and not yet settled, each named by a
// token, with the lease that bounds how long it may be held; and the
// policy that decides what becomes of a message put back (when a NAK
// brings it back, and when it has been delivered often enough to be a
// dead letter).
//
// A delivery goes through these states:
//
//	added ──Sending──▶ sending ──Settle──▶ gone (ACK, NAK, TERM)
//	  │                   │
//	  │                   ├──Expire (lease over)──▶ gone: back to its queue
//	  └──── TakeAll (connection ends) ────────────▶ gone: back to its queue
//
// A delivery still in the connection's outbox cannot be settled (the
// consumer cannot have seen it; a token it names is a guess) and has no
// lease running. Once it is handed to a write (Sending, with the number
// of that write's batch) the consumer may receive it and answer before
// the write returns: the server then waits for that batch's write to end
// before it frees or redelivers the message, since until then the write
// may still refer to its page. Freeing or redelivering it earlier would
// pass one page to two consumers, or a closed descriptor to one.
//
// A Set is not safe for concurrent use: the server guards each
// connection's with the connection's lock.
package delivery

import (
	"errors"
	"fmt"
	"time"

	"github.com/machq/machq/internal/queue"
)

// Errors of Settle.
var (
	// ErrUnknown: the token names no delivery pending here: it was
	// settled already, its lease ran out and it went back to its queue,
	// or it was never delivered on this connection.
	ErrUnknown = errors.New("delivery: token not pending on this connection")
	// ErrUnsent: the token names a delivery not yet written to the
	// consumer.
	ErrUnsent = errors.New("delivery: not yet sent to the consumer")
)

// Entry is one delivery in ack mode.
type Entry struct {
	Token uint64
	Queue *queue.Queue
	Msg   *queue.Message
	// Lease is how long the consumer may hold the message without
	// settling or touching it; 0 means no lease.
	Lease time.Duration
	// Batch numbers the write that carries the delivery's MESSAGE, once
	// it is sending.
	Batch   uint64
	written bool
	timer   *time.Timer
	expires time.Time
}

// Set is the deliveries one connection holds.
type Set struct {
	byToken map[uint64]*Entry
}

// Len returns the number of deliveries held.
func (s *Set) Len() int { return len(s.byToken) }

// Add records e, not yet written.
func (s *Set) Add(e *Entry) {
	if s.byToken == nil {
		s.byToken = make(map[uint64]*Entry)
	}
	s.byToken[e.Token] = e
}

// Sending records that the MESSAGE of the delivery token names is handed
// to the write numbered batch, and starts its lease: expire is called
// when the lease runs out (on a goroutine of its own), unless it is
// settled or touched first.
func (s *Set) Sending(token, batch uint64, expire func(*Entry)) {
	e := s.byToken[token]
	if e == nil || e.written {
		return
	}
	e.written = true
	e.Batch = batch
	if e.Lease > 0 {
		e.expires = time.Now().Add(e.Lease)
		e.timer = time.AfterFunc(e.Lease, func() { expire(e) })
	}
}

// lookup returns the written delivery token names.
func (s *Set) lookup(token uint64) (*Entry, error) {
	e := s.byToken[token]
	switch {
	case e == nil:
		return nil, ErrUnknown
	case !e.written:
		return nil, ErrUnsent
	}
	return e, nil
}

// Settle removes the written delivery token names and returns it: the
// caller acknowledges, NAKs or terminates it.
func (s *Set) Settle(token uint64) (*Entry, error) {
	e, err := s.lookup(token)
	if err != nil {
		return nil, err
	}
	s.remove(e)
	return e, nil
}

// Touch renews the lease of the written delivery token names and returns
// how long it now runs; 0 for a delivery without a lease.
func (s *Set) Touch(token uint64) (time.Duration, error) {
	e, err := s.lookup(token)
	if err != nil {
		return 0, err
	}
	if e.timer == nil {
		return 0, nil
	}
	e.timer.Reset(e.Lease)
	e.expires = time.Now().Add(e.Lease)
	return e.Lease, nil
}

// Renew starts e's lease again, if it has one and is still held.
func (s *Set) Renew(e *Entry) {
	if s.byToken[e.Token] == e && e.timer != nil {
		e.timer.Reset(e.Lease)
		e.expires = time.Now().Add(e.Lease)
	}
}

// Expire removes e if its lease has run out, and reports whether it did:
// a timer that fired just as the delivery was settled or touched finds it
// gone or renewed.
func (s *Set) Expire(e *Entry) bool {
	if s.byToken[e.Token] != e || e.timer == nil || time.Now().Before(e.expires) {
		return false
	}
	s.remove(e)
	return true
}

// TakeAll removes every delivery and returns them, for the connection's
// end.
func (s *Set) TakeAll() []*Entry {
	out := make([]*Entry, 0, len(s.byToken))
	for _, e := range s.byToken {
		s.remove(e)
		out = append(out, e)
	}
	return out
}

func (s *Set) remove(e *Entry) {
	delete(s.byToken, e.Token)
	if e.timer != nil {
		e.timer.Stop()
	}
}

// Policy decides what becomes of a message put back.
type Policy struct {
	// MaxDeliveries is how many times a message may be delivered in ack
	// mode: once it has been, a NAK, a lease running out or its
	// consumer's end make it a dead letter.
	MaxDeliveries uint32
	// Backoff is the delay of a NAK that asks for none after a message's
	// first delivery, doubled for each further one up to BackoffMax, so
	// that a message every consumer rejects cannot spin.
	Backoff, BackoffMax time.Duration
}

// Exhausted reports whether m has been delivered as many times as
// allowed.
func (p Policy) Exhausted(m *queue.Message) bool {
	return m.Deliveries >= p.MaxDeliveries
}

// NakDelay returns how long a message delivered deliveries times stays
// away after a NAK that asked for asked (0: none).
func (p Policy) NakDelay(deliveries uint32, asked time.Duration) time.Duration {
	if asked > 0 {
		return asked
	}
	d := p.Backoff
	for i := uint32(1); i < deliveries && d < p.BackoffMax; i++ {
		d *= 2
	}
	return min(d, p.BackoffMax)
}

// DeadLetterSuffix names a queue's dead-letter queue: Q's is Q.dlq.
const DeadLetterSuffix = ".dlq"

// MaxAckQueueName is the longest name of a queue read in ack mode: its
// dead-letter queue's name must be a queue name too.
const MaxAckQueueName = 255 - len(DeadLetterSuffix)

// DeadLetterQueue returns the name of the dead-letter queue of the
// named queue name.
func DeadLetterQueue(name string) (string, error) {
	if len(name) > MaxAckQueueName {
		return "", fmt.Errorf("queue name of %d bytes leaves no room for its dead-letter queue %s%s: a queue read in ack mode or kicked has a name of at most %d bytes", len(name), "NAME", DeadLetterSuffix, MaxAckQueueName)
	}
	return name + DeadLetterSuffix, nil
}
