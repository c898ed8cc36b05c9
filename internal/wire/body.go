package wire

import (
	"encoding/binary"
	"fmt"
	"unicode"
	"unicode/utf8"
)

// Digest algorithms a STORE may name. The digest is computed by the sender
// over the payload and checked by the receiver; the server only carries it.
const (
	DigestNone   uint8 = 0
	DigestSHA256 uint8 = 1
	DigestBLAKE3 uint8 = 2 // 32-byte output
)

// Hello is the body of a HELLO frame: the protocol versions the client speaks.
type Hello struct {
	MinVersion uint16
	MaxVersion uint16
}

// Welcome is the body of a WELCOME frame: the version chosen and the
// server's limits.
type Welcome struct {
	Version    uint16
	MaxInline  uint32 // largest payload the server accepts inline
	MaxFrame   uint32 // largest frame the server accepts
	MaxMessage uint64 // largest payload the server stores
	ServerPID  uint32
	// Software names the server's build (machqd's version), at most
	// MaxSoftware bytes of printable UTF-8; empty from servers that do
	// not say.
	Software string
}

// MaxSoftware is the longest Welcome.Software.
const MaxSoftware = 255

// Store is the fixed part of a STORE body. Digest and Queue follow it;
// for an inline store the payload fills the rest of the frame.
type Store struct {
	Size      uint64
	DigestAlg uint8
	Digest    []byte
	Queue     []byte // empty: the connection's private queue
	Owned     bool   // FlagOwned: a queue this creates is its creator's alone
	Wait      bool   // FlagWait (version 3): wait for room in a full queue
}

// Retrieve is the body of a RETRIEVE frame.
type Retrieve struct {
	WaitMillis uint32 // 0: answer at once; WaitForever: until cancelled
	Queue      []byte
	Owned      bool // FlagOwned: a queue this creates is its creator's alone
	// Ack (FlagAck, version 3) takes the message in ack mode; the
	// fields below travel only then.
	Ack bool
	// LeaseMillis bounds how long the consumer may hold the message
	// without settling or touching it: 0 means the server's default,
	// NoLease none.
	LeaseMillis uint32
	// Credit is the most messages the connection may hold pending for
	// this retrieve to be served: 0 means the server's maximum.
	Credit uint32
	// Group is the consumer group of Queue to take the message
	// through; empty: the queue itself.
	Group []byte
}

// NoLease in a RETRIEVE's LeaseMillis asks for no lease at all.
const NoLease = ^uint32(0)

// Message is the fixed part of a MESSAGE body. For an inline message the
// payload fills the rest of the frame.
type Message struct {
	Seq       uint64
	Size      uint64
	DigestAlg uint8
	Digest    []byte
	// Ack (FlagAck, version 3) marks a delivery in ack mode; the fields
	// below travel only then.
	Ack bool
	// Token names this delivery attempt in ACK, NAK, TOUCH and TERM.
	Token uint64
	// Deliveries counts the deliveries in ack mode, this one included:
	// more than 1 means the message was delivered before.
	Deliveries uint32
	// Dead says why a dead letter is one (DeadTerm, DeadMaxDeliveries);
	// DeadNone for a live message.
	Dead uint8
	// Note is the TERM reason of a dead letter, or the text of the
	// message's last NAK; at most MaxNote bytes.
	Note []byte
	// DiedAfter is, for a dead letter, how many times it had been
	// delivered in its queue when it became one (Deliveries counts
	// again from 0 in the dead-letter queue).
	DiedAfter uint32
}

// Why a message is a dead letter, in a MESSAGE's Dead field.
const (
	DeadNone          uint8 = 0 // not a dead letter
	DeadTerm          uint8 = 1 // a consumer TERMed it
	DeadMaxDeliveries uint8 = 2 // it was delivered the most times allowed
)

// MaxNote is the longest text a NAK or TERM may carry, and so the longest
// note a MESSAGE carries.
const MaxNote = 512

const (
	helloSize       = 8
	welcomeSize     = 28
	storeFixed      = 12
	retrieveFixed   = 8
	retrieveAckFix  = 16
	messageFixed    = 24
	messageAckFixed = 40
	errorFixed      = 4
	cancelSize      = 8
	disownFixed     = 4
	storedSize      = 8
	maxErrorMessage = 4096
)

// begin appends a header placeholder for a frame and returns the buffer and
// the frame's start offset. finish patches the length in.
func begin(b []byte, op Op, flags, nfds uint8, id uint64) ([]byte, int) {
	start := len(b)
	b = append(b, make([]byte, HeaderSize)...)
	PutHeader(b[start:], Header{Op: op, Flags: flags, NFDs: nfds, ID: id})
	return b, start
}

