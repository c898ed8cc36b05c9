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
	// TypeQueue: what a queue is besides its messages (its creator,
	// whether it is its creator's alone, its delivery settings); it
	// lasts as long as the queue holds messages, or until dropped when
	// QueueMeta.Kept.
	TypeQueue uint8 = 6
	// TypeSeq (format version 2): every sequence number given so far, in
	// any durable queue, is below ID. It names no queue. Compaction
	// writes it before it deletes the stores that said so.
	TypeSeq uint8 = 7
	// TypeGroup: a record of a consumer group of a queue (Op.Group): a
	// Store, Take, Deliver, Purge or Drop of the group's own messages
	// (its views of the queue's), or a Queue record saying the group
	// exists (QueueMeta.Creator is who created it). It wraps the record
	// of that type: the group's name, the inner type, the inner data.
	TypeGroup uint8 = 8
)

// QueueMeta is what the log keeps of a queue besides its messages.
type QueueMeta struct {
	// Creator is the user id that created the queue; Owned restricts
	// it to that user.
	Creator uint32
	Owned   bool
	// MaxDeliveries and LeaseMillis are the queue's own delivery
	// settings (CONFIG), 0 for the server's.
	MaxDeliveries uint32
	LeaseMillis   uint32
}

// Kept reports whether the description outlives the queue's last
// message: an owned queue stays its owner's, and a configured one keeps
// its settings, until deleted (DROP) or disowned.
func (m QueueMeta) Kept() bool { return m.Owned || m.MaxDeliveries != 0 || m.LeaseMillis != 0 }

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
	// Group is the consumer group of Queue the record is about, "" for
	// the queue itself; such a record is written as a TypeGroup.
	Group string
	// ID is the message (Store, Take, Deliver) or the bound (Purge: ids
	// below it are gone).
	ID uint64
	// Deliveries is how often the message was delivered before it was
	// stored or copied forward (Store).
	Deliveries uint32
	// Attrs are what the server knows of the message besides its
	// payload (Store).
	Attrs Attrs
	// Payload is the message's bytes (Store of an inline message).
	Payload []byte
	// File names the payload file of a page message in the data
	// directory's payloads/ (Store with flag FlagFile), Size its bytes.
	File string
	Size int64
	// Meta is the queue's description (Queue).
	Meta QueueMeta
}

// Attrs are a stored message's attributes the log keeps with it.
type Attrs struct {
	// Seq is the message's place in its queue, which orders the queue's
	// messages when they are recovered; 0 means its id. The id names
	// the message in the log and is never given twice, while a place
	// may be (a dead letter keeps the one it had in its queue).
	Seq uint64
	// UID is the user the message is charged to.
	UID uint32
	// DigestAlg and Digest are the digest its sender gave (at most 255
	// bytes).
	DigestAlg uint8
	Digest    string
	// Dead, DiedAfter, Note and Group describe a dead letter: why it is
	// one, its deliveries when it died, the TERM or last NAK's text (at
	// most 65535 bytes) and the consumer group it went through.
	Dead      uint8
	DiedAfter uint32
	Note      string
	Group     string
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

// RecordType is the type of op's journal record: op.Type, or TypeGroup
// for a record of a consumer group.
func RecordType(op Op) uint8 {
	if op.Group != "" {
		return TypeGroup
	}
	return op.Type
}

// encodedSize is the length of op's record data.
func encodedSize(op Op) int {
	if op.Group != "" {
		inner := op
		inner.Group = ""
		return 1 + len(op.Group) + 1 + encodedSize(inner)
	}
	if op.Type == TypeSeq {
		return 1 + 8
	}
	a := op.Attrs
	// name, id, flags, deliveries, seq, uid, digest, dead, died_after,
	// note, group, and the file's size.
	return 1 + len(op.Queue) + 8 + 1 + 4 + 8 + 4 + 2 + len(a.Digest) + 1 + 4 + 2 + len(a.Note) + 1 + len(a.Group) + 8 + len(op.File) + len(op.Payload)
}

// encode appends op's record data to b.
func encode(b []byte, op Op) []byte {
	if op.Group != "" {
		b = append(b, byte(len(op.Group)))
		b = append(b, op.Group...)
		b = append(b, op.Type)
		op.Group = ""
	}
	if op.Type == TypeSeq {
		return binary.LittleEndian.AppendUint64(append(b, 0), op.ID)
	}
	b = append(b, byte(len(op.Queue)))
	b = append(b, op.Queue...)
	if op.Type == TypeDrop {
		return b
	}
	if op.Type == TypeQueue {
		m := op.Meta
		b = binary.LittleEndian.AppendUint32(b, m.Creator)
		owned := byte(0)
		if m.Owned {
			owned = 1
		}
		b = append(b, owned)
		b = binary.LittleEndian.AppendUint32(b, m.MaxDeliveries)
		return binary.LittleEndian.AppendUint32(b, m.LeaseMillis)
	}
	b = binary.LittleEndian.AppendUint64(b, op.ID)
	if op.Type != TypeStore {
		return b
	}
	flags := byte(0) // the payload follows inline
	if op.File != "" {
		flags = FlagFile
	}
	a := op.Attrs
	b = append(b, flags)
	b = binary.LittleEndian.AppendUint32(b, op.Deliveries)
	b = binary.LittleEndian.AppendUint64(b, a.Seq)
	b = binary.LittleEndian.AppendUint32(b, a.UID)
	b = append(b, a.DigestAlg, byte(len(a.Digest)))
	b = append(b, a.Digest...)
	b = append(b, a.Dead)
	b = binary.LittleEndian.AppendUint32(b, a.DiedAfter)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(a.Note)))
	b = append(b, a.Note...)
	b = append(b, byte(len(a.Group)))
	b = append(b, a.Group...)
	if op.File != "" {
		b = binary.LittleEndian.AppendUint64(b, uint64(op.Size))
		return append(b, op.File...)
	}
	return append(b, op.Payload...)
}

