package wire

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// MaxFDsPerWrite is the most descriptors one sendmsg(2) may carry on Linux
// (SCM_MAX_FD). Writers split larger batches.
const MaxFDsPerWrite = 253

// MaxFDsInFlight is the most descriptors a Reader ever holds received but
// not yet handed out with a frame: the batch that came with the frame it
// is reading, and one that came with the first bytes of the next. Its
// control buffer takes no more than MaxFDsPerFrame per recvmsg, so the
// kernel never installs more (it discards the rest and reports
// MSG_CTRUNC), whatever a peer sends.
const MaxFDsInFlight = 2 * MaxFDsPerFrame

// ErrStrayFDs reports descriptors that arrived with no frame to claim them.
// The stream of frames and descriptors can no longer be matched up, so the
// connection must be closed.
var ErrStrayFDs = errors.New("wire: descriptors arrived that no frame declared")

// ErrMissingFDs reports a frame that declared descriptors which never
// arrived with its bytes. The connection must be closed.
var ErrMissingFDs = errors.New("wire: frame declared descriptors that did not arrive with it")

// ErrTruncatedControl reports ancillary data cut short by the kernel
// (MSG_CTRUNC). Whatever descriptors arrived have been closed.
var ErrTruncatedControl = errors.New("wire: ancillary data truncated (MSG_CTRUNC)")

// Frame is one decoded frame.
type Frame struct {
	Header
	// Body is the frame without its header. It aliases the reader's buffer
	// and is valid only until the next call to ReadFrame.
	Body []byte
	// FDs are the descriptors the frame carried, in order. The caller owns
	// them and must close them.
	FDs []int
	// Owned reports that Body does not alias the reader's buffer: a frame
	// larger than the buffer is read into memory of its own, which the
	// caller may keep instead of copying.
	Owned bool
}

// MsgReader is the one method of *net.UnixConn that Reader needs.
type MsgReader interface {
	ReadMsgUnix(b, oob []byte) (n, oobn, flags int, addr *net.UnixAddr, err error)
}

const (
	defaultReadBuffer = 64 << 10
	keepReadBuffer    = defaultReadBuffer // a grown buffer up to this size is kept
)

// Reader decodes frames, and the descriptors passed with them, from a Unix
// stream socket.
//
// On a stream socket the kernel delivers a sendmsg's descriptors with the
// recvmsg that returns the first byte that sendmsg carried, never later, and
// never two sendmsgs' descriptors in one recvmsg. The protocol therefore
// requires a sendmsg that carries descriptors to start with the frame that
// claims them all (frames without descriptors may follow it in the same
// sendmsg). Reader records, for each batch of descriptors, the stream
// positions of the bytes that arrived with it, and checks that the next
// frame to declare descriptors starts among those bytes and declares
// exactly as many as arrived. Anything else (descriptors no frame claims, a
// frame whose descriptors did not come with it, a count that differs) is a
// protocol violation: ReadFrame closes every pending descriptor and fails.
//
// A Reader is not safe for concurrent use.
type Reader struct {
	src     MsgReader
	buf     []byte
	spare   []byte // the buffer a large frame grew out of, for the next frame
	r, w    int
	off     int64 // stream position of buf[0]
	oob     []byte
	batches []fdBatch
	err     error

	onPartial func() // OnPartial's
	notified  bool   // onPartial was called for the frame at r
}

// fdBatch is the descriptors one recvmsg returned, with the stream
// positions [start, end) of the bytes it returned: the frame that claims
// them starts in that range.
type fdBatch struct {
	fds        []int
	start, end int64
}

// NewReader returns a Reader that reads from src.
func NewReader(src MsgReader) *Reader {
	return &Reader{
		src: src,
		buf: make([]byte, defaultReadBuffer),
		oob: make([]byte, unix.CmsgSpace(MaxFDsPerFrame*4)),
	}
}

