package mqueue

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/bench/rawsock"
)

// DefaultDepth is the pipeline depth Dial sizes the queues for.
const DefaultDepth = 16

var (
	errPeerGone      = errors.New("mqueue: the peer closed the control connection")
	errControlClosed = errors.New("mqueue: control connection closed")
	errClosed        = errors.New("mqueue: client is closed")
	errProtocol      = errors.New("mqueue: protocol error")
)

// Client is one pair of queues served by a peer. A Client is not safe for
// concurrent use.
type Client struct {
	ctl      int // control connection to the peer
	req, rsp int // request and response queues
	msgsize  int
	maxmsg   int
	buf      []byte // receive buffer, mq_msgsize long
	prio     uint32
	names    [2]string

	dead      atomic.Bool // the peer is gone
	closing   atomic.Bool
	watchDone chan struct{}
	closed    bool
}

// Dial is DialDepth with DefaultDepth.
func Dial(path string, size int) (*Client, error) {
	return DialDepth(path, size, DefaultDepth)
}

// DialDepth creates a pair of queues for payloads of up to size bytes
// and has the peer whose control socket listens at path serve them. The
// queues hold depth messages each, or as many as the kernel's limits
// allow if fewer (see QueueDepth). A size over MaxSize fails with an
// error wrapping ErrTooLarge.
func DialDepth(path string, size, depth int) (*Client, error) {
	l := getLimits()
	if l.err != nil {
		return nil, fmt.Errorf("mqueue: POSIX message queues are unavailable: %w", l.err)
	}
	if size < 0 {
		return nil, fmt.Errorf("mqueue: negative size %d", size)
	}
	if size > l.maxSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d, the limit set by %s", ErrTooLarge, size, l.maxSize, l.why)
	}
	ctl, err := rawsock.Dial(path)
	if err != nil {
		return nil, err
	}
	c := &Client{ctl: ctl, req: -1, rsp: -1, msgsize: max(size, 1)}
	if err := c.create(l, depth); err != nil {
		unix.Close(ctl)
		return nil, err
	}
	if err := c.handshake(); err != nil {
		mqUnlink(c.names[0])
		mqUnlink(c.names[1])
		unix.Close(c.req)
		unix.Close(c.rsp)
		unix.Close(ctl)
		return nil, err
	}
	c.buf = make([]byte, c.msgsize)
	c.watchDone = make(chan struct{})
	go c.watch()
	return c, nil
}

// create creates the two queues, halving their depth while
// RLIMIT_MSGQUEUE has no room for them.
func (c *Client) create(l *limits, depth int) error {
	maxmsg := l.queueDepth(c.msgsize, depth)
	for tries := 0; ; tries++ {
		base := baseName(seq.Add(1))
		c.names = [2]string{reqName(base), rspName(base)}
		a := mqAttr{Maxmsg: maxmsg, Msgsize: c.msgsize}
		flags := unix.O_RDWR | unix.O_CREAT | unix.O_EXCL | unix.O_CLOEXEC
		req, err := mqOpen(c.names[0], flags, &a)
		if err == nil {
			var rsp int
			if rsp, err = mqOpen(c.names[1], flags, &a); err == nil {
				c.req, c.rsp, c.maxmsg = req, rsp, maxmsg
				return nil
			}
			mqUnlink(c.names[0])
			unix.Close(req)
		}
		switch {
		case err == unix.EEXIST && tries < 3:
			continue // a stale pair from a process that had our pid
		case err == unix.EMFILE && maxmsg > 1:
			maxmsg /= 2
			continue
		case err == unix.EMFILE:
			return fmt.Errorf("%w: RLIMIT_MSGQUEUE (%s) has no room for two queues of one %d-byte message each beside this user's other queues (or the descriptor limit is reached)",
				ErrTooLarge, fmtSize(int(min(l.rlimit, 1<<40))), c.msgsize)
		case err == unix.EINVAL:
			return fmt.Errorf("%w: mq_open of %d messages of %d bytes: %v (%s)", ErrTooLarge, maxmsg, c.msgsize, err, l.why)
		}
		return fmt.Errorf("mqueue: mq_open %s: %w", c.names[0], err)
	}
}

// handshake tells the peer the queues' names and waits for it to open
// them, then makes sure the names are gone.
func (c *Client) handshake() error {
	base := c.names[0][:len(c.names[0])-len("-req")]
	if err := writeString(c.ctl, base); err != nil {
		return fmt.Errorf("mqueue: handshake: %w", err)
	}
	msg, err := readString(c.ctl)
	if err != nil {
		return fmt.Errorf("mqueue: handshake: %w", err)
	}
	if msg != "" {
		return fmt.Errorf("mqueue: peer refused the queues: %s", msg)
	}
	// The peer unlinks them; this is for a peer that did not.
	mqUnlink(c.names[0])
	mqUnlink(c.names[1])
	return nil
}