// Decode decodes the data of a journal record of type typ. The payload
// of a Store aliases data.
func Decode(typ uint8, data []byte) (Op, error) {
	if typ == TypeGroup {
		return decodeGroup(data)
	}
	op := Op{Type: typ}
	if typ < TypeStore || typ > TypeSeq {
		return op, fmt.Errorf("%w: unknown type %d", ErrBadRecord, typ)
	}
	if typ == TypeSeq {
		if len(data) != 9 || data[0] != 0 {
			return op, fmt.Errorf("%w: sequence record of %d bytes", ErrBadRecord, len(data))
		}
		op.ID = binary.LittleEndian.Uint64(data[1:])
		return op, nil
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
	if typ == TypeQueue {
		if len(rest) != 13 || rest[4] > 1 {
			return op, fmt.Errorf("%w: queue %q: bad description", ErrBadRecord, op.Queue)
		}
		op.Meta = QueueMeta{
			Creator:       binary.LittleEndian.Uint32(rest),
			Owned:         rest[4] == 1,
			MaxDeliveries: binary.LittleEndian.Uint32(rest[5:]),
			LeaseMillis:   binary.LittleEndian.Uint32(rest[9:]),
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
	short := func() error { return fmt.Errorf("%w: store to %q: short header", ErrBadRecord, op.Queue) }
	if len(rest) < 19 {
		return op, short()
	}
	flags := rest[0]
	op.Deliveries = binary.LittleEndian.Uint32(rest[1:])
	a := &op.Attrs
	a.Seq = binary.LittleEndian.Uint64(rest[5:])
	a.UID = binary.LittleEndian.Uint32(rest[13:])
	a.DigestAlg = rest[17]
	dl := int(rest[18])
	rest = rest[19:]
	if len(rest) < dl+7 {
		return op, short()
	}
	a.Digest = string(rest[:dl])
	rest = rest[dl:]
	a.Dead = rest[0]
	a.DiedAfter = binary.LittleEndian.Uint32(rest[1:])
	nl := int(binary.LittleEndian.Uint16(rest[5:]))
	rest = rest[7:]
	if len(rest) < nl+1 {
		return op, short()
	}
	a.Note = string(rest[:nl])
	gl := int(rest[nl])
	rest = rest[nl+1:]
	if len(rest) < gl {
		return op, short()
	}
	a.Group = string(rest[:gl])
	rest = rest[gl:]
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

// decodeGroup decodes the data of a TypeGroup record.
func decodeGroup(data []byte) (Op, error) {
	if len(data) < 1 || data[0] == 0 || len(data) < 2+int(data[0]) {
		return Op{Type: TypeGroup}, fmt.Errorf("%w: group record: bad group name", ErrBadRecord)
	}
	n := int(data[0])
	group := string(data[1 : 1+n])
	inner := data[1+n]
	switch inner {
	case TypeStore, TypeTake, TypeDeliver, TypeDrop, TypePurge, TypeQueue:
	default:
		return Op{Type: TypeGroup}, fmt.Errorf("%w: group %q: record of type %d", ErrBadRecord, group, inner)
	}
	op, err := Decode(inner, data[2+n:])
	op.Group = group
	return op, err
}
