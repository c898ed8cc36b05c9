// Package wire defines machq's frame format: the header every frame starts
// with, the body of each operation, and the error codes servers send. It
// encodes and decodes bytes only; carrying frames and their file descriptors
// over a socket is the job of [Conn].
//
// docs/PROTOCOL.md is the normative description; this package implements it.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the newest protocol version this package speaks, and
// MinVersion the oldest. Version 2 adds DISOWN; version 3 adds
// acknowledged delivery (RETRIEVE with FlagAck, ACK, NAK, TOUCH, TERM),
// KICK, and queue management (PEEK, PURGE, DELETE). Everything of an older version is unchanged in a newer one.
const (
	Version    = 3
	MinVersion = 1
)

// VersionDisown and VersionAck are the first protocol versions with
// DISOWN and with acknowledged delivery.
const (
	VersionDisown = 2
	VersionAck    = 3
)

// Magic opens the body of HELLO and WELCOME frames.
const Magic = "MCHQ"

// HeaderSize is the size of the fixed frame header in bytes.
const HeaderSize = 16

// MaxFrameSize is the largest frame either side ever sends or accepts:
// a 1 MiB inline payload plus room for the largest STORE header.
const MaxFrameSize = 1<<20 + 1024

// MaxInline is the largest payload that may ever travel inside a frame.
// Anything larger travels out of line, as a sealed memfd.
const MaxInline = 1 << 20

// MaxFDsPerFrame is the most file descriptors one frame may carry.
const MaxFDsPerFrame = 1

// MaxDigestSize is the largest digest a STORE may carry.
const MaxDigestSize = 64

// MaxQueueName is the longest queue name.
const MaxQueueName = 255

// WaitForever in a RETRIEVE asks the server to wait until the request is
// cancelled or the connection ends.
const WaitForever = ^uint32(0)

// Op is the operation a frame carries.
type Op uint8

// Operations. Requests travel from client to server; the server answers
// each request with exactly one response carrying the request's id.
const (
	OpHello    Op = 0x01 // client → server: version negotiation, first frame
	OpStore    Op = 0x02 // client → server: store one message
	OpRetrieve Op = 0x03 // client → server: take the oldest message
	OpCancel   Op = 0x04 // client → server: cancel a waiting RETRIEVE; no response of its own
	OpStat     Op = 0x05 // client → server: server statistics
	OpDisown   Op = 0x06 // client → server: give up an owned queue's name (version 2)
	OpAck      Op = 0x07 // client → server: a delivery is done with (version 3)
	OpNak      Op = 0x08 // client → server: put a delivery back, after a delay (version 3)
	OpTouch    Op = 0x09 // client → server: still working on a delivery: renew its lease (version 3)
	OpTerm     Op = 0x0A // client → server: dead-letter a delivery (version 3)
	OpKick     Op = 0x0B // client → server: move dead letters back to their queue (version 3)
	OpPeek     Op = 0x0C // client → server: look at a message without taking it (version 3)
	OpPurge    Op = 0x0D // client → server: free every message of a queue (version 3)
	OpDelete   Op = 0x0E // client → server: remove a named queue and all it holds (version 3)
	OpGroup    Op = 0x0F // client → server: create or delete a consumer group (version 3)
	OpConfig   Op = 0x10 // client → server: a queue's own acknowledged-delivery settings (version 3)

	OpWelcome    Op = 0x81 // server → client: answer to HELLO
	OpStored     Op = 0x82 // server → client: answer to STORE
	OpMessage    Op = 0x83 // server → client: answer to RETRIEVE
	OpStats      Op = 0x85 // server → client: answer to STAT, a JSON document
	OpDisowned   Op = 0x86 // server → client: answer to DISOWN
	OpSettled    Op = 0x87 // server → client: answer to ACK, NAK, TOUCH and TERM
	OpKicked     Op = 0x8B // server → client: answer to KICK
	OpPurged     Op = 0x8D // server → client: answer to PURGE
	OpDeleted    Op = 0x8E // server → client: answer to DELETE
	OpGrouped    Op = 0x8F // server → client: answer to GROUP
	OpConfigured Op = 0x90 // server → client: answer to CONFIG
	OpError      Op = 0xFF // server → client: a request failed
)