// OnPartial sets f to be called, once per frame, when ReadFrame holds
// part of a frame and is about to wait for the rest. A server uses it to
// bound how long a peer may take to finish a frame it began (a read
// deadline), so that a peer cannot hold a buffer forever by stalling.
func (r *Reader) OnPartial(f func()) { r.onPartial = f }

// ReadFrame returns the next frame. Errors are sticky: after one, every
// later call returns it again, except a read deadline that expired while
// ReadFrame waited (os.ErrDeadlineExceeded): nothing is lost and ReadFrame
// may be called again. io.EOF means the peer closed the connection
// on a frame boundary; io.ErrUnexpectedEOF, in the middle of a frame.
// Errors wrapping ErrMalformed, ErrStrayFDs, ErrMissingFDs or
// ErrTruncatedControl mean the peer broke the protocol.
func (r *Reader) ReadFrame() (Frame, error) {
	if r.err != nil {
		return Frame{}, r.err
	}
	for {
		if r.w-r.r >= HeaderSize {
			h, err := ParseHeader(r.buf[r.r:r.w])
			if err != nil {
				return Frame{}, r.fail(err)
			}
			if r.w-r.r >= int(h.Length) {
				return r.take(h)
			}
			if err := r.checkClaimable(h); err != nil {
				return Frame{}, r.fail(err)
			}
			if need := int(h.Length); need > len(r.buf)-r.r && (r.r > 0 || r.w == len(r.buf)) {
				// The buffer grows with the bytes that arrived, at most
				// doubling, never to a length merely declared: memory
				// follows what a peer sent, not what it announced.
				r.makeRoom(min(need, max(len(r.buf), 2*(r.w-r.r))))
			}
		} else if len(r.buf)-r.r < HeaderSize {
			r.makeRoom(HeaderSize)
		}
		if err := r.checkStray(); err != nil {
			return Frame{}, r.fail(err)
		}
		if r.w > r.r && !r.notified && r.onPartial != nil {
			r.notified = true
			r.onPartial()
		}
		if err := r.fill(); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Nothing was read: the caller may try again.
				return Frame{}, err
			}
			return Frame{}, r.fail(err)
		}
	}
}

// Buffered reports whether a whole frame has already been received, so
// that the next ReadFrame returns without waiting for the peer. A reader
// that answers requests uses it to send its answers before it blocks.
func (r *Reader) Buffered() bool {
	if r.err != nil || r.w-r.r < HeaderSize {
		return false
	}
	h, err := ParseHeader(r.buf[r.r:r.w])
	return err != nil || r.w-r.r >= int(h.Length)
}

// checkStray fails if the oldest pending batch of descriptors can no
// longer be claimed: the next frame starts after every byte that arrived
// with it.
func (r *Reader) checkStray() error {
	if len(r.batches) == 0 {
		return nil
	}
	if b := r.batches[0]; r.off+int64(r.r) >= b.end {
		return fmt.Errorf("%w: %d descriptor(s) arrived with stream bytes %d-%d but no frame starting there declared them", ErrStrayFDs, len(b.fds), b.start, b.end-1)
	}
	return nil
}

// checkClaimable fails at once on descriptors that no frame can claim
// while the frame h, which starts at r.r, has not arrived whole. A batch
// is claimed by a frame that starts among the bytes that came with it and
// declares as many descriptors: h, if h starts there and declares them,
// or a frame after h, if the batch's bytes reach past h's end. A batch
// neither can claim is found stray at once, not when h ends, so that a
// peer cannot pile descriptors up behind a frame it never finishes.
func (r *Reader) checkClaimable(h Header) error {
	pos := r.off + int64(r.r)
	end := pos + int64(h.Length)
	for i, b := range r.batches {
		if b.end > end {
			continue // a later frame may claim it
		}
		if i == 0 && b.start <= pos && pos < b.end && int(h.NFDs) == len(b.fds) {
			continue // h's own
		}
		return fmt.Errorf("%w: %d descriptor(s) arrived inside %s frame %d (with stream bytes %d-%d; the frame spans %d-%d and declares %d); a sendmsg that carries descriptors must start with the frame that claims them", ErrStrayFDs, len(b.fds), h.Op, h.ID, b.start, b.end-1, pos, end-1, h.NFDs)
	}
	return nil
}

