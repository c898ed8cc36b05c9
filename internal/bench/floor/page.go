package floor

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Phases is where the time of one PageRoundTrip goes.
type Phases struct {
	Create   time.Duration // memfd_create, ftruncate and a populated writable mmap
	Fill     time.Duration // the fill callback writing the mapping
	Seal     time.Duration // munmap and F_ADD_SEALS
	Send     time.Duration // the sendmsg carrying the store and its memfd
	Store    time.Duration // from after the send until the acknowledgement is read
	Retrieve time.Duration // from sending the retrieve until its memfd is received
	Map      time.Duration // the read-only mmap, not populated
	Read     time.Duration // the got callback reading the mapping
}

// Total returns the sum of the phases.
func (p Phases) Total() time.Duration {
	return p.Create + p.Fill + p.Seal + p.Send + p.Store + p.Retrieve + p.Map + p.Read
}

// PageRoundTrip is the zero-copy round trip, timed phase by phase: it
// creates a memfd of size bytes, maps it writable (populated) and calls
// fill with the mapping, unmaps and seals it, stores it, retrieves it,
// maps the memfd received read-only without populating it, so that got
// takes the page faults as it reads, and calls got with that mapping. A
// size of 0 creates no memfd, and fill and got see an empty slice. The
// client must use Memfd.
func (c *Client) PageRoundTrip(size int, fill func([]byte), got func([]byte)) (Phases, error) {
	var ph Phases
	if err := c.check(nil); err != nil {
		return ph, err
	}
	if c.mech != Memfd {
		return ph, errors.New("floor: PageRoundTrip needs a Memfd client")
	}
	if size < 0 || size > MaxPayload {
		return ph, errors.New("floor: PageRoundTrip size out of range")
	}

	t0 := time.Now()
	fd := -1
	var m []byte
	if size > 0 {
		var err error
		if fd, err = memfdCreate(); err != nil {
			return ph, err
		}
		defer func() {
			if fd >= 0 {
				unix.Close(fd)
			}
		}()
		if err := unix.Ftruncate(fd, int64(size)); err != nil {
			return ph, os.NewSyscallError("ftruncate", err)
		}
		if m, err = mapPage(fd, size, unix.PROT_READ|unix.PROT_WRITE, true); err != nil {
			return ph, err
		}
	}
	t1 := time.Now()
	ph.Create = t1.Sub(t0)

	fill(m)
	t2 := time.Now()
	ph.Fill = t2.Sub(t1)

	if size > 0 {
		if err := unmapPage(m); err != nil {
			return ph, err
		}
		if err := seal(fd); err != nil {
			return ph, err
		}
	}
	t3 := time.Now()
	ph.Seal = t3.Sub(t2)

	b := putHdr(c.wbuf[:0], opStoreFd, size)
	c.wbuf = b
	fds := c.fds[:0]
	if fd >= 0 {
		fds = append(fds, fd)
	}
	var err error
	c.oob, err = sendFds(c.fd, b, fds, c.oob)
	if err != nil {
		return ph, err
	}
	t4 := time.Now()
	ph.Send = t4.Sub(t3)

	if err := c.readAcks(1); err != nil {
		return ph, err
	}
	t5 := time.Now()
	ph.Store = t5.Sub(t4)

	if fd >= 0 {
		unix.Close(fd)
		fd = -1
	}

	t6 := time.Now()
	if err := c.sendRetrieves(1); err != nil {
		return ph, err
	}
	op, n, err := c.rd.header()
	if err != nil {
		return ph, c.readErr(err)
	}
	if op != opData || n != uint64(size) {
		return ph, fmt.Errorf("%w: got %q (length %d) in reply to a retrieve of %d bytes", errProtocol, op, n, size)
	}
	if size > 0 {
		var ok bool
		if fd, ok = c.rd.fds.Pop(); !ok {
			return ph, fmt.Errorf("%w: retrieved page without its memfd", errProtocol)
		}
	}
	t7 := time.Now()
	ph.Retrieve = t7.Sub(t6)

	m = nil
	if size > 0 {
		if m, err = mapPage(fd, size, unix.PROT_READ, false); err != nil {
			return ph, err
		}
	}
	t8 := time.Now()
	ph.Map = t8.Sub(t7)

	got(m)
	ph.Read = time.Since(t8)

	return ph, unmapPage(m)
}