func finish(b []byte, start int) []byte {
	binary.LittleEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

// AppendHello appends a HELLO frame to b.
func AppendHello(b []byte, id uint64, h Hello) []byte {
	b, s := begin(b, OpHello, 0, 0, id)
	b = append(b, Magic...)
	b = binary.LittleEndian.AppendUint16(b, h.MinVersion)
	b = binary.LittleEndian.AppendUint16(b, h.MaxVersion)
	return finish(b, s)
}

// ParseHello decodes a HELLO body.
func ParseHello(body []byte) (Hello, error) {
	if len(body) != helloSize {
		return Hello{}, fmt.Errorf("%w: HELLO body is %d bytes, want %d", ErrMalformed, len(body), helloSize)
	}
	if string(body[:4]) != Magic {
		return Hello{}, fmt.Errorf("%w: HELLO does not start with %q: not a machq client", ErrMalformed, Magic)
	}
	return Hello{
		MinVersion: binary.LittleEndian.Uint16(body[4:]),
		MaxVersion: binary.LittleEndian.Uint16(body[6:]),
	}, nil
}

// AppendWelcome appends a WELCOME frame to b.
func AppendWelcome(b []byte, id uint64, w Welcome) []byte {
	b, s := begin(b, OpWelcome, 0, 0, id)
	b = append(b, Magic...)
	b = binary.LittleEndian.AppendUint16(b, w.Version)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint32(b, w.MaxInline)
	b = binary.LittleEndian.AppendUint32(b, w.MaxFrame)
	b = binary.LittleEndian.AppendUint64(b, w.MaxMessage)
	b = binary.LittleEndian.AppendUint32(b, w.ServerPID)
	if sw := w.Software[:min(len(w.Software), MaxSoftware)]; sw != "" {
		b = append(b, byte(len(sw)))
		b = append(b, sw...)
	}
	return finish(b, s)
}

// ParseWelcome decodes a WELCOME body. Bytes past the known fields are
// ignored so that later versions can extend it.
func ParseWelcome(body []byte) (Welcome, error) {
	if len(body) < welcomeSize {
		return Welcome{}, fmt.Errorf("%w: WELCOME body is %d bytes, want at least %d", ErrMalformed, len(body), welcomeSize)
	}
	if string(body[:4]) != Magic {
		return Welcome{}, fmt.Errorf("%w: WELCOME does not start with %q: not a machq server", ErrMalformed, Magic)
	}
	w := Welcome{
		Version:    binary.LittleEndian.Uint16(body[4:]),
		MaxInline:  binary.LittleEndian.Uint32(body[8:]),
		MaxFrame:   binary.LittleEndian.Uint32(body[12:]),
		MaxMessage: binary.LittleEndian.Uint64(body[16:]),
		ServerPID:  binary.LittleEndian.Uint32(body[24:]),
	}
	// The server's software, if it says: a length byte and that many
	// bytes. Anything else there (a later version's fields, or text
	// that is not printable) is ignored, never shown.
	if rest := body[welcomeSize:]; len(rest) > 0 && len(rest) > int(rest[0]) {
		if sw := string(rest[1 : 1+int(rest[0])]); printable(sw) {
			w.Software = sw
		}
	}
	return w, nil
}

// printable reports whether s is valid UTF-8 of printable characters
// only, so that it cannot move a terminal's cursor or colour its text.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// AppendStore appends a STORE frame to b. With hasFD the frame declares one
// descriptor (the memfd holding s.Size bytes) and inline is ignored;
// otherwise inline, which must hold s.Size bytes, travels in the frame.
// The digest and queue name must each be at most 255 bytes.
func AppendStore(b []byte, id uint64, s Store, inline []byte, hasFD bool) []byte {
	var flags, nfds uint8
	if hasFD {
		nfds = 1
	} else {
		flags = FlagInline
	}
	if s.Owned {
		flags |= FlagOwned
	}
	if s.Wait {
		flags |= FlagWait
	}
	b, st := begin(b, OpStore, flags, nfds, id)
	b = binary.LittleEndian.AppendUint64(b, s.Size)
	b = append(b, s.DigestAlg, uint8(len(s.Digest)), uint8(len(s.Queue)), 0)
	b = append(b, s.Digest...)
	b = append(b, s.Queue...)
	if !hasFD {
		b = append(b, inline...)
	}
	return finish(b, st)
}

// ParseStore decodes a STORE body. It returns the fixed fields and, for an
// inline store, the payload; the returned slices alias body.
func ParseStore(h Header, body []byte) (Store, []byte, error) {
	if len(body) < storeFixed {
		return Store{}, nil, fmt.Errorf("%w: STORE body is %d bytes, want at least %d", ErrMalformed, len(body), storeFixed)
	}
	s := Store{
		Size:      binary.LittleEndian.Uint64(body[0:]),
		DigestAlg: body[8],
		Owned:     h.Flags&FlagOwned != 0,
		Wait:      h.Flags&FlagWait != 0,
	}
	dl, nl := int(body[9]), int(body[10])
	if body[11] != 0 {
		return Store{}, nil, fmt.Errorf("%w: STORE reserved byte is %d, must be 0", ErrMalformed, body[11])
	}
	if dl > MaxDigestSize {
		return Store{}, nil, fmt.Errorf("%w: STORE digest length %d exceeds %d", ErrMalformed, dl, MaxDigestSize)
	}
	rest := body[storeFixed:]
	if len(rest) < dl+nl {
		return Store{}, nil, fmt.Errorf("%w: STORE declares %d digest and %d name bytes but only %d follow", ErrMalformed, dl, nl, len(rest))
	}
	s.Digest = rest[:dl:dl]
	s.Queue = rest[dl : dl+nl : dl+nl]
	payload := rest[dl+nl:]
	if h.Flags&FlagInline != 0 {
		if uint64(len(payload)) != s.Size {
			return Store{}, nil, fmt.Errorf("%w: inline STORE declares %d payload bytes but carries %d", ErrMalformed, s.Size, len(payload))
		}
		return s, payload, nil
	}
	if len(payload) != 0 {
		return Store{}, nil, fmt.Errorf("%w: out-of-line STORE carries %d stray bytes after its queue name", ErrMalformed, len(payload))
	}
	return s, nil, nil
}

// AppendStored appends a STORED frame to b.
func AppendStored(b []byte, id, seq uint64) []byte {
	b, s := begin(b, OpStored, 0, 0, id)
	b = binary.LittleEndian.AppendUint64(b, seq)
	return finish(b, s)
}

// ParseStored decodes a STORED body into the message's sequence number.
func ParseStored(body []byte) (uint64, error) {
	if len(body) != storedSize {
		return 0, fmt.Errorf("%w: STORED body is %d bytes, want %d", ErrMalformed, len(body), storedSize)
	}
	return binary.LittleEndian.Uint64(body), nil
}

// AppendRetrieve appends a RETRIEVE frame to b.
func AppendRetrieve(b []byte, id uint64, r Retrieve) []byte {
	var flags uint8
	if r.Owned {
		flags = FlagOwned
	}
	if r.Ack {
		flags |= FlagAck
	}
	b, s := begin(b, OpRetrieve, flags, 0, id)
	b = binary.LittleEndian.AppendUint32(b, r.WaitMillis)
	if r.Ack {
		b = append(b, uint8(len(r.Queue)), uint8(len(r.Group)), 0, 0)
		b = binary.LittleEndian.AppendUint32(b, r.LeaseMillis)
		b = binary.LittleEndian.AppendUint32(b, r.Credit)
		b = append(b, r.Queue...)
		b = append(b, r.Group...)
		return finish(b, s)
	}
	b = append(b, uint8(len(r.Queue)), 0, 0, 0)
	b = append(b, r.Queue...)
	return finish(b, s)
}

// ParseRetrieve decodes a RETRIEVE body; Queue aliases body.
func ParseRetrieve(body []byte) (Retrieve, error) {
	if len(body) < retrieveFixed {
		return Retrieve{}, fmt.Errorf("%w: RETRIEVE body is %d bytes, want at least %d", ErrMalformed, len(body), retrieveFixed)
	}
	r := Retrieve{WaitMillis: binary.LittleEndian.Uint32(body)}
	nl := int(body[4])
	if body[5] != 0 || body[6] != 0 || body[7] != 0 {
		return Retrieve{}, fmt.Errorf("%w: RETRIEVE reserved bytes are not 0", ErrMalformed)
	}
	if len(body)-retrieveFixed != nl {
		return Retrieve{}, fmt.Errorf("%w: RETRIEVE declares a %d-byte queue name but carries %d bytes", ErrMalformed, nl, len(body)-retrieveFixed)
	}
	r.Queue = body[retrieveFixed:]
	return r, nil
}

// ParseAckRetrieve decodes the body of a RETRIEVE with FlagAck (version
// 3), which carries the lease and the credit after the fixed part of a
// plain one, and a consumer group's name after the queue's; Queue and
// Group alias body.
func ParseAckRetrieve(body []byte) (Retrieve, error) {
	if len(body) < retrieveAckFix {
		return Retrieve{}, fmt.Errorf("%w: ack-mode RETRIEVE body is %d bytes, want at least %d", ErrMalformed, len(body), retrieveAckFix)
	}
	r := Retrieve{
		WaitMillis:  binary.LittleEndian.Uint32(body),
		Ack:         true,
		LeaseMillis: binary.LittleEndian.Uint32(body[8:]),
		Credit:      binary.LittleEndian.Uint32(body[12:]),
	}
	nl, gl := int(body[4]), int(body[5])
	if body[6] != 0 || body[7] != 0 {
		return Retrieve{}, fmt.Errorf("%w: RETRIEVE reserved bytes are not 0", ErrMalformed)
	}
	if len(body)-retrieveAckFix != nl+gl {
		return Retrieve{}, fmt.Errorf("%w: RETRIEVE declares a %d-byte queue name and a %d-byte group name but carries %d bytes", ErrMalformed, nl, gl, len(body)-retrieveAckFix)
	}
	r.Queue = body[retrieveAckFix : retrieveAckFix+nl : retrieveAckFix+nl]
	r.Group = body[retrieveAckFix+nl:]
	if gl == 0 {
		r.Group = nil
	}
	return r, nil
}

// AppendMessage appends a MESSAGE frame to b. With hasFD the payload
// travels as one descriptor and inline is ignored.
func AppendMessage(b []byte, id uint64, m Message, inline []byte, hasFD bool) []byte {
	var flags, nfds uint8
	if hasFD {
		nfds = 1
	} else {
		flags = FlagInline
	}
	if m.Ack {
		flags |= FlagAck
	}
	b, s := begin(b, OpMessage, flags, nfds, id)
	b = binary.LittleEndian.AppendUint64(b, m.Seq)
	b = binary.LittleEndian.AppendUint64(b, m.Size)
	if m.Ack {
		note := m.Note[:min(len(m.Note), MaxNote)]
		b = append(b, m.DigestAlg, uint8(len(m.Digest)), m.Dead, 0)
		b = binary.LittleEndian.AppendUint32(b, m.Deliveries)
		b = binary.LittleEndian.AppendUint64(b, m.Token)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(note)))
		b = append(b, 0, 0)
		b = binary.LittleEndian.AppendUint32(b, m.DiedAfter)
		b = append(b, m.Digest...)
		b = append(b, note...)
	} else {
		b = append(b, m.DigestAlg, uint8(len(m.Digest)), 0, 0, 0, 0, 0, 0)
		b = append(b, m.Digest...)
	}
	if !hasFD {
		b = append(b, inline...)
	}
	return finish(b, s)
}