// String returns the operation's protocol name.
func (o Op) String() string {
	switch o {
	case OpHello:
		return "HELLO"
	case OpStore:
		return "STORE"
	case OpRetrieve:
		return "RETRIEVE"
	case OpCancel:
		return "CANCEL"
	case OpStat:
		return "STAT"
	case OpDisown:
		return "DISOWN"
	case OpDisowned:
		return "DISOWNED"
	case OpAck:
		return "ACK"
	case OpNak:
		return "NAK"
	case OpTouch:
		return "TOUCH"
	case OpTerm:
		return "TERM"
	case OpKick:
		return "KICK"
	case OpSettled:
		return "SETTLED"
	case OpKicked:
		return "KICKED"
	case OpPeek:
		return "PEEK"
	case OpPurge:
		return "PURGE"
	case OpDelete:
		return "DELETE"
	case OpPurged:
		return "PURGED"
	case OpDeleted:
		return "DELETED"
	case OpGroup:
		return "GROUP"
	case OpGrouped:
		return "GROUPED"
	case OpConfig:
		return "CONFIG"
	case OpConfigured:
		return "CONFIGURED"
	case OpWelcome:
		return "WELCOME"
	case OpStored:
		return "STORED"
	case OpMessage:
		return "MESSAGE"
	case OpStats:
		return "STATS"
	case OpError:
		return "ERROR"
	}
	return fmt.Sprintf("Op(0x%02x)", uint8(o))
}

// Frame flags.
const (
	// FlagInline marks a STORE or MESSAGE whose payload follows the body
	// in the frame itself instead of travelling as a memfd.
	FlagInline uint8 = 1 << 0
	// FlagOwned, on a STORE or RETRIEVE naming a queue that does not
	// exist yet, creates it restricted to the sender's user id.
	FlagOwned uint8 = 1 << 1
	// FlagAck, on a RETRIEVE (version 3), takes the message in ack mode:
	// it stays pending with the consumer until settled. On a MESSAGE it
	// marks such a delivery, whose body carries the delivery's token.
	FlagAck uint8 = 1 << 2
	// FlagWait, on a STORE (version 3), waits for room in a full queue
	// instead of failing with LIMIT: the STORE is answered once stored,
	// or CANCELLED.
	FlagWait uint8 = 1 << 3
)

// Header is the fixed 16-byte header that starts every frame.
// All integers are little-endian.
type Header struct {
	Length uint32 // whole frame, header included
	Op     Op
	Flags  uint8
	NFDs   uint8  // file descriptors carried by this frame
	ID     uint64 // request id, echoed by the response
}

// ErrMalformed reports bytes that are not a valid frame. A connection that
// delivers a malformed frame cannot be resynchronised and must be closed.
var ErrMalformed = errors.New("wire: malformed frame")

// PutHeader encodes h into the first HeaderSize bytes of b.
func PutHeader(b []byte, h Header) {
	_ = b[HeaderSize-1]
	binary.LittleEndian.PutUint32(b[0:], h.Length)
	b[4] = byte(h.Op)
	b[5] = h.Flags
	b[6] = h.NFDs
	b[7] = 0
	binary.LittleEndian.PutUint64(b[8:], h.ID)
}

// ParseHeader decodes the header at the start of b, which must hold at
// least HeaderSize bytes. It checks the fields that make the stream
// undecodable when wrong: the length bounds, the reserved byte and the
// descriptor count.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: %d bytes is shorter than a header", ErrMalformed, len(b))
	}
	h := Header{
		Length: binary.LittleEndian.Uint32(b[0:]),
		Op:     Op(b[4]),
		Flags:  b[5],
		NFDs:   b[6],
		ID:     binary.LittleEndian.Uint64(b[8:]),
	}
	switch {
	case h.Length < HeaderSize:
		return h, fmt.Errorf("%w: frame length %d is shorter than the %d-byte header", ErrMalformed, h.Length, HeaderSize)
	case h.Length > MaxFrameSize:
		return h, fmt.Errorf("%w: frame length %d exceeds the maximum %d (payloads over %d bytes travel as memfds)", ErrMalformed, h.Length, MaxFrameSize, MaxInline)
	case b[7] != 0:
		return h, fmt.Errorf("%w: reserved header byte is %d, must be 0", ErrMalformed, b[7])
	case h.NFDs > MaxFDsPerFrame:
		return h, fmt.Errorf("%w: frame declares %d file descriptors, at most %d allowed", ErrMalformed, h.NFDs, MaxFDsPerFrame)
	}
	return h, nil
}
