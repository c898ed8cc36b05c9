package floor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/bench/rawsock"
)

// Mechanism is how a payload travels between client and peer.
type Mechanism int

const (
	// Copy sends the payload's bytes through the socket.
	Copy Mechanism = iota
	// Memfd sends a sealed memfd holding the payload with SCM_RIGHTS.
	Memfd
)

// String returns "copy" or "memfd".
func (m Mechanism) String() string {
	switch m {
	case Copy:
		return "copy"
	case Memfd:
		return "memfd"
	}
	return fmt.Sprintf("Mechanism(%d)", int(m))
}

func (m Mechanism) valid() bool { return m == Copy || m == Memfd }

// MaxPayload is the largest payload either side accepts.
const MaxPayload = 4 << 30

// PipelineWindow is the most requests Pipeline has outstanding at once;
// deeper pipelines are sent as successive windows of this many.
const PipelineWindow = 128

// memfdName is the NUL-terminated name of the memfds the client creates,
// as shown in /proc/PID/fd.
var memfdName = []byte("machq-bench-floor\x00")

// memfdCreate is memfd_create(2) with MFD_CLOEXEC|MFD_ALLOW_SEALING.
func memfdCreate() (int, error) {
	fd, _, e := unix.Syscall(unix.SYS_MEMFD_CREATE, uintptr(unsafe.Pointer(&memfdName[0])), unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING, 0)
	if e != 0 {
		return -1, os.NewSyscallError("memfd_create", e)
	}
	return int(fd), nil
}

// Listen creates a Unix stream socket listening at path and returns its
// descriptor (close-on-exec, blocking), to be handed to Serve. An
// existing file at path is an error.
func Listen(path string) (int, error) { return rawsock.Listen(path) }

// Client is one connection to a floor peer. A Client is not safe for
// concurrent use.
type Client struct {
	fd     int
	mech   Mechanism
	rd     *stream
	hdr    [hdrLen]byte
	wbuf   []byte       // requests written contiguously
	iov    []unix.Iovec // requests written from where they lie
	oob    []byte       // control message scratch
	fds    []int        // memfds being sent
	big    []byte       // receive buffer for payloads over readBufSize
	closed bool
}

// Dial connects to the floor peer listening at path, which must serve
// mech.
func Dial(path string, mech Mechanism) (*Client, error) {
	if !mech.valid() {
		return nil, fmt.Errorf("floor: unknown mechanism %d", int(mech))
	}
	fd, err := rawsock.Dial(path)
	if err != nil {
		return nil, err
	}
	return &Client{fd: fd, mech: mech, rd: newStream(fd, mech == Memfd)}, nil
}

// Mechanism returns the mechanism the client uses.
func (c *Client) Mechanism() Mechanism { return c.mech }

// RoundTrip stores p and retrieves it; got is called with the payload
// received (valid only during the call) before RoundTrip returns.
func (c *Client) RoundTrip(p []byte, got func([]byte)) error {
	if err := c.check(p); err != nil {
		return err
	}
	if err := c.sendStores(p, 1); err != nil {
		return err
	}
	if err := c.readAcks(1); err != nil {
		return err
	}
	if err := c.sendRetrieves(1); err != nil {
		return err
	}
	return c.readData(1, got)
}

// Pipeline sends depth stores of p, reads the depth acknowledgements,
// then sends depth retrieves and reads the depth payloads, calling got
// for each (valid only during that call). Each batch of requests goes out
// in one write; depths over PipelineWindow are done a window at a time.
// With Memfd, each store carries its own memfd.
func (c *Client) Pipeline(p []byte, depth int, got func([]byte)) error {
	if err := c.check(p); err != nil {
		return err
	}
	if depth < 0 {
		return fmt.Errorf("floor: negative pipeline depth %d", depth)
	}
	for left := depth; left > 0; {
		k := min(left, PipelineWindow)
		if err := c.sendStores(p, k); err != nil {
			return err
		}
		if err := c.readAcks(k); err != nil {
			return err
		}
		left -= k
	}
	for left := depth; left > 0; {
		k := min(left, PipelineWindow)
		if err := c.sendRetrieves(k); err != nil {
			return err
		}
		if err := c.readData(k, got); err != nil {
			return err
		}
		left -= k
	}
	return nil
}

// Close closes the connection; the peer then frees everything the
// connection stored.
func (c *Client) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	c.rd.closeFds()
	c.big = nil
	if err := unix.Close(c.fd); err != nil {
		return os.NewSyscallError("close", err)
	}
	return nil
}

var errClosed = errors.New("floor: client is closed")

func (c *Client) check(p []byte) error {
	if c.closed {
		return errClosed
	}
	if len(p) > MaxPayload {
		return fmt.Errorf("floor: payload of %d bytes exceeds MaxPayload (%d)", len(p), MaxPayload)
	}
	return nil
}