// ParseMessage decodes a MESSAGE body and, for an inline message, its
// payload; the returned slices alias body.
func ParseMessage(h Header, body []byte) (Message, []byte, error) {
	if len(body) < messageFixed {
		return Message{}, nil, fmt.Errorf("%w: MESSAGE body is %d bytes, want at least %d", ErrMalformed, len(body), messageFixed)
	}
	m := Message{
		Seq:       binary.LittleEndian.Uint64(body[0:]),
		Size:      binary.LittleEndian.Uint64(body[8:]),
		DigestAlg: body[16],
	}
	dl := int(body[17])
	rest := body[messageFixed:]
	nl := 0
	if h.Flags&FlagAck != 0 {
		if len(body) < messageAckFixed {
			return Message{}, nil, fmt.Errorf("%w: ack-mode MESSAGE body is %d bytes, want at least %d", ErrMalformed, len(body), messageAckFixed)
		}
		m.Ack = true
		m.Dead = body[18]
		m.Deliveries = binary.LittleEndian.Uint32(body[20:])
		m.Token = binary.LittleEndian.Uint64(body[24:])
		nl = int(binary.LittleEndian.Uint16(body[32:]))
		m.DiedAfter = binary.LittleEndian.Uint32(body[36:])
		if nl > MaxNote {
			return Message{}, nil, fmt.Errorf("%w: MESSAGE note of %d bytes exceeds %d", ErrMalformed, nl, MaxNote)
		}
		rest = body[messageAckFixed:]
	}
	if dl > MaxDigestSize {
		return Message{}, nil, fmt.Errorf("%w: MESSAGE digest length %d exceeds %d", ErrMalformed, dl, MaxDigestSize)
	}
	if dl+nl > len(rest) {
		return Message{}, nil, fmt.Errorf("%w: MESSAGE declares a %d-byte digest and a %d-byte note but %d bytes follow", ErrMalformed, dl, nl, len(rest))
	}
	m.Digest = rest[:dl:dl]
	if m.Ack {
		m.Note = rest[dl : dl+nl : dl+nl]
	}
	payload := rest[dl+nl:]
	if h.Flags&FlagInline != 0 {
		if uint64(len(payload)) != m.Size {
			return Message{}, nil, fmt.Errorf("%w: inline MESSAGE declares %d payload bytes but carries %d", ErrMalformed, m.Size, len(payload))
		}
		return m, payload, nil
	}
	if len(payload) != 0 {
		return Message{}, nil, fmt.Errorf("%w: out-of-line MESSAGE carries %d stray bytes", ErrMalformed, len(payload))
	}
	return m, nil, nil
}

