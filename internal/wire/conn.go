package wire

import (
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// MaxFDsPerWrite is the most descriptors one sendmsg(2) may carry on Linux
// (SCM_MAX_FD). Writers split larger batches.
const MaxFDsPerWrite = 253

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
}

// MsgReader is the one method of *net.UnixConn that Reader needs.
type MsgReader interface {
	ReadMsgUnix(b, oob []byte) (n, oobn, flags int, addr *net.UnixAddr, err error)
}

const (
	defaultReadBuffer = 64 << 10
	keepReadBuffer    = 256 << 10 // a grown buffer up to this size is kept
	oobSize           = (MaxFDsPerWrite*4 + 64 + 15) &^ 15
)

// Reader decodes frames, and the descriptors passed with them, from a Unix
// stream socket.
//
// On a stream socket the kernel delivers a sendmsg's descriptors with the
// recvmsg that returns the first byte it sent, and never later. Reader keeps
// the descriptors it has received in arrival order and gives each frame, as
// it completes, the number its header declares. When every byte received
// has been decoded, any descriptor still unclaimed was sent without a frame
// to declare it: ReadFrame closes it and fails with ErrStrayFDs.
//
// A Reader is not safe for concurrent use.
type Reader struct {
	src  MsgReader
	buf  []byte
	r, w int
	oob  []byte
	fds  []int
	err  error
}

// NewReader returns a Reader that reads from src.
func NewReader(src MsgReader) *Reader {
	return &Reader{
		src: src,
		buf: make([]byte, defaultReadBuffer),
		oob: make([]byte, unix.CmsgSpace(MaxFDsPerWrite*4)),
	}
}

// ReadFrame returns the next frame. Errors are sticky: after one, every
// later call returns it again. io.EOF means the peer closed the connection
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
			if int(h.Length) > len(r.buf)-r.r {
				r.makeRoom(int(h.Length))
			}
		} else if len(r.buf)-r.r < HeaderSize {
			r.makeRoom(HeaderSize)
		}
		if r.r == r.w && len(r.fds) > 0 {
			n := len(r.fds)
			return Frame{}, r.fail(fmt.Errorf("%w: %d descriptor(s) closed", ErrStrayFDs, n))
		}
		if err := r.fill(); err != nil {
			return Frame{}, r.fail(err)
		}
	}
}

func (r *Reader) take(h Header) (Frame, error) {
	f := Frame{Header: h, Body: r.buf[r.r+HeaderSize : r.r+int(h.Length)]}
	if h.NFDs > 0 {
		if len(r.fds) < int(h.NFDs) {
			return Frame{}, r.fail(fmt.Errorf("%w: %s frame %d declared %d, %d arrived", ErrMissingFDs, h.Op, h.ID, h.NFDs, len(r.fds)))
		}
		f.FDs = make([]int, h.NFDs)
		copy(f.FDs, r.fds)
		r.fds = append(r.fds[:0], r.fds[h.NFDs:]...)
	}
	r.r += int(h.Length)
	if r.r == r.w {
		r.r, r.w = 0, 0
		if len(r.buf) > keepReadBuffer {
			// A large inline frame grew the buffer; do not keep it.
			r.buf = make([]byte, defaultReadBuffer)
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
		r.buf = nb
	} else {
		copy(r.buf, r.buf[r.r:r.w])
	}
	r.w -= r.r
	r.r = 0
}

func (r *Reader) fill() error {
	if r.r > 0 && r.r == r.w {
		r.r, r.w = 0, 0
	}
	if r.w == len(r.buf) {
		r.makeRoom(len(r.buf))
	}
	n, oobn, flags, _, err := r.src.ReadMsgUnix(r.buf[r.w:], r.oob)
	if oobn > 0 {
		if perr := r.collect(r.oob[:oobn]); perr != nil && err == nil {
			err = perr
		}
	}
	if flags&unix.MSG_CTRUNC != 0 && err == nil {
		err = ErrTruncatedControl
	}
	r.w += n
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

// collect appends every descriptor in the control message buffer to r.fds.
func (r *Reader) collect(oob []byte) error {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return fmt.Errorf("%w: unparseable ancillary data: %v", ErrMalformed, err)
	}
	var bad error
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			bad = fmt.Errorf("%w: unparseable SCM_RIGHTS: %v", ErrMalformed, err)
			continue
		}
		r.fds = append(r.fds, fds...)
	}
	return bad
}

// fail records err, closes every descriptor not yet handed out, and
// returns err.
func (r *Reader) fail(err error) error {
	r.err = err
	CloseFDs(r.fds)
	r.fds = nil
	return err
}

// Close closes the descriptors received but not yet claimed by a frame.
// It does not close the underlying connection.
func (r *Reader) Close() {
	CloseFDs(r.fds)
	r.fds = nil
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

// Write writes b, which holds whole frames, to c, attaching fds (at most
// MaxFDsPerWrite) to its first byte. The descriptors stay owned by the
// caller; the kernel holds its own references once Write returns.
func Write(c MsgWriter, b []byte, fds []int) error {
	if len(fds) > MaxFDsPerWrite {
		return fmt.Errorf("wire: %d descriptors in one write, at most %d", len(fds), MaxFDsPerWrite)
	}
	if len(fds) == 0 {
		_, err := c.Write(b)
		return err
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
