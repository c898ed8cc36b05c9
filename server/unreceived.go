package server

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/queue"
)

// Pages written but not yet received.
//
// A page written to a connection leaves the server's descriptor table but
// not the host: the kernel keeps it in the peer's receive queue until the
// peer reads it, and charges it meanwhile to the server's user (SCM_RIGHTS
// in flight count against the sender's RLIMIT_NOFILE; past it every send
// of a page, to any client, fails with ETOOMANYREFS). A consumer that does
// not read could so hold as many pages as its socket buffer takes, some
// hundreds, outside every limit. So a page counts, against the limits that
// held it and against the connection's bound on pages on their way to it
// (maxOutboxPages), until the peer has received it. The kernel says when:
// the socket's send queue is empty (SIOCOUTQ 0) once the peer has read
// every byte and descriptor written to it. It is asked after each write,
// before a page is refused to a waiter for this reason, when the peer
// sends a request, and every unreceivedPollEvery while pages are out.

// unreceivedPollEvery is how often a connection with pages out asks the
// kernel whether its peer has received them.
const unreceivedPollEvery = 20 * time.Millisecond

// sent takes the pages among msgs, just written, into c.unreceived,
// closing the server's descriptors for them, and clears them from msgs.
func (c *conn) sent(msgs []*queue.Message) {
	var pages []*queue.Message
	for i, m := range msgs {
		if m.FD >= 0 {
			m.Sent()
			pages = append(pages, m)
			msgs[i] = nil
		}
	}
	if len(pages) == 0 {
		return
	}
	c.mu.Lock()
	c.unreceived = append(c.unreceived, pages...)
	c.checkReceived()
	c.mu.Unlock()
}

// pagesUnreceived is the number of pages on their way to the peer: in
// the outbox or written and not yet received. c.mu is held.
func (c *conn) pagesUnreceived() int {
	n := len(c.outFDs) + len(c.unreceived)
	if n >= maxOutboxPages && len(c.unreceived) > 0 {
		c.checkReceived()
		n = len(c.outFDs) + len(c.unreceived)
	}
	return n
}

// checkReceived releases the unreceived pages if the peer has read
// everything written to it, and keeps a poll running while any remain. It
// reports whether it released some. c.mu is held.
func (c *conn) checkReceived() bool {
	if len(c.unreceived) == 0 {
		return false
	}
	if c.outq() != 0 {
		if c.unreceivedPoll == nil {
			c.unreceivedPoll = time.AfterFunc(unreceivedPollEvery, c.pollReceived)
		} else {
			c.unreceivedPoll.Reset(unreceivedPollEvery)
		}
		return false
	}
	for i, m := range c.unreceived {
		m.Release()
		c.unreceived[i] = nil
	}
	c.unreceived = c.unreceived[:0]
	if c.unreceivedPoll != nil {
		c.unreceivedPoll.Stop()
	}
	return true
}

// pollReceived is the unreceived poll: once the pages are received, the
// waits skipped for them resume.
func (c *conn) pollReceived() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	released := c.checkReceived()
	resume := released && len(c.parked) > 0 && !c.flushing
	c.mu.Unlock()
	if resume {
		c.resumeParked()
	}
}

// refreshReceived asks the kernel whether the peer has received the pages
// out, and resumes the waits skipped for them if so. The reader calls it
// for each request (a peer that sends has usually read what came before),
// and STATS for every connection.
func (c *conn) refreshReceived() {
	c.mu.Lock()
	if len(c.unreceived) == 0 {
		c.mu.Unlock()
		return
	}
	released := c.checkReceived()
	resume := released && len(c.parked) > 0 && !c.closed
	c.mu.Unlock()
	if resume {
		c.resumeParked()
	}
}

// outq is the number of bytes written to the peer that it has not yet
// read (SIOCOUTQ); -1 if it cannot be read, which keeps pages counted.
func (c *conn) outq() int {
	raw, err := c.uc.SyscallConn()
	if err != nil {
		return -1
	}
	n := -1
	raw.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			n = v
		}
	})
	return n
}
