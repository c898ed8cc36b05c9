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

// Config is the body of a CONFIG frame (version 3): a named queue's own
// acknowledged-delivery settings.
type Config struct {
	// MaxDeliveries is how many deliveries in ack mode a message of the
	// queue may have before it becomes a dead letter; 0: the server's.
	MaxDeliveries uint32
	// LeaseMillis is the lease of an ack-mode RETRIEVE of the queue that
	// asks for none; 0: the server's default, NoLease: none.
	LeaseMillis uint32
	Queue       []byte
}

const configFixed = 16

// AppendConfig appends a CONFIG frame to b.
func AppendConfig(b []byte, id uint64, c Config) []byte {
	b, st := begin(b, OpConfig, 0, 0, id)
	b = binary.LittleEndian.AppendUint32(b, c.MaxDeliveries)
	b = binary.LittleEndian.AppendUint32(b, c.LeaseMillis)
	b = append(b, uint8(len(c.Queue)), 0, 0, 0, 0, 0, 0, 0)
	b = append(b, c.Queue...)
	return finish(b, st)
}

// ParseConfig decodes a CONFIG body; Queue aliases body.
func ParseConfig(body []byte) (Config, error) {
	if len(body) < configFixed {
		return Config{}, fmt.Errorf("%w: CONFIG body is %d bytes, want at least %d", ErrMalformed, len(body), configFixed)
	}
	for _, r := range body[9:configFixed] {
		if r != 0 {
			return Config{}, fmt.Errorf("%w: CONFIG reserved bytes are not 0", ErrMalformed)
		}
	}
	if nl := int(body[8]); len(body)-configFixed != nl {
		return Config{}, fmt.Errorf("%w: CONFIG declares a %d-byte queue name but carries %d bytes", ErrMalformed, nl, len(body)-configFixed)
	}
	return Config{
		MaxDeliveries: binary.LittleEndian.Uint32(body),
		LeaseMillis:   binary.LittleEndian.Uint32(body[4:]),
		Queue:         body[configFixed:],
	}, nil
}

// AppendConfigured appends a CONFIGURED frame, the answer to CONFIG, to b.
func AppendConfigured(b []byte, id uint64) []byte {
	b, st := begin(b, OpConfigured, 0, 0, id)
	return finish(b, st)
}
