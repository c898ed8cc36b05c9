package floor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/bench/fifo"
	"github.com/machq/machq/internal/bench/rawsock"
)

const (
	hdrLen = 9

	opStore    = 'S'
	opStoreFd  = 'P'
	opRetrieve = 'R'
	opAck      = 'A'
	opData     = 'D'
	opEmpty    = 'E'

	// readBufSize is the size of each side's read buffer. Payloads up
	// to this size are handed to callers straight from it.
	readBufSize = 64 << 10
	// inlineMax is the largest payload copied next to its header into
	// one contiguous write; larger ones are written from where they lie
	// with writev.
	inlineMax = 4 << 10
	// maxFdsPerMsg is SCM_MAX_FD, the most descriptors one sendmsg may
	// carry.
	maxFdsPerMsg = 253
	// iovMax is IOV_MAX, the most buffers one writev may take.
	iovMax = 1024
)

var (
	errCtrunc   = errors.New("floor: control message truncated; descriptors were lost")
	errProtocol = errors.New("floor: protocol error")
)

func putHdr(b []byte, op byte, n int) []byte {
	b = append(b, op)
	return binary.LittleEndian.AppendUint64(b, uint64(n))
}

func parseHdr(b []byte) (op byte, n uint64) {
	return b[0], binary.LittleEndian.Uint64(b[1:hdrLen])
}

// stream is the buffered reading side of a connected stream socket. With
// msg set it reads with recvmsg and queues the descriptors that arrive.
type stream struct {
	fd   int
	msg  bool
	buf  []byte
	r, w int
	fds  fifo.Queue[int] // received and not yet claimed, in arrival order
	oob  []byte
	mh   unix.Msghdr
	iov  unix.Iovec
}

func newStream(fd int, msg bool) *stream {
	s := &stream{fd: fd, msg: msg, buf: make([]byte, readBufSize)}
	if msg {
		s.oob = make([]byte, unix.CmsgSpace(4*maxFdsPerMsg))
	}
	return s
}

func (s *stream) buffered() int { return s.w - s.r }

// closeFds closes every received descriptor not yet claimed.
func (s *stream) closeFds() { s.fds.Drain(func(fd int) { unix.Close(fd) }) }

// readSome reads at least one byte into p, which must not be empty. It
// returns io.EOF when the peer has closed its side.
func (s *stream) readSome(p []byte) (int, error) {
	for {
		var n int
		var err error
		if s.msg {
			var oobn, flags int
			n, oobn, flags, err = s.recvmsg(p)
			if err == nil {
				perr := s.takeRights(s.oob[:oobn])
				if perr == nil && flags&unix.MSG_CTRUNC != 0 {
					perr = errCtrunc
				}
				if perr != nil {
					return 0, perr
				}
			}
		} else {
			n, err = unix.Read(s.fd, p)
		}
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, os.NewSyscallError("read", err)
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// recvmsg is recvmsg(2) into p and the control buffer, through a message
// header the stream reuses.
func (s *stream) recvmsg(p []byte) (n, oobn, flags int, err error) {
	s.iov.Base = &p[0]
	s.iov.SetLen(len(p))
	s.mh = unix.Msghdr{Iov: &s.iov, Control: &s.oob[0]}
	s.mh.SetIovlen(1)
	s.mh.SetControllen(len(s.oob))
	r, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.mh)), unix.MSG_CMSG_CLOEXEC)
	s.iov.Base = nil
	if e != 0 {
		return 0, 0, 0, e
	}
	return int(r), int(s.mh.Controllen), int(s.mh.Flags), nil
}