// AppendCancel appends a CANCEL frame for the request target to b.
func AppendCancel(b []byte, id, target uint64) []byte {
	b, s := begin(b, OpCancel, 0, 0, id)
	b = binary.LittleEndian.AppendUint64(b, target)
	return finish(b, s)
}

// ParseCancel decodes a CANCEL body into the id of the request to cancel.
func ParseCancel(body []byte) (uint64, error) {
	if len(body) != cancelSize {
		return 0, fmt.Errorf("%w: CANCEL body is %d bytes, want %d", ErrMalformed, len(body), cancelSize)
	}
	return binary.LittleEndian.Uint64(body), nil
}

// AppendDisown appends a DISOWN frame for the named queue to b.
func AppendDisown(b []byte, id uint64, queue []byte) []byte {
	b, s := begin(b, OpDisown, 0, 0, id)
	b = append(b, uint8(len(queue)), 0, 0, 0)
	b = append(b, queue...)
	return finish(b, s)
}

// ParseDisown decodes a DISOWN body into the queue name, which aliases
// body.
func ParseDisown(body []byte) ([]byte, error) {
	if len(body) < disownFixed {
		return nil, fmt.Errorf("%w: DISOWN body is %d bytes, want at least %d", ErrMalformed, len(body), disownFixed)
	}
	if body[1] != 0 || body[2] != 0 || body[3] != 0 {
		return nil, fmt.Errorf("%w: DISOWN reserved bytes are not 0", ErrMalformed)
	}
	if nl := int(body[0]); len(body)-disownFixed != nl {
		return nil, fmt.Errorf("%w: DISOWN declares a %d-byte queue name but carries %d bytes", ErrMalformed, nl, len(body)-disownFixed)
	}
	return body[disownFixed:], nil
}

