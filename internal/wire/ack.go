package wire

import (
	"encoding/binary"
	"fmt"
)

// Settle is the body of ACK, NAK, TOUCH and TERM (version 3): what a
// consumer says of a delivery it holds in ack mode.
type Settle struct {
	// Token names the delivery, as its MESSAGE carried it.
	Token uint64
	// DelayMillis, on a NAK only, is how long the message stays away
	// before it is back in its queue; 0 lets the server back off.
	DelayMillis uint32
	// Text, on a NAK or TERM only, says why (at most MaxNote bytes).
	Text []byte
}

// Outcome says what a settle did, in a SETTLED body.
type Outcome uint8

// Outcomes of ACK, NAK, TOUCH and TERM.
const (
	// OutcomeAcked: the message is done with and freed (ACK).
	OutcomeAcked Outcome = 0
	// OutcomeRequeued: the message goes back to its queue, at its
	// original place, after the delay (NAK).
	OutcomeRequeued Outcome = 1
	// OutcomeDeadLettered: the message moved to its queue's dead-letter
	// queue Q.dlq (TERM, or a NAK of its last allowed delivery).
	OutcomeDeadLettered Outcome = 2
	// OutcomeDropped: a private-queue message that would have been dead
	// lettered was freed: a private queue has no dead-letter queue.
	OutcomeDropped Outcome = 3
	// OutcomeTouched: the lease was renewed (TOUCH).
	OutcomeTouched Outcome = 4
)

// String names the outcome.
func (o Outcome) String() string {
	switch o {
	case OutcomeAcked:
		return "acked"
	case OutcomeRequeued:
		return "requeued"
	case OutcomeDeadLettered:
		return "dead-lettered"
	case OutcomeDropped:
		return "dropped"
	case OutcomeTouched:
		return "touched"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Settled is the body of a SETTLED frame, the answer to ACK, NAK, TOUCH
// and TERM.
type Settled struct {
	Outcome Outcome
	// LeaseMillis is the lease left from now, after a TOUCH; 0 when the
	// delivery has no lease or was settled.
	LeaseMillis uint32
}

// Kick is the body of a KICK frame (version 3): move up to Count dead
// letters of Queue (0: all) from Queue.dlq back to Queue.
type Kick struct {
	Count uint32
	Queue []byte
}

const (
	settleFixed = 16
	settledSize = 8
	kickFixed   = 8
	kickedSize  = 8
)

// IsSettle reports whether op is ACK, NAK, TOUCH or TERM.
func IsSettle(op Op) bool {
	return op == OpAck || op == OpNak || op == OpTouch || op == OpTerm
}

// AppendSettle appends an ACK, NAK, TOUCH or TERM frame (op) to b. The
// text is cut to MaxNote bytes.
func AppendSettle(b []byte, op Op, id uint64, s Settle) []byte {
	text := s.Text[:min(len(s.Text), MaxNote)]
	b, st := begin(b, op, 0, 0, id)
	b = binary.LittleEndian.AppendUint64(b, s.Token)
	b = binary.LittleEndian.AppendUint32(b, s.DelayMillis)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(text)))
	b = append(b, 0, 0)
	b = append(b, text...)
	return finish(b, st)
}

// ParseSettle decodes the body of an ACK, NAK, TOUCH or TERM (op). Only a
// NAK may carry a delay, and only a NAK or TERM a text; Text aliases body.
func ParseSettle(op Op, body []byte) (Settle, error) {
	if len(body) < settleFixed {
		return Settle{}, fmt.Errorf("%w: %s body is %d bytes, want at least %d", ErrMalformed, op, len(body), settleFixed)
	}
	s := Settle{
		Token:       binary.LittleEndian.Uint64(body),
		DelayMillis: binary.LittleEndian.Uint32(body[8:]),
	}
	tl := int(binary.LittleEndian.Uint16(body[12:]))
	switch {
	case body[14] != 0 || body[15] != 0:
		return Settle{}, fmt.Errorf("%w: %s reserved bytes are not 0", ErrMalformed, op)
	case tl > MaxNote:
		return Settle{}, fmt.Errorf("%w: %s text of %d bytes exceeds %d", ErrMalformed, op, tl, MaxNote)
	case len(body)-settleFixed != tl:
		return Settle{}, fmt.Errorf("%w: %s declares a %d-byte text but carries %d bytes", ErrMalformed, op, tl, len(body)-settleFixed)
	case s.DelayMillis != 0 && op != OpNak:
		return Settle{}, fmt.Errorf("%w: %s carries a delay; only NAK may", ErrMalformed, op)
	case tl != 0 && op != OpNak && op != OpTerm:
		return Settle{}, fmt.Errorf("%w: %s carries a text; only NAK and TERM may", ErrMalformed, op)
	}
	s.Text = body[settleFixed:]
	return s, nil
}

// AppendSettled appends a SETTLED frame to b.
func AppendSettled(b []byte, id uint64, s Settled) []byte {
	b, st := begin(b, OpSettled, 0, 0, id)
	b = append(b, uint8(s.Outcome), 0, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, s.LeaseMillis)
	return finish(b, st)
}

// ParseSettled decodes a SETTLED body.
func ParseSettled(body []byte) (Settled, error) {
	if len(body) != settledSize {
		return Settled{}, fmt.Errorf("%w: SETTLED body is %d bytes, want %d", ErrMalformed, len(body), settledSize)
	}
	return Settled{Outcome: Outcome(body[0]), LeaseMillis: binary.LittleEndian.Uint32(body[4:])}, nil
}

// AppendKick appends a KICK frame to b.
func AppendKick(b []byte, id uint64, k Kick) []byte {
	b, st := begin(b, OpKick, 0, 0, id)
	b = binary.LittleEndian.AppendUint32(b, k.Count)
	b = append(b, uint8(len(k.Queue)), 0, 0, 0)
	b = append(b, k.Queue...)
	return finish(b, st)
}

// ParseKick decodes a KICK body; Queue aliases body.
func ParseKick(body []byte) (Kick, error) {
	if len(body) < kickFixed {
		return Kick{}, fmt.Errorf("%w: KICK body is %d bytes, want at least %d", ErrMalformed, len(body), kickFixed)
	}
	if body[5] != 0 || body[6] != 0 || body[7] != 0 {
		return Kick{}, fmt.Errorf("%w: KICK reserved bytes are not 0", ErrMalformed)
	}
	if nl := int(body[4]); len(body)-kickFixed != nl {
		return Kick{}, fmt.Errorf("%w: KICK declares a %d-byte queue name but carries %d bytes", ErrMalformed, nl, len(body)-kickFixed)
	}
	return Kick{Count: binary.LittleEndian.Uint32(body), Queue: body[kickFixed:]}, nil
}

// AppendKicked appends a KICKED frame, the answer to KICK, to b: how many
// dead letters moved.
func AppendKicked(b []byte, id uint64, moved uint32) []byte {
	b, st := begin(b, OpKicked, 0, 0, id)
	b = binary.LittleEndian.AppendUint32(b, moved)
	b = append(b, 0, 0, 0, 0)
	return finish(b, st)
}

// ParseKicked decodes a KICKED body into the number of messages moved.
func ParseKicked(body []byte) (uint32, error) {
	if len(body) != kickedSize {
		return 0, fmt.Errorf("%w: KICKED body is %d bytes, want %d", ErrMalformed, len(body), kickedSize)
	}
	return binary.LittleEndian.Uint32(body), nil
}