func (r *Reader) take(h Header) (Frame, error) {
	if err := r.checkStray(); err != nil {
		return Frame{}, r.fail(err)
	}
	r.notified = false
	f := Frame{Header: h, Body: r.buf[r.r+HeaderSize : r.r+int(h.Length)]}
	if h.NFDs > 0 {
		pos := r.off + int64(r.r)
		if len(r.batches) == 0 || r.batches[0].start > pos {
			return Frame{}, r.fail(fmt.Errorf("%w: %s frame %d declared %d descriptor(s), none came with its first byte", ErrMissingFDs, h.Op, h.ID, h.NFDs))
		}
		b := r.batches[0]
		if len(b.fds) != int(h.NFDs) {
			return Frame{}, r.fail(fmt.Errorf("%w: %s frame %d declared %d descriptor(s) but its sendmsg carried %d", ErrStrayFDs, h.Op, h.ID, h.NFDs, len(b.fds)))
		}
		f.FDs = b.fds
		r.batches[0] = fdBatch{}
		if len(r.batches) == 1 {
			r.batches = r.batches[:0] // keep the array for the next batch
		} else {
			r.batches = r.batches[1:]
		}
	}
	r.r += int(h.Length)
	if r.r == r.w {
		r.off += int64(r.r)
		r.r, r.w = 0, 0
		if len(r.buf) > keepReadBuffer {
			// A large inline frame grew the buffer: the frame keeps it,
			// the reader goes back to the one it grew out of.
			f.Owned = true
			r.buf, r.spare = r.spare, nil
			if r.buf == nil {
				r.buf = make([]byte, defaultReadBuffer)
			}
		}
	}
	return f, nil
}

// makeRoom ensures that a frame of n bytes starting at r.r fits in buf.
// The caller must not hold any Body from a previous frame.
func (r *Reader) makeRoom(n int) {
	if n > len(r.buf) {
		nb := make([]byte, n)
		copy(nb, r.buf[r.r:r.w])
		if len(r.buf) == defaultReadBuffer {
			r.spare = r.buf
		}
		r.buf = nb
	} else {
		copy(r.buf, r.buf[r.r:r.w])
	}
	r.off += int64(r.r)
	r.w -= r.r
	r.r = 0
}

func (r *Reader) fill() error {
	if r.r > 0 && r.r == r.w {
		r.off += int64(r.r)
		r.r, r.w = 0, 0
	}
	if r.w == len(r.buf) {
		r.makeRoom(len(r.buf))
	}
	n, oobn, flags, _, err := r.src.ReadMsgUnix(r.buf[r.w:], r.oob)
	if n < 0 {
		n = 0 // some error paths of the net package report -1
	}
	if oobn > 0 {
		start := r.off + int64(r.w)
		if perr := r.collect(r.oob[:oobn], start, start+int64(n)); perr != nil && err == nil {
			err = perr
		}
	}
	if flags&unix.MSG_CTRUNC != 0 && err == nil {
		err = fmt.Errorf("%w: more descriptors came with one sendmsg than a frame may carry (%d), or the receiver had no descriptor left for them", ErrTruncatedControl, MaxFDsPerFrame)
	}
	r.w += n
	if n == 0 && errors.Is(err, io.EOF) {
		err = nil // net reports end of stream as an error wrapping io.EOF
	}
	if err != nil {
		return err
	}
	if n == 0 {
		if r.r == r.w {
			return io.EOF
		}
		return fmt.Errorf("%w: connection closed %d bytes into a frame", io.ErrUnexpectedEOF, r.w-r.r)
	}
	return nil
}

