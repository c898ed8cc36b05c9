package machq

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/wire"
)

// Send stores a copy of data at the tail of queue ("" for the private
// queue). Small payloads travel inline; larger ones are written into a new
// sealed memfd with pwrite(2), the kernel's copy, and passed to the server
// as a descriptor. Send returns once the server has stored the message,
// with the sequence number the queue gave it.
//
// If ctx ends first, Send returns ctx's error; the message may still have
// been stored.
func (c *Client) Send(ctx context.Context, queue string, data []byte) (uint64, error) {
	if err := checkQueue(queue); err != nil {
		return 0, err
	}
	fd, err := c.pageFor(data)
	if err != nil {
		return 0, err
	}
	if fd < 0 {
		return c.store(ctx, queue, data, -1, int64(len(data)), data)
	}
	return c.store(ctx, queue, nil, fd, int64(len(data)), data)
}

// pageFor returns -1 for a payload that travels inline, or else a new
// sealed memfd holding a copy of data.
func (c *Client) pageFor(data []byte) (int, error) {
	if len(data) <= c.opts.inline {
		return -1, nil
	}
	if int64(len(data)) > c.MaxMessageSize() {
		return -1, c.tooLarge(int64(len(data)))
	}
	// A spare page, when a stream of sends has one ready, is allocated
	// already.
	fd := -1
	if pg, ok := c.next.Take(int64(len(data))); ok {
		fd = pg.FD
	} else {
		var err error
		if fd, err = page.Create("machq"); err != nil {
			return -1, fmt.Errorf("machq: %w", err)
		}
	}
	if err := page.Write(fd, data); err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("machq: %w", err)
	}
	if err := page.Seal(fd); err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("machq: %w", err)
	}
	// Allocate the next send's pages while this one travels.
	c.next.Next(int64(len(data)))
	return fd, nil
}

func (c *Client) tooLarge(n int64) error {
	return fmt.Errorf("%w: %d bytes exceeds the server's maximum of %d", ErrTooLarge, n, c.MaxMessageSize())
}

// store sends a STORE of size bytes, inline or as the page fd (owned), with
// the digest of content, and waits for it to be stored; it returns the
// message's sequence number.
func (c *Client) store(ctx context.Context, queue string, inline []byte, fd int, size int64, content []byte) (uint64, error) {
	sum, err := c.opts.digest.Sum(content)
	if err != nil {
		closeFD(fd)
		return 0, err
	}
	return c.storeDigest(ctx, queue, inline, fd, size, sum)
}

// storeDigest is store with the digest already computed.
func (c *Client) storeDigest(ctx context.Context, queue string, inline []byte, fd int, size int64, sum []byte) (uint64, error) {
	wait := c.opts.waitRoom && c.welcome.Version >= wire.VersionAck
	cl := &call{op: wire.OpStore, queue: queue, ch: make(chan result, 1), waits: wait}
	if queue == "" {
		cl.private = &sentDigest{alg: uint8(c.opts.digest), digest: sum}
	}
	id, err := c.register(ctx, cl)
	if err != nil {
		closeFD(fd)
		return 0, err
	}
	st := wire.Store{Size: uint64(size), DigestAlg: uint8(c.opts.digest), Digest: sum, Queue: []byte(queue), Owned: c.opts.owned, Wait: wait}
	// Encoded straight into the write buffer: an inline payload is copied
	// once, into the frame.
	if err := c.enqueue(ctx, fd, func(b []byte) []byte { return wire.AppendStore(b, id, st, inline, fd >= 0) }); err != nil {
		return 0, err
	}
	r, err := c.wait(ctx, id, cl)
	if err != nil {
		return 0, err
	}
	return r.seq, nil
}

func closeFD(fd int) {
	if fd >= 0 {
		syscall.Close(fd)
	}
}