// AppendDisowned appends a DISOWNED frame, the answer to DISOWN, to b.
func AppendDisowned(b []byte, id uint64) []byte {
	b, s := begin(b, OpDisowned, 0, 0, id)
	return finish(b, s)
}

// AppendStat appends a STAT frame to b.
func AppendStat(b []byte, id uint64) []byte {
	b, s := begin(b, OpStat, 0, 0, id)
	return finish(b, s)
}

// AppendStats appends a STATS frame carrying the JSON document doc to b.
func AppendStats(b []byte, id uint64, doc []byte) []byte {
	b, s := begin(b, OpStats, 0, 0, id)
	b = append(b, doc...)
	return finish(b, s)
}

// AppendError appends an ERROR frame to b. Messages longer than 4 KiB are
// cut.
func AppendError(b []byte, id uint64, code Code, msg string) []byte {
	if len(msg) > maxErrorMessage {
		cut := maxErrorMessage
		for i := 0; i < utf8.UTFMax-1 && cut > 0 && !utf8.RuneStart(msg[cut]); i++ {
			cut-- // do not split a character
		}
		msg = msg[:cut]
	}
	b, s := begin(b, OpError, 0, 0, id)
	b = binary.LittleEndian.AppendUint16(b, uint16(code))
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = append(b, msg...)
	return finish(b, s)
}

// ParseError decodes an ERROR body into its code and message.
func ParseError(body []byte) (Code, string, error) {
	if len(body) < errorFixed {
		return 0, "", fmt.Errorf("%w: ERROR body is %d bytes, want at least %d", ErrMalformed, len(body), errorFixed)
	}
	return Code(binary.LittleEndian.Uint16(body)), string(body[errorFixed:]), nil
}