// sendStores writes k stores of p in one write.
func (c *Client) sendStores(p []byte, k int) error {
	if c.mech == Memfd {
		return c.sendPages(p, k)
	}
	hdr := putHdr(c.hdr[:0], opStore, len(p))
	if len(p) <= inlineMax {
		b := c.wbuf[:0]
		for range k {
			b = append(b, hdr...)
			b = append(b, p...)
		}
		c.wbuf = b
		return rawsock.WriteFull(c.fd, b)
	}
	iov := c.iov[:0]
	for range k {
		iov = appendIov(iov, hdr)
		iov = appendIov(iov, p)
	}
	c.iov = iov
	err := writevFull(c.fd, iov)
	clear(iov)
	return err
}

// sendPages writes k Memfd stores of p in one sendmsg, each with its own
// sealed memfd.
func (c *Client) sendPages(p []byte, k int) error {
	b := c.wbuf[:0]
	fds := c.fds[:0]
	defer func() {
		closeAll(fds)
		c.fds = fds[:0]
	}()
	for range k {
		if len(p) > 0 {
			fd, err := sealedMemfd(p)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
		}
		b = putHdr(b, opStoreFd, len(p))
	}
	c.wbuf = b
	var err error
	c.oob, err = sendFds(c.fd, b, fds, c.oob)
	return err
}

// sendRetrieves writes k retrieves in one write.
func (c *Client) sendRetrieves(k int) error {
	b := c.wbuf[:0]
	for range k {
		b = putHdr(b, opRetrieve, 0)
	}
	c.wbuf = b
	return rawsock.WriteFull(c.fd, b)
}

// readAcks reads k acknowledgements.
func (c *Client) readAcks(k int) error {
	for range k {
		op, n, err := c.rd.header()
		if err != nil {
			return c.readErr(err)
		}
		if op != opAck || n != 0 {
			return fmt.Errorf("%w: got %q (length %d) where a store acknowledgement belongs", errProtocol, op, n)
		}
	}
	return nil
}

// readData reads k retrieve replies, calling got with each payload.
func (c *Client) readData(k int, got func([]byte)) error {
	for range k {
		op, n, err := c.rd.header()
		if err != nil {
			return c.readErr(err)
		}
		switch {
		case op == opEmpty:
			return errors.New("floor: peer's FIFO is empty")
		case op != opData:
			return fmt.Errorf("%w: got %q where retrieved data belongs", errProtocol, op)
		case n > MaxPayload:
			return fmt.Errorf("%w: peer announced %d bytes", errProtocol, n)
		}
		if c.mech == Memfd {
			err = c.readPage(int(n), got)
		} else {
			err = c.readCopy(int(n), got)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *Client) readCopy(n int, got func([]byte)) error {
	if n <= len(c.rd.buf) {
		if err := c.rd.need(n); err != nil {
			return c.readErr(eofIsUnexpected(err))
		}
		got(c.rd.take(n))
		return nil
	}
	if cap(c.big) < n {
		c.big = nil
		c.big = make([]byte, n)
	}
	b := c.big[:n]
	if err := c.rd.readFull(b); err != nil {
		return c.readErr(err)
	}
	got(b)
	return nil
}

func (c *Client) readPage(n int, got func([]byte)) error {
	if n == 0 {
		got(nil)
		return nil
	}
	fd, ok := c.rd.fds.Pop()
	if !ok {
		return fmt.Errorf("%w: retrieved data without its memfd", errProtocol)
	}
	defer unix.Close(fd)
	m, err := mapPage(fd, n, unix.PROT_READ, true)
	if err != nil {
		return err
	}
	got(m)
	return unmapPage(m)
}

func (c *Client) readErr(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("floor: peer closed the connection: %w", err)
	}
	return err
}

// sealedMemfd returns a new memfd holding p, sealed against every change.
func sealedMemfd(p []byte) (int, error) {
	fd, err := memfdCreate()
	if err != nil {
		return -1, err
	}
	for off := 0; off < len(p); {
		n, err := unix.Pwrite(fd, p[off:], int64(off))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			unix.Close(fd)
			return -1, os.NewSyscallError("pwrite", err)
		}
		off += n
	}
	if err := seal(fd); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func seal(fd int) error {
	const seals = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		return os.NewSyscallError("fcntl(F_ADD_SEALS)", err)
	}
	return nil
}

// mapPage maps n bytes of fd shared with prot, populating the mapping up
// front if populate is set.
func mapPage(fd, n, prot int, populate bool) ([]byte, error) {
	flags := unix.MAP_SHARED
	if populate {
		flags |= unix.MAP_POPULATE
	}
	ptr, err := unix.MmapPtr(fd, 0, nil, uintptr(n), prot, flags)
	if err != nil {
		return nil, os.NewSyscallError("mmap", err)
	}
	return unsafe.Slice((*byte)(ptr), n), nil
}

func unmapPage(m []byte) error {
	if len(m) == 0 {
		return nil
	}
	if err := unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(m)), uintptr(len(m))); err != nil {
		return os.NewSyscallError("munmap", err)
	}
	return nil
}
