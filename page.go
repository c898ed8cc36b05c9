package machq

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/pagepool"
)

// Page is a writable buffer backed by a memfd, for sending without a copy:
// the caller writes the payload straight into the shared memory that the
// receiver will map. Create one with NewPage, fill Bytes, then pass it to
// Client.SendPage, which seals it and sends it; or Close it to discard it.
type Page struct {
	fd   int
	buf  []byte
	size int64
	// After a SendPage that failed for a reason not the page's own, the
	// page is sealed (buf nil) and keeps its digest for the next try.
	sealed bool
	alg    Digest
	sum    []byte
}

// ErrPageUsed is returned when a Page is used after SendPage or Close.
var ErrPageUsed = errors.New("machq: page already sent or closed")

// NewPage returns a page of size bytes, zero-filled and mapped for
// writing, with every page of it already allocated and its page-table
// entries in place (MADV_POPULATE_WRITE, or MAP_POPULATE on kernels
// before 5.14), so that filling it never waits on a page fault. It asks
// for transparent huge pages, which the kernel grants to shared memory
// only where the administrator allows it (docs/PERFORMANCE.md).
func NewPage(size int) (*Page, error) {
	if size < 0 {
		return nil, fmt.Errorf("machq: page size %d is negative", size)
	}
	pg, err := pagepool.Allocate("machq-page", int64(size), true)
	if err != nil {
		return nil, fmt.Errorf("machq: %w", err)
	}
	return &Page{fd: pg.FD, buf: pg.Buf, size: pg.Size}, nil
}

// Bytes returns the page's memory, to be written before SendPage. It is
// nil once the page is sealed: after SendPage, or Close.
func (p *Page) Bytes() []byte { return p.buf }

// Len returns the page size in bytes.
func (p *Page) Len() int64 { return p.size }

// Close discards a page that was not sent. It is safe to call more than
// once and after SendPage.
func (p *Page) Close() error {
	if p.fd < 0 {
		return nil
	}
	err := page.Unmap(p.buf)
	syscall.Close(p.fd)
	p.fd, p.buf = -1, nil
	return err
}

// seal unmaps and seals the page; it keeps its descriptor.
func (p *Page) seal() error {
	err := page.Unmap(p.buf)
	p.buf = nil
	if err == nil {
		err = page.Seal(p.fd)
	}
	if err != nil {
		p.Close()
		return fmt.Errorf("machq: %w", err)
	}
	p.sealed = true
	return nil
}

// SendPage seals p against any further change and stores it at the tail
// of queue ("" for the private queue) without copying its bytes: the
// server keeps the very memfd, and returns the message's sequence number.
// The digest, if enabled, is computed over the page before it is sealed.
//
// Once stored, p is used up. If the store fails for a reason that is not
// the page's own (a full queue or another limit, a lost connection, an
// ended context, a bad queue name), p stays valid, sealed, with its
// digest, for SendPage to try again, on this client or another; Close it
// to give up. A page the server refuses as such (ErrBadPage, ErrTooLarge)
// is closed.
func (c *Client) SendPage(ctx context.Context, queue string, p *Page) (uint64, error) {
	if p.fd < 0 {
		return 0, ErrPageUsed
	}
	if err := checkQueue(queue); err != nil {
		return 0, err
	}
	if p.size > c.MaxMessageSize() {
		p.Close()
		return 0, c.tooLarge(p.size)
	}
	switch {
	case !p.sealed:
		sum, err := c.opts.digest.Sum(p.buf)
		if err != nil {
			return 0, err
		}
		if err := p.seal(); err != nil {
			return 0, err
		}
		p.alg, p.sum = c.opts.digest, sum
	case p.alg != c.opts.digest:
		// Sealed under another client's digest: compute this one's from
		// a read-only mapping.
		sum, err := c.sealedDigest(p)
		if err != nil {
			return 0, err
		}
		p.alg, p.sum = c.opts.digest, sum
	}
	if p.size == 0 {
		seq, err := c.storeDigest(ctx, queue, nil, -1, 0, p.sum)
		if err == nil {
			p.Close()
		}
		return seq, err
	}
	// The store takes a descriptor of its own: the page keeps p.fd for a
	// retry until the server has it.
	fd, err := syscall.Dup(p.fd)
	if err != nil {
		return 0, fmt.Errorf("machq: %w", os.NewSyscallError("dup", err))
	}
	syscall.CloseOnExec(fd)
	seq, err := c.storeDigest(ctx, queue, nil, fd, p.size, p.sum)
	if err == nil || errors.Is(err, ErrBadPage) || errors.Is(err, ErrTooLarge) {
		p.Close()
	}
	return seq, err
}

// sealedDigest computes this client's digest of a sealed page.
func (c *Client) sealedDigest(p *Page) ([]byte, error) {
	if p.size == 0 {
		return c.opts.digest.Sum(nil)
	}
	b, err := page.MapReadOnly(p.fd, p.size, true)
	if err != nil {
		return nil, fmt.Errorf("machq: %w", err)
	}
	defer page.Unmap(b)
	return c.opts.digest.Sum(b)
}