// watch waits for the control connection to end. If the peer ended it,
// watch marks the client dead and wakes it if it is blocked on a queue.
func (c *Client) watch() {
	defer close(c.watchDone)
	waitEnd(c.ctl)
	if c.closing.Load() {
		return
	}
	c.dead.Store(true)
	unblock(c.rsp, c.req, c.msgsize)
}

// QueueDepth returns mq_maxmsg of the client's queues: Pipeline keeps at
// most this many requests outstanding.
func (c *Client) QueueDepth() int { return c.maxmsg }

// MsgSize returns mq_msgsize of the client's queues: the largest payload
// it can carry.
func (c *Client) MsgSize() int { return c.msgsize }

// RoundTrip stores p and retrieves it; got is called with the payload
// received (valid only during the call) before RoundTrip returns.
func (c *Client) RoundTrip(p []byte, got func([]byte)) error {
	if err := c.check(p); err != nil {
		return err
	}
	if err := c.send(p, prioStore); err != nil {
		return err
	}
	if err := c.receive(prioAck, nil); err != nil {
		return err
	}
	if err := c.send(nil, prioRetrieve); err != nil {
		return err
	}
	return c.receive(prioData, got)
}

// Pipeline sends depth stores of p, reads the depth acknowledgements,
// then sends depth retrieves and reads the depth payloads, calling got
// for each (valid only during that call). It never has more than
// QueueDepth requests outstanding: beyond that it reads a reply before
// each further request.
func (c *Client) Pipeline(p []byte, depth int, got func([]byte)) error {
	if err := c.check(p); err != nil {
		return err
	}
	if depth < 0 {
		return fmt.Errorf("mqueue: negative pipeline depth %d", depth)
	}
	if err := c.pipe(depth, p, prioStore, prioAck, nil); err != nil {
		return err
	}
	return c.pipe(depth, nil, prioRetrieve, prioData, got)
}

// pipe sends n requests of priority op carrying p and reads n replies of
// priority want, within the window of QueueDepth outstanding requests.
func (c *Client) pipe(n int, p []byte, op, want uint, got func([]byte)) error {
	sent := 0
	for done := 0; done < n; done++ {
		for sent < n && sent-done < c.maxmsg {
			if err := c.send(p, op); err != nil {
				return err
			}
			sent++
		}
		if err := c.receive(want, got); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the client's descriptors; the peer then frees the queues
// and everything stored in them. The queue names are already gone.
func (c *Client) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	c.closing.Store(true)
	unix.Shutdown(c.ctl, unix.SHUT_RDWR)
	<-c.watchDone
	var errs []error
	for _, fd := range []int{c.req, c.rsp, c.ctl} {
		if err := unix.Close(fd); err != nil {
			errs = append(errs, os.NewSyscallError("close", err))
		}
	}
	c.buf = nil
	return errors.Join(errs...)
}

func (c *Client) check(p []byte) error {
	switch {
	case c.closed:
		return errClosed
	case c.dead.Load():
		return errPeerGone
	case len(p) > c.msgsize:
		return fmt.Errorf("%w: %d bytes exceeds the %d this client was dialled for", ErrTooLarge, len(p), c.msgsize)
	}
	return nil
}

func (c *Client) send(p []byte, prio uint) error {
	err := mqSend(c.req, p, prio, nil)
	if c.dead.Load() {
		return errPeerGone
	}
	if err != nil {
		return os.NewSyscallError("mq_timedsend", err)
	}
	return nil
}

// receive reads one reply, which must have priority want, and calls got
// with it if got is not nil.
func (c *Client) receive(want uint, got func([]byte)) error {
	n, err := mqReceive(c.rsp, c.buf, &c.prio, nil)
	if c.dead.Load() {
		return errPeerGone
	}
	if err != nil {
		return os.NewSyscallError("mq_timedreceive", err)
	}
	switch {
	case uint(c.prio) == want:
	case c.prio == prioEmpty:
		return errors.New("mqueue: peer's FIFO is empty")
	default:
		return fmt.Errorf("%w: reply of priority %d where %d belongs", errProtocol, c.prio, want)
	}
	if got != nil {
		got(c.buf[:n])
	}
	return nil
}