// collect records the descriptors in the control message buffer as one
// batch that arrived with the stream bytes [start, end).
func (r *Reader) collect(oob []byte, start, end int64) error {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return fmt.Errorf("%w: unparseable ancillary data: %v", ErrMalformed, err)
	}
	var bad error
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			bad = fmt.Errorf("%w: unparseable SCM_RIGHTS: %v", ErrMalformed, err)
			continue
		}
		if fds == nil {
			fds = got // the usual single SCM_RIGHTS message: no copy
		} else {
			fds = append(fds, got...)
		}
	}
	if len(fds) > 0 {
		r.batches = append(r.batches, fdBatch{fds: fds, start: start, end: end})
		if end == start {
			// Descriptors with no byte at all cannot be claimed.
			bad = fmt.Errorf("%w: %d descriptor(s) arrived without data", ErrStrayFDs, len(fds))
		}
	}
	return bad
}

// fail records err, closes every descriptor not yet handed out, and
// returns err.
func (r *Reader) fail(err error) error {
	r.err = err
	r.Close()
	return err
}

// Close closes the descriptors received but not yet claimed by a frame.
// It does not close the underlying connection.
func (r *Reader) Close() {
	for _, b := range r.batches {
		CloseFDs(b.fds)
	}
	r.batches = nil
}

// CloseFDs closes every descriptor in fds.
func CloseFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// MsgWriter is the subset of *net.UnixConn that Write needs.
type MsgWriter interface {
	WriteMsgUnix(b, oob []byte, addr *net.UnixAddr) (n, oobn int, err error)
	Write(b []byte) (int, error)
}

// WriteFrames writes buf, which holds whole frames, to c. fds are the
// descriptors those frames carry, in order, and fdAt[i] the offset in buf
// of the frame that carries fds[i]. Each descriptor-carrying frame starts
// its own sendmsg, as the protocol requires; frames without descriptors
// share a sendmsg with the frame before them. The descriptors stay owned by
// the caller.
func WriteFrames(c MsgWriter, buf []byte, fds, fdAt []int) error {
	if len(fds) == 0 {
		return Write(c, buf, nil)
	}
	if fdAt[0] > 0 {
		if err := Write(c, buf[:fdAt[0]], nil); err != nil {
			return err
		}
	}
	for i := 0; i < len(fds); {
		j := i + 1
		for j < len(fds) && fdAt[j] == fdAt[i] {
			j++ // the same frame carries several
		}
		end := len(buf)
		if j < len(fds) {
			end = fdAt[j]
		}
		if err := Write(c, buf[fdAt[i]:end], fds[i:j]); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// Write writes b to c with one sendmsg, attaching fds (at most
// MaxFDsPerWrite) to its first byte, and then, if the kernel took only
// part of b, the rest. b must start with the frame that claims every
// descriptor in fds. The descriptors stay owned by the caller; the kernel
// holds its own references once Write returns.
func Write(c MsgWriter, b []byte, fds []int) error {
	if len(fds) > MaxFDsPerWrite {
		return fmt.Errorf("wire: %d descriptors in one write, at most %d", len(fds), MaxFDsPerWrite)
	}
	if len(fds) == 0 {
		_, err := c.Write(b)
		return err
	}
	if len(b) == 0 {
		return errors.New("wire: descriptors need at least one byte of frame to travel with")
	}
	n, _, err := c.WriteMsgUnix(b, unix.UnixRights(fds...), nil)
	if err != nil {
		return err
	}
	if n < len(b) {
		_, err = c.Write(b[n:])
	}
	return err
}

// PeerCred returns the credentials the kernel recorded for the other end
// of uc (SO_PEERCRED): a client's when it connected, a server's when it
// listened.
func PeerCred(uc *net.UnixConn) (*unix.Ucred, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, os.NewSyscallError("getsockopt SO_PEERCRED", cerr)
	}
	return cred, nil
}
