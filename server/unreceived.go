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
// every byte and descriptor written to it. It is asked before a page is
// refused to a waiter for this reason, when the peer sends a request, on
// STATS, and by a poll while pages are out.

// The poll starts at unreceivedPollFirst after a page goes out and backs
// off, doubling, to unreceivedPollMost while the peer reads nothing, so a
// consumer that never reads costs a few ioctls a second, not fifty.
const (
	unreceivedPollFirst = 20 * time.Millisecond
	unreceivedPollMost  = time.Second
)

// sent takes the pages among msgs, just written, into c.unreceived,
// closing the server's descriptors for them, and clears them from msgs.
// The peer has hardly had time to read them: the poll asks later.
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
	c.armPoll()
	c.mu.Unlock()
}

// pagesUnreceived is the number of pages on their way to the peer: in
// the outbox or written and not yet received. c.mu is held.
func (c *conn) pagesUnreceived() int {
	n := len(c.outFDs) + len(c.unreceived) + c.ackUnread
	if n >= maxOutboxPages && c.pagesOut() {
		c.checkReceived()
		n = len(c.outFDs) + len(c.unreceived) + c.ackUnread
	}
	return n
}

// pagesOut reports whether pages written may not have been received yet.
// c.mu is held.
func (c *conn) pagesOut() bool {
	return len(c.unreceived) > 0 || c.ackUnread > 0
}

// checkReceived releases the unreceived pages if the peer has read
// everything written to it, and reports whether it did. c.mu is held.
func (c *conn) checkReceived() bool {
	if !c.pagesOut() || c.outq() != 0 {
		return false
	}
	c.ackUnread = 0 // held by their deliveries, not released here
	for i, m := range c.unreceived {
		m.Release()
		c.unreceived[i] = nil
	}
	c.unreceived = c.unreceived[:0]
	c.pollEvery = 0
	return true
}

// armPoll makes sure a poll will ask about the unreceived pages. c.mu is
// held.
func (c *conn) armPoll() {
	if c.pollArmed || !c.pagesOut() {
		return
	}
	c.pollEvery = min(max(2*c.pollEvery, unreceivedPollFirst), unreceivedPollMost)
	c.pollArmed = true
	if c.unreceivedPoll == nil {
		c.unreceivedPoll = time.AfterFunc(c.pollEvery, c.pollReceived)
	} else {
		c.unreceivedPoll.Reset(c.pollEvery)
	}
}

// pollReceived is the poll's turn: refreshReceived, then the next poll if
// pages are still out.
func (c *conn) pollReceived() {
	c.mu.Lock()
	c.pollArmed = false
	c.mu.Unlock()
	c.refreshReceived()
}

// refreshReceived asks the kernel whether the peer has received the pages
// out, and resumes the waits skipped for them if so; else it keeps the
// poll going. The reader calls it for each request (a peer that sends has
// usually read what came before), STATS for every connection, and the
// poll.
func (c *conn) refreshReceived() {
	c.mu.Lock()
	if c.closed || !c.pagesOut() {
		c.mu.Unlock()
		return
	}
	released := c.checkReceived()
	if !released {
		c.armPoll()
	}
	resume := released && len(c.parked) > 0
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
