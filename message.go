package machq

import (
	"bytes"
	"crypto/subtle"
	"fmt"
	"io"
	"os"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/page"
)

// Message is a retrieved payload. A payload that travelled out of line is
// a read-only shared mapping of the sealed memfd the sender filled: no
// copy was made on the way. Close releases the mapping and the memfd; the
// slice returned by Bytes must not be used after Close.
//
// A Message is not safe for concurrent use.
type Message struct {
	// Seq is the message's position in its queue, assigned by the server:
	// strictly increasing in FIFO order within one queue.
	Seq uint64
	// Queue is the queue it came from; "" for the private queue.
	Queue string

	size      int64
	data      []byte // inline copy, or the mapping of fd
	mapped    bool
	fd        int
	digestAlg Digest
	digest    []byte
	accept    []Digest // the digests the client requires; nil: any
	closed    bool
	ack       *ackInfo // for a delivery in ack mode
}

// Deliveries counts the times the message has been delivered in ack
// mode in its queue, this delivery included (Reserve), or up to now (Peek);
// 0 for a message taken by Retrieve.
func (m *Message) Deliveries() int {
	if m.ack == nil {
		return 0
	}
	return int(m.ack.deliveries)
}

// Redelivered reports whether the message was delivered in ack mode
// before this delivery and not acknowledged: its consumer left, its
// lease ran out, or it was NAKed.
func (m *Message) Redelivered() bool { return m.ack != nil && m.ack.deliveries > 1 }

// DeadReason says why the message is a dead letter, when it was read
// from a dead-letter queue in ack mode or peeked.
func (m *Message) DeadReason() DeadReason {
	if m.ack == nil {
		return NotDead
	}
	return m.ack.dead
}

// DiedAfter is, for a dead letter, how many times it had been delivered
// in its queue when it became one (Deliveries counts its deliveries in
// the dead-letter queue).
func (m *Message) DiedAfter() int {
	if m.ack == nil {
		return 0
	}
	return int(m.ack.diedAfter)
}

// Note is the reason given by the TERM that made the message a dead
// letter, or the text of its last NAK; empty if none was given, or for a
// message taken by Retrieve.
func (m *Message) Note() string {
	if m.ack == nil {
		return ""
	}
	return m.ack.note
}

// Len returns the payload size in bytes.
func (m *Message) Len() int64 { return m.size }

// OutOfLine reports whether the payload travelled as a memfd.
func (m *Message) OutOfLine() bool { return m.fd >= 0 }

// Digest returns the algorithm and digest the sender attached.
func (m *Message) Digest() (Digest, []byte) { return m.digestAlg, m.digest }

// Bytes returns the payload. For an out-of-line payload it is a read-only
// mapping: writing to it faults. It returns nil after Close or for an
// empty payload.
func (m *Message) Bytes() []byte {
	if m.closed {
		return nil
	}
	if m.fd >= 0 && !m.mapped {
		if err := m.mapPage(); err != nil {
			return nil
		}
	}
	return m.data
}

func (m *Message) mapPage() error {
	// Mapped lazily: the map is O(1) whatever the size, and a reader that
	// reads it all pays no more than with MAP_POPULATE, since a read fault
	// maps 16 neighbouring pages at once (docs/PERFORMANCE.md).
	b, err := page.MapReadOnly(m.fd, m.size, false)
	if err != nil {
		return fmt.Errorf("machq: map message %d: %w", m.Seq, err)
	}
	m.data, m.mapped = b, true
	return nil
}

// load prepares the payload for verification.
func (m *Message) load() error {
	if m.fd < 0 || m.size == 0 || m.digestAlg == DigestNone {
		return nil
	}
	return m.mapPage()
}

// verify checks the payload against the digest the sender attached and,
// when expect is not nil, against the digest this client recorded when it
// stored the message in its private queue.
func (m *Message) verify(expect *sentDigest) error {
	tampered := func(format string, args ...any) error {
		return &TamperedError{Queue: m.Queue, Seq: m.Seq, Reason: fmt.Sprintf(format, args...)}
	}
	unverifiable := func(format string, args ...any) error {
		return &TamperedError{Queue: m.Queue, Seq: m.Seq, Reason: fmt.Sprintf(format, args...), Unverifiable: true}
	}
	if m.Queue == "" {
		switch {
		case expect == nil:
			return tampered("the server returned message %d, which this client never stored, or ahead of an older one it has not returned", m.Seq)
		case expect.seq != m.Seq:
			return tampered("the server returned message %d but the record is of %d", m.Seq, expect.seq)
		case Digest(expect.alg) != m.digestAlg || !bytes.Equal(expect.digest, m.digest):
			return tampered("the digest the server returned differs from the one recorded at store time")
		}
	}
	if m.accept != nil && !slices.Contains(m.accept, m.digestAlg) {
		left := "it has left the queue unverified"
		if m.ack != nil {
			left = "it is still pending with this client"
		}
		if m.digestAlg == DigestNone {
			return unverifiable("it carries no digest (its sender chose none) and this client requires a %s digest; %s: have its producer send one (--digest sha256 or blake3)", digestNames(m.accept), left)
		}
		if slices.Contains(verifiable, m.digestAlg) {
			return unverifiable("it carries a %s digest and this client accepts only %s; %s", m.digestAlg, digestNames(m.accept), left)
		}
	}
	sum, err := m.digestAlg.Sum(m.data)
	if err != nil {
		return unverifiable("unknown digest algorithm %d; cannot verify", uint8(m.digestAlg))
	}
	if subtle.ConstantTimeCompare(sum, m.digest) != 1 {
		return tampered("%s of the %d payload bytes does not match the sender's", m.digestAlg, m.size)
	}
	return nil
}

// WriteTo writes the payload to w. When w is an *os.File and the payload
// is a memfd, the kernel copies it (copy_file_range(2)) without mapping it.
func (m *Message) WriteTo(w io.Writer) (int64, error) {
	if m.closed {
		return 0, ErrClosed
	}
	if f, ok := w.(*os.File); ok && m.fd >= 0 {
		if n, ok, err := m.copyTo(f); ok {
			return n, err
		}
	}
	n, err := w.Write(m.Bytes())
	return int64(n), err
}

// copyTo copies the memfd to f inside the kernel; ok is false when the
// kernel cannot do it for this pair and nothing was written.
func (m *Message) copyTo(f *os.File) (n int64, ok bool, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	var off int64
	var opErr error
	cerr := rc.Write(func(dst uintptr) bool {
		for off < m.size {
			c, e := unix.CopyFileRange(m.fd, &off, int(dst), nil, int(min(m.size-off, 1<<30)), 0)
			if e == unix.EINTR {
				continue
			}
			if e == unix.EAGAIN {
				return false // wait until writable
			}
			if e != nil {
				if off == 0 {
					return true // let the caller fall back
				}
				opErr = os.NewSyscallError("copy_file_range", e)
				return true
			}
			if c == 0 {
				opErr = io.ErrUnexpectedEOF
				return true
			}
		}
		return true
	})
	if cerr != nil && opErr == nil && off > 0 {
		opErr = cerr
	}
	if off == 0 && opErr == nil && m.size > 0 {
		return 0, false, nil
	}
	return off, true, opErr
}

// Close releases the payload: the mapping and the memfd. It is safe to
// call more than once.
func (m *Message) Close() error {
	if m.closed {
		return nil
	}
	m.closed = true
	var err error
	if m.mapped {
		err = page.Unmap(m.data)
	}
	m.data = nil
	if m.fd >= 0 {
		syscall.Close(m.fd)
		m.fd = -1
	}
	return err
}
