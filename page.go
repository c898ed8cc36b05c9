package machq

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/machq/machq/internal/page"
)

// Page is a writable buffer backed by a memfd, for sending without a copy:
// the caller writes the payload straight into the shared memory that the
// receiver will map. Create one with NewPage, fill Bytes, then pass it to
// Client.SendPage, which seals it and sends it; or Close it to discard it.
type Page struct {
	fd   int
	buf  []byte
	size int64
}

// ErrPageUsed is returned when a Page is used after SendPage or Close.
var ErrPageUsed = errors.New("machq: page already sent or closed")

// NewPage returns a page of size bytes, zero-filled and mapped for
// writing. The pages are faulted in by the kernel up front
// (MAP_POPULATE), which costs far less than one fault per page on first
// touch.
func NewPage(size int) (*Page, error) {
	if size < 0 {
		return nil, fmt.Errorf("machq: page size %d is negative", size)
	}
	fd, err := page.Create("machq-page")
	if err != nil {
		return nil, fmt.Errorf("machq: %w", err)
	}
	if err := page.Truncate(fd, int64(size)); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("machq: %w", err)
	}
	buf, err := page.MapWritable(fd, int64(size), true)
	if err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("machq: %w", err)
	}
	return &Page{fd: fd, buf: buf, size: int64(size)}, nil
}

// Bytes returns the page's memory, to be written before SendPage. It is
// nil after SendPage or Close.
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

// seal unmaps and seals the page and hands over its descriptor.
func (p *Page) seal() (int, error) {
	if p.fd < 0 {
		return -1, ErrPageUsed
	}
	fd := p.fd
	err := page.Unmap(p.buf)
	p.fd, p.buf = -1, nil
	if err == nil {
		err = page.Seal(fd)
	}
	if err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("machq: %w", err)
	}
	return fd, nil
}

// SendPage seals p against any further change and stores it at the tail
// of queue ("" for the private queue) without copying its bytes: the
// server keeps the very memfd. p cannot be used afterwards, whatever the
// outcome. The digest, if enabled, is computed over the page before it is
// sealed.
func (c *Client) SendPage(ctx context.Context, queue string, p *Page) error {
	if err := checkQueue(queue); err != nil {
		p.Close()
		return err
	}
	if p.size > c.MaxMessageSize() {
		p.Close()
		return c.tooLarge(p.size)
	}
	sum, err := c.opts.digest.Sum(p.buf)
	if err != nil {
		p.Close()
		return err
	}
	size := p.size
	fd, err := p.seal()
	if err != nil {
		return err
	}
	if size == 0 {
		syscall.Close(fd)
		return c.storeDigest(ctx, queue, nil, -1, 0, sum)
	}
	return c.storeDigest(ctx, queue, nil, fd, size, sum)
}