// SendFile stores the rest of f's content, from its current offset, at
// the tail of queue ("" for the private queue) and returns the number of
// bytes stored and the message's sequence number (0 and 0 on error). Content small enough to travel inline is
// read and sent inline, like Send's; larger content is copied into a new
// sealed memfd inside the kernel (copy_file_range(2) or sendfile(2));
// only pipes, other streams and files whose size says nothing of their
// content (as in /proc) go through a buffer. A regular file larger than
// the server's maximum message size fails with ErrTooLarge before
// anything is copied, a stream as soon as it passes it. A file that is
// already a memfd sealed against write, grow and shrink is sent whole, as
// it is, with no copy at all, unless it is small enough to travel inline.
// SendFile does not close f.
func (c *Client) SendFile(ctx context.Context, queue string, f *os.File) (int64, uint64, error) {
	if err := checkQueue(queue); err != nil {
		return 0, 0, err
	}
	limit, inline := c.MaxMessageSize(), c.opts.inline
	if seals, err := page.Seals(int(f.Fd())); err == nil && seals&page.RequiredSeals == page.RequiredSeals {
		if size, err := page.Size(int(f.Fd())); err == nil && size <= int64(inline) {
			buf := make([]byte, size)
			if _, err := page.ReadAt(int(f.Fd()), buf, 0); err != nil {
				return 0, 0, fmt.Errorf("machq: read %s: %w", f.Name(), err)
			}
			return sent(size)(c.Send(ctx, queue, buf))
		}
		fd, err := syscall.Dup(int(f.Fd()))
		if err != nil {
			return 0, 0, fmt.Errorf("machq: %w", os.NewSyscallError("dup", err))
		}
		syscall.CloseOnExec(fd)
		return c.sendSealed(ctx, queue, fd)
	}
	inKernel := false // a regular file too large to travel inline
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		if off, err := f.Seek(0, io.SeekCurrent); err == nil {
			rest := max(st.Size()-off, 0)
			if rest > limit {
				return 0, 0, fmt.Errorf("%w: %s holds %d bytes, more than the server's maximum of %d", ErrTooLarge, f.Name(), rest, limit)
			}
			inKernel = rest > int64(inline)
		}
	}
	var src io.Reader = f
	if !inKernel {
		// Small, a stream, or a size that may not be the truth: read
		// what could travel inline, and one byte more to tell.
		head := make([]byte, inline+1)
		n, err := io.ReadFull(f, head)
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return sent(int64(n))(c.Send(ctx, queue, head[:n]))
		case err != nil:
			return 0, 0, fmt.Errorf("machq: read %s: %w", f.Name(), err)
		}
		src = io.MultiReader(bytes.NewReader(head), f)
	}
	fd, err := page.Create("machq-file")
	if err != nil {
		return 0, 0, fmt.Errorf("machq: %w", err)
	}
	var n int64
	if inKernel {
		n, err = page.CopyFrom(fd, f, limit)
	} else {
		n, err = page.CopyStream(fd, src, limit)
	}
	if err != nil {
		syscall.Close(fd)
		return 0, 0, fmt.Errorf("machq: copy %s: %w", f.Name(), err)
	}
	if n > limit {
		syscall.Close(fd)
		return 0, 0, fmt.Errorf("%w: %s holds more than the server's maximum of %d bytes", ErrTooLarge, f.Name(), limit)
	}
	if err := page.Seal(fd); err != nil {
		syscall.Close(fd)
		return 0, 0, fmt.Errorf("machq: %w", err)
	}
	return c.sendSealed(ctx, queue, fd)
}

// sent returns a function that adds the byte count n to a store's
// result, or 0 with its error.
func sent(n int64) func(uint64, error) (int64, uint64, error) {
	return func(seq uint64, err error) (int64, uint64, error) {
		if err != nil {
			return 0, 0, err
		}
		return n, seq, nil
	}
}

// sendSealed stores the sealed memfd fd (owned), computing its digest
// from a read-only mapping.
func (c *Client) sendSealed(ctx context.Context, queue string, fd int) (int64, uint64, error) {
	size, err := page.Size(fd)
	if err != nil {
		syscall.Close(fd)
		return 0, 0, fmt.Errorf("machq: %w", err)
	}
	if size > c.MaxMessageSize() {
		syscall.Close(fd)
		return 0, 0, c.tooLarge(size)
	}
	var content []byte
	if c.opts.digest != DigestNone {
		content, err = page.MapReadOnly(fd, size, true)
		if err != nil {
			syscall.Close(fd)
			return 0, 0, fmt.Errorf("machq: %w", err)
		}
		defer page.Unmap(content)
	}
	if size == 0 {
		syscall.Close(fd)
		return sent(0)(c.store(ctx, queue, nil, -1, 0, nil))
	}
	return sent(size)(c.store(ctx, queue, nil, fd, size, content))
}