// takeRights queues the descriptors of every SCM_RIGHTS message in oob.
func (s *stream) takeRights(oob []byte) error {
	hlen := unix.CmsgLen(0)
	for len(oob) >= hlen {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hlen || l > len(oob) {
			return fmt.Errorf("%w: malformed control message", errProtocol)
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS {
			for b := oob[hlen:l]; len(b) >= 4; b = b[4:] {
				s.fds.Push(int(int32(binary.NativeEndian.Uint32(b))))
			}
		}
		next := unix.CmsgSpace(l - hlen)
		if next >= len(oob) {
			break
		}
		oob = oob[next:]
	}
	return nil
}

// need reads until at least n bytes are buffered; n must not exceed the
// buffer. It returns io.EOF only if the peer closed with nothing buffered.
func (s *stream) need(n int) error {
	if s.r == s.w {
		s.r, s.w = 0, 0
	} else if len(s.buf)-s.r < n {
		s.w = copy(s.buf, s.buf[s.r:s.w])
		s.r = 0
	}
	for s.w-s.r < n {
		k, err := s.readSome(s.buf[s.w:])
		if err != nil {
			if err == io.EOF && s.w > s.r {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		s.w += k
	}
	return nil
}

// take returns the next n buffered bytes, valid until the next read.
func (s *stream) take(n int) []byte {
	b := s.buf[s.r : s.r+n]
	s.r += n
	return b
}

// header reads the next header.
func (s *stream) header() (op byte, n uint64, err error) {
	if s.buffered() < hdrLen {
		if err := s.need(hdrLen); err != nil {
			return 0, 0, err
		}
	}
	op, n = parseHdr(s.take(hdrLen))
	return op, n, nil
}

// readFull fills dst from the buffer and then the socket. Large reads go
// straight into dst.
func (s *stream) readFull(dst []byte) error {
	k := copy(dst, s.buf[s.r:s.w])
	s.r += k
	dst = dst[k:]
	for len(dst) > 0 {
		if len(dst) < len(s.buf)/2 {
			if err := s.need(len(dst)); err != nil {
				return eofIsUnexpected(err)
			}
			copy(dst, s.take(len(dst)))
			return nil
		}
		k, err := s.readSome(dst)
		if err != nil {
			return eofIsUnexpected(err)
		}
		dst = dst[k:]
	}
	return nil
}

func eofIsUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendIov appends b to iov unless it is empty.
func appendIov(iov []unix.Iovec, b []byte) []unix.Iovec {
	if len(b) == 0 {
		return iov
	}
	v := unix.Iovec{Base: &b[0]}
	v.SetLen(len(b))
	return append(iov, v)
}

// writevFull writes every buffer of iov to fd with writev, resuming after
// short writes. It modifies iov's entries.
func writevFull(fd int, iov []unix.Iovec) error {
	for len(iov) > 0 {
		cnt := min(len(iov), iovMax)
		r, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(cnt))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return os.NewSyscallError("writev", e)
		}
		n := uint64(r)
		for len(iov) > 0 && (n > 0 || iov[0].Len == 0) {
			l := uint64(iov[0].Len)
			if n >= l {
				n -= l
				iov = iov[1:]
				continue
			}
			iov[0].Base = (*byte)(unsafe.Add(unsafe.Pointer(iov[0].Base), n))
			iov[0].SetLen(int(l - n))
			n = 0
		}
	}
	return nil
}

// putRights builds into b a control message passing fds.
func putRights(b []byte, fds []int) []byte {
	n := unix.CmsgSpace(4 * len(fds))
	if cap(b) < n {
		b = make([]byte, n)
	}
	b = b[:n]
	clear(b)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.SOL_SOCKET
	h.Type = unix.SCM_RIGHTS
	h.SetLen(unix.CmsgLen(4 * len(fds)))
	data := b[unix.CmsgLen(0):]
	for i, fd := range fds {
		binary.NativeEndian.PutUint32(data[4*i:], uint32(fd))
	}
	return b
}

// sendFds writes all of b to fd, attaching fds (at most maxFdsPerMsg) to
// its first byte. oob is scratch space, returned for reuse.
func sendFds(fd int, b []byte, fds []int, oob []byte) ([]byte, error) {
	if len(fds) == 0 {
		return oob, rawsock.WriteFull(fd, b)
	}
	oob = putRights(oob, fds)
	for {
		n, err := unix.SendmsgN(fd, b, oob, nil, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return oob, os.NewSyscallError("sendmsg", err)
		}
		return oob, rawsock.WriteFull(fd, b[n:])
	}
}

// closeAll closes every descriptor in fds.
func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
