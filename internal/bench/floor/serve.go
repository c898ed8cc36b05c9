package floor

import (
	"context"
	"fmt"
	"io"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/bench/fifo"
	"github.com/machq/machq/internal/bench/rawsock"
)

// Serve accepts connections on ln, a listening Unix stream socket such as
// Listen returns, and serves each on its own goroutine with its own FIFO,
// using mech. Serve owns ln: it closes it before returning. When ctx is
// done, Serve stops accepting, shuts every connection down, waits for
// their goroutines to free what they stored, and returns nil. It returns
// an error if accepting fails for another reason. A connection that
// breaks the protocol is dropped without affecting the others.
func Serve(ctx context.Context, ln int, mech Mechanism) error {
	return serve(ctx, ln, mech, nil)
}

// serve is Serve with a hook called with each connection's outcome after
// the connection is closed and everything it stored is freed.
func serve(ctx context.Context, ln int, mech Mechanism, connDone func(error)) error {
	if !mech.valid() {
		unix.Close(ln)
		return fmt.Errorf("floor: unknown mechanism %d", int(mech))
	}
	return rawsock.Serve(ctx, ln, func(fd int) error { return serveConn(fd, mech) }, connDone)
}

// conn is the peer's side of one connection.
type conn struct {
	fd   int
	mech Mechanism
	rd   *stream

	bufs  fifo.Queue[[]byte] // Copy: stored payloads, oldest first
	pages fifo.Queue[page]   // Memfd: stored memfds, oldest first
	free  [][]byte           // Copy: payload buffers for reuse

	// Replies not yet written: pend holds headers and small payloads;
	// each splice marks a larger payload written after pend[:off].
	pend    []byte
	splices []splice
	outFds  []int
	iov     []unix.Iovec
	oob     []byte
}

type page struct {
	fd int // -1 for an empty payload
	n  int
}

type splice struct {
	off int
	b   []byte
}

func serveConn(fd int, mech Mechanism) error {
	c := &conn{fd: fd, mech: mech, rd: newStream(fd, mech == Memfd)}
	defer c.release()
	return c.run()
}

// release closes every descriptor the connection holds.
func (c *conn) release() {
	c.rd.closeFds()
	c.pages.Drain(func(p page) {
		if p.fd >= 0 {
			unix.Close(p.fd)
		}
	})
	closeAll(c.outFds)
	c.outFds = nil
}

func (c *conn) run() error {
	for {
		if c.rd.buffered() < hdrLen {
			if err := c.flush(); err != nil {
				return err
			}
		}
		op, n, err := c.rd.header()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if n > MaxPayload {
			return fmt.Errorf("%w: request announces %d bytes", errProtocol, n)
		}
		switch {
		case op == opStore && c.mech == Copy:
			b := c.buffer(int(n))
			if len(b) > c.rd.buffered() {
				if err := c.flush(); err != nil {
					return err
				}
			}
			if err := c.rd.readFull(b); err != nil {
				return err
			}
			c.bufs.Push(b)
			c.pend = putHdr(c.pend, opAck, 0)
		case op == opStoreFd && c.mech == Memfd:
			p := page{fd: -1, n: int(n)}
			if n > 0 {
				var ok bool
				if p.fd, ok = c.rd.fds.Pop(); !ok {
					return fmt.Errorf("%w: store of %d bytes without a memfd", errProtocol, n)
				}
			}
			c.pages.Push(p)
			c.pend = putHdr(c.pend, opAck, 0)
		case op == opRetrieve && n == 0:
			c.retrieve()
		default:
			return fmt.Errorf("%w: unexpected request %q (length %d) on a %s connection", errProtocol, op, n, c.mech)
		}
		if len(c.pend) >= readBufSize || len(c.splices) >= iovMax/2-1 || len(c.outFds) >= maxFdsPerMsg {
			if err := c.flush(); err != nil {
				return err
			}
		}
	}
}

// retrieve queues the reply to a retrieve.
func (c *conn) retrieve() {
	if c.mech == Memfd {
		p, ok := c.pages.Pop()
		if !ok {
			c.pend = putHdr(c.pend, opEmpty, 0)
			return
		}
		c.pend = putHdr(c.pend, opData, p.n)
		if p.fd >= 0 {
			c.outFds = append(c.outFds, p.fd)
		}
		return
	}
	b, ok := c.bufs.Pop()
	if !ok {
		c.pend = putHdr(c.pend, opEmpty, 0)
		return
	}
	c.pend = putHdr(c.pend, opData, len(b))
	if len(b) <= inlineMax {
		c.pend = append(c.pend, b...)
		c.recycle(b)
		return
	}
	c.splices = append(c.splices, splice{off: len(c.pend), b: b})
}

// buffer returns a payload buffer of n bytes, reusing a freed one when
// one is large enough. When none is, it drops one, so that the free list
// never holds more buffers than the FIFO has held.
func (c *conn) buffer(n int) []byte {
	for i := len(c.free) - 1; i >= 0; i-- {
		if b := c.free[i]; cap(b) >= n {
			last := len(c.free) - 1
			c.free[i] = c.free[last]
			c.free[last] = nil
			c.free = c.free[:last]
			return b[:n]
		}
	}
	if last := len(c.free) - 1; last >= 0 {
		c.free[last] = nil
		c.free = c.free[:last]
	}
	return make([]byte, n)
}

func (c *conn) recycle(b []byte) {
	if cap(b) > 0 {
		c.free = append(c.free, b)
	}
}

// flush writes every pending reply.
func (c *conn) flush() error {
	if len(c.pend) == 0 && len(c.splices) == 0 {
		return nil
	}
	var err error
	switch {
	case c.mech == Memfd:
		c.oob, err = sendFds(c.fd, c.pend, c.outFds, c.oob)
		closeAll(c.outFds)
		c.outFds = c.outFds[:0]
	case len(c.splices) == 0:
		err = rawsock.WriteFull(c.fd, c.pend)
	default:
		iov := c.iov[:0]
		prev := 0
		for _, s := range c.splices {
			iov = appendIov(iov, c.pend[prev:s.off])
			iov = appendIov(iov, s.b)
			prev = s.off
		}
		iov = appendIov(iov, c.pend[prev:])
		err = writevFull(c.fd, iov)
		clear(iov)
		c.iov = iov[:0]
		for i, s := range c.splices {
			c.recycle(s.b)
			c.splices[i] = splice{}
		}
		c.splices = c.splices[:0]
	}
	c.pend = c.pend[:0]
	return err
}
