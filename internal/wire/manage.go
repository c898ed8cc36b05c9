package wire

import (
	"encoding/binary"
	"fmt"
)

// QueueOp is the body of PEEK, PURGE and DELETE (version 3): a queue and,
// for PEEK, the index of the message to look at (0: the oldest in line).
type QueueOp struct {
	Index uint32 // PEEK only; MUST be 0 otherwise
	Queue []byte // empty: the private queue (PEEK and PURGE only)
}

// Dropped is the body of PURGED and DELETED: what the operation freed.
type Dropped struct {
	// Freed counts the messages freed at once: in line, and NAKed ones
	// waiting out a delay.
	Freed uint64
	// Pending counts the messages then pending with consumers: each is
	// freed if it comes back instead of being acknowledged.
	Pending uint64
}

const (
	queueOpFixed = 8
	droppedSize  = 16
)

// AppendQueueOp appends a PEEK, PURGE or DELETE frame (op) to b.
func AppendQueueOp(b []byte, op Op, id uint64, q QueueOp) []byte {
	b, st := begin(b, op, 0, 0, id)
	b = binary.LittleEndian.AppendUint32(b, q.Index)
	b = append(b, uint8(len(q.Queue)), 0, 0, 0)
	b = append(b, q.Queue...)
	return finish(b, st)
}

// ParseQueueOp decodes the body of a PEEK, PURGE or DELETE (op); Queue
// aliases body. Only a PEEK may carry an index.
func ParseQueueOp(op Op, body []byte) (QueueOp, error) {
	if len(body) < queueOpFixed {
		return QueueOp{}, fmt.Errorf("%w: %s body is %d bytes, want at least %d", ErrMalformed, op, len(body), queueOpFixed)
	}
	if body[5] != 0 || body[6] != 0 || body[7] != 0 {
		return QueueOp{}, fmt.Errorf("%w: %s reserved bytes are not 0", ErrMalformed, op)
	}
	if nl := int(body[4]); len(body)-queueOpFixed != nl {
		return QueueOp{}, fmt.Errorf("%w: %s declares a %d-byte queue name but carries %d bytes", ErrMalformed, op, nl, len(body)-queueOpFixed)
	}
	q := QueueOp{Index: binary.LittleEndian.Uint32(body), Queue: body[queueOpFixed:]}
	if q.Index != 0 && op != OpPeek {
		return QueueOp{}, fmt.Errorf("%w: %s carries an index; only PEEK may", ErrMalformed, op)
	}
	return q, nil
}

// AppendDropped appends a PURGED or DELETED frame (op) to b.
func AppendDropped(b []byte, op Op, id uint64, d Dropped) []byte {
	b, st := begin(b, op, 0, 0, id)
	b = binary.LittleEndian.AppendUint64(b, d.Freed)
	b = binary.LittleEndian.AppendUint64(b, d.Pending)
	return finish(b, st)
}

// ParseDropped decodes a PURGED or DELETED body.
func ParseDropped(body []byte) (Dropped, error) {
	if len(body) != droppedSize {
		return Dropped{}, fmt.Errorf("%w: PURGED/DELETED body is %d bytes, want %d", ErrMalformed, len(body), droppedSize)
	}
	return Dropped{Freed: binary.LittleEndian.Uint64(body), Pending: binary.LittleEndian.Uint64(body[8:])}, nil
}
