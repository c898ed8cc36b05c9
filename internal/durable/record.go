package durable

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Record types of the durable queues in the journal (docs/STORAGE.md,
// "Queue records").
const (
	// TypeStore: a message stored in a queue (or copied forward by
	// compaction: the same queue and id again, replacing the earlier).
	TypeStore uint8 = 1
	// TypeTake: a message gone from its queue (retrieved, acknowledged,
	// purged, moved to a dead-letter queue).
	TypeTake uint8 = 2
	// TypeDeliver: a message handed to a consumer in ack mode and not
	// yet settled; after a restart it comes back marked redelivered.
	TypeDeliver uint8 = 3
	// TypeDrop: a queue deleted, with every message in it.
	TypeDrop uint8 = 4
	// TypePurge: every message of a queue with an id below a bound gone.
	TypePurge uint8 = 5
)

// maxName is the longest queue name (naming.MaxName).
const maxName = 255

// ErrBadRecord: a journal record that the journal's checksum passed but
// that does not decode as a queue record: written by another program or
// a later version.
var ErrBadRecord = errors.New("durable: record does not decode")

// Op is one decoded queue record.
type Op struct {
	Type  uint8
	Queue string
	// ID is the message (Store, Take, Deliver) or the bound (Purge: ids
	// below it are gone).
	ID uint64
	// Deliveries is how often the message was delivered before it was
	// stored or copied forward (Store).
	Deliveries uint32
	// Payload is the message's bytes (Store of an inline message).
	Payload []byte
	// File names the payload file of a page message in the data
	// directory's payloads/ (Store with flag FlagFile), Size its bytes.
	File string
	Size int64
}

// FlagFile marks a Store whose payload is in a file of payloads/.
const FlagFile = 1

// validFile reports whether name can be a payload file's name: 1 to 64
// bytes of 0-9, a-z and '.', not beginning with '.': never a path.
func validFile(name string) bool {
	if name == "" || len(name) > 64 || name[0] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || c == '.') {
			return false
		}
	}
	return true
}

// encode appends op's record data to b.
func encode(b []byte, op Op) []byte {
	b = append(b, byte(len(op.Queue)))
	b = append(b, op.Queue...)
	if op.Type == TypeDrop {
		return b
	}
	b = binary.LittleEndian.AppendUint64(b, op.ID)
	if op.Type != TypeStore {
		return b
	}
	if op.File != "" {
		b = append(b, FlagFile)
		b = binary.LittleEndian.AppendUint32(b, op.Deliveries)
		b = binary.LittleEndian.AppendUint64(b, uint64(op.Size))
		return append(b, op.File...)
	}
	b = append(b, 0) // the payload follows inline
	b = binary.LittleEndian.AppendUint32(b, op.Deliveries)
	return append(b, op.Payload...)
}

// Decode decodes the data of a journal record of type typ. The payload
// of a Store aliases data.
func Decode(typ uint8, data []byte) (Op, error) {
	op := Op{Type: typ}
	if typ < TypeStore || typ > TypePurge {
		return op, fmt.Errorf("%w: unknown type %d", ErrBadRecord, typ)
	}
	if len(data) < 1 || int(data[0]) == 0 || len(data) < 1+int(data[0]) {
		return op, fmt.Errorf("%w: type %d: bad queue name", ErrBadRecord, typ)
	}
	n := int(data[0])
	op.Queue = string(data[1 : 1+n])
	rest := data[1+n:]
	if typ == TypeDrop {
		if len(rest) != 0 {
			return op, fmt.Errorf("%w: drop of %q: %d trailing bytes", ErrBadRecord, op.Queue, len(rest))
		}
		return op, nil
	}
	if len(rest) < 8 {
		return op, fmt.Errorf("%w: type %d of %q: short id", ErrBadRecord, typ, op.Queue)
	}
	op.ID = binary.LittleEndian.Uint64(rest)
	rest = rest[8:]
	if typ != TypeStore {
		if len(rest) != 0 {
			return op, fmt.Errorf("%w: type %d of %q: %d trailing bytes", ErrBadRecord, typ, op.Queue, len(rest))
		}
		return op, nil
	}
	if len(rest) < 5 {
		return op, fmt.Errorf("%w: store to %q: short header", ErrBadRecord, op.Queue)
	}
	flags := rest[0]
	op.Deliveries = binary.LittleEndian.Uint32(rest[1:])
	rest = rest[5:]
	switch flags {
	case 0:
		op.Payload = rest
	case FlagFile:
		if len(rest) < 8 {
			return op, fmt.Errorf("%w: store to %q: short payload file reference", ErrBadRecord, op.Queue)
		}
		size := binary.LittleEndian.Uint64(rest)
		op.File = string(rest[8:])
		if size > 1<<62 || !validFile(op.File) {
			return op, fmt.Errorf("%w: store to %q: bad payload file %q of %d bytes", ErrBadRecord, op.Queue, op.File, size)
		}
		op.Size = int64(size)
	default:
		return op, fmt.Errorf("%w: store to %q: unknown flags %#x", ErrBadRecord, op.Queue, flags)
	}
	return op, nil
}
