package redis

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
)

const (
	// copyMax is the largest payload copied into the command buffer; larger
	// ones go out with writev straight from the caller's slice.
	copyMax = 16 << 10
	// readBufSize is the read buffer's initial size.
	readBufSize = 64 << 10
)

var (
	crlf      = []byte("\r\n")
	keyCount  atomic.Uint64
	errClosed = errors.New("redis: client closed")
)

// conn is what every client here is made of: a RESP2 connection to a
// redis-server, the reader of its replies and the buffers commands are
// built in, all reused from one command to the next.
type conn struct {
	t    transport
	rd   *reader
	wbuf []byte   // commands being built
	vec  [][]byte // what one write sends
	err  error    // set once the connection is unusable
}

func newConn(t transport) conn {
	return conn{t: t, rd: newReader(t, readBufSize)}
}

// Client is a RESP2 connection to a redis-server over its Unix socket,
// using one list of its own as a FIFO queue. A Client is not safe for
// concurrent use; open one per goroutine.
type Client struct {
	conn
	key  string
	push []byte // "RPUSH key" up to the payload's length
	pop  []byte // the whole "LPOP key" command
}

// Dial connects to the redis-server listening on the Unix socket at path and
// empties the list the new Client will use, whose key is unique to it.
func Dial(path string) (*Client, error) {
	t, err := dialRaw(path)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	c := newClient(t)
	c.setKey(fmt.Sprintf("machq-bench:%d:%d", os.Getpid(), keyCount.Add(1)))
	if _, err := c.do("DEL", c.key); err != nil {
		c.t.Close()
		return nil, err
	}
	return c, nil
}

func newClient(t transport) *Client {
	return &Client{conn: newConn(t)}
}

// setKey sets the list's key and builds the commands that name it.
func (c *Client) setKey(key string) {
	c.key = key
	c.push = fmt.Appendf(nil, "*3\r\n$5\r\nRPUSH\r\n$%d\r\n%s\r\n$", len(key), key)
	c.pop = fmt.Appendf(nil, "*2\r\n$4\r\nLPOP\r\n$%d\r\n%s\r\n", len(key), key)
}

// RoundTrip stores p with RPUSH and takes it back with LPOP; got is called with the
// payload received (valid only during the call) before RoundTrip returns.
// Each command waits for its reply before the next is sent. An empty list
// gives ErrEmpty and an error reply a *ServerError.
func (c *Client) RoundTrip(p []byte, got func([]byte)) error {
	if c.err != nil {
		return c.err
	}
	if err := c.writePush(p, 1); err != nil {
		return err
	}
	if err := c.readPushed(); err != nil {
		return err
	}
	if err := c.write(c.pop); err != nil {
		return err
	}
	return c.readPopped(got)
}

// Push stores p with RPUSH and waits for the reply: the store alone. A
// server with the append-only file synced always answers it only once the
// command is on disk.
func (c *Client) Push(p []byte) error {
	if c.err != nil {
		return c.err
	}
	if err := c.writePush(p, 1); err != nil {
		return err
	}
	return c.readPushed()
}

// Pipeline sends depth RPUSHes of p in one write, reads the depth replies, then sends
// depth LPOPs in one write and reads the depth payloads, calling got for each.
// If some RPUSHes fail, it pops only as many as succeeded, so the list is
// left as long as it was, and returns the first error.
func (c *Client) Pipeline(p []byte, depth int, got func([]byte)) error {
	if c.err != nil {
		return c.err
	}
	if depth < 1 {
		return fmt.Errorf("redis: pipeline depth %d is less than 1", depth)
	}
	if err := c.writePush(p, depth); err != nil {
		return err
	}
	var first error
	pushed := 0
	for range depth {
		switch err := c.readPushed(); {
		case err == nil:
			pushed++
		case c.err != nil:
			return err
		case first == nil:
			first = err
		}
	}
	if pushed == 0 {
		return first
	}
	c.wbuf = c.wbuf[:0]
	for range pushed {
		c.wbuf = append(c.wbuf, c.pop...)
	}
	if err := c.write(c.wbuf); err != nil {
		return err
	}
	for range pushed {
		err := c.readPopped(got)
		if c.err != nil {
			return err
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// Close deletes the Client's list and closes the connection.
func (c *Client) Close() error { return c.close(c.key) }

// close deletes key, unless it is empty, and closes the connection.
func (c *conn) close(key string) error {
	if c.err == errClosed {
		return nil
	}
	var err error
	if c.err == nil && key != "" {
		_, err = c.do("DEL", key)
	}
	if cerr := c.t.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("redis: %w", cerr)
	}
	c.err = errClosed
	return err
}

// writePush sends n RPUSHes of p in one write.
func (c *Client) writePush(p []byte, n int) error {
	c.wbuf = append(c.wbuf[:0], crlf...)
	c.wbuf = append(c.wbuf, c.push...)
	return c.writeRepeated(p, n)
}

// writeRepeated sends n copies of a command whose last argument is the
// bulk string p, in one write. c.wbuf holds CRLF and then the command up
// to that argument: the array header, the other arguments and the '$'
// that begins p's length.
func (c *conn) writeRepeated(p []byte, n int) error {
	// The command is the header, the length, CRLF, p and CRLF; c.wbuf
	// holds CRLF, the header, the length and CRLF, so that it also serves
	// as the separator between two commands.
	c.wbuf = strconv.AppendInt(c.wbuf, int64(len(p)), 10)
	c.wbuf = append(c.wbuf, crlf...)
	hdr := len(c.wbuf)
	if len(p) <= copyMax {
		for range n {
			c.wbuf = append(c.wbuf, c.wbuf[2:hdr]...)
			c.wbuf = append(c.wbuf, p...)
			c.wbuf = append(c.wbuf, crlf...)
		}
		return c.write(c.wbuf[hdr:])
	}
	c.vec = append(c.vec[:0], c.wbuf[2:hdr], p)
	for range n - 1 {
		c.vec = append(c.vec, c.wbuf[:hdr], p)
	}
	c.vec = append(c.vec, crlf)
	err := c.writev(c.vec)
	clear(c.vec) // drop the references to p
	return err
}

func (c *conn) write(b []byte) error {
	c.vec = append(c.vec[:0], b)
	return c.writev(c.vec)
}

func (c *conn) writev(bufs [][]byte) error {
	if err := c.t.writeAll(bufs); err != nil {
		return c.fail(err)
	}
	return nil
}

// fail makes the connection unusable after an I/O or protocol error.
func (c *conn) fail(err error) error {
	if !errors.Is(err, errProtocol) {
		err = fmt.Errorf("redis: %w", err)
	}
	c.err = err
	return err
}

// readPushed reads the integer reply to an RPUSH.
func (c *Client) readPushed() error {
	r, err := c.rd.next()
	if err != nil {
		return c.fail(err)
	}
	switch r.kind {
	case kindInteger:
		return nil
	case kindError:
		return &ServerError{Msg: string(r.data)}
	}
	return c.fail(unexpected("RPUSH", r))
}

// readPopped reads the bulk reply to an LPOP and hands it to got.
func (c *Client) readPopped(got func([]byte)) error {
	r, err := c.rd.next()
	if err != nil {
		return c.fail(err)
	}
	switch r.kind {
	case kindBulk:
		if got != nil {
			got(r.data)
		}
		return nil
	case kindNil:
		return ErrEmpty
	case kindError:
		return &ServerError{Msg: string(r.data)}
	}
	return c.fail(unexpected("LPOP", r))
}

// do sends one command and reads its reply, turning an error reply into a
// *ServerError. The reply's data is valid until the next call.
func (c *conn) do(args ...string) (reply, error) {
	if c.err != nil {
		return reply{}, c.err
	}
	c.wbuf = fmt.Appendf(c.wbuf[:0], "*%d\r\n", len(args))
	for _, a := range args {
		c.wbuf = fmt.Appendf(c.wbuf, "$%d\r\n%s\r\n", len(a), a)
	}
	if err := c.write(c.wbuf); err != nil {
		return reply{}, err
	}
	r, err := c.rd.next()
	if err != nil {
		return reply{}, c.fail(err)
	}
	if r.kind == kindError {
		return reply{}, &ServerError{Msg: string(r.data)}
	}
	return r, nil
}

func unexpected(cmd string, r reply) error {
	switch r.kind {
	case kindNil:
		return fmt.Errorf("%w: nil reply to %s", errProtocol, cmd)
	case kindNilArray:
		return fmt.Errorf("%w: nil array reply to %s", errProtocol, cmd)
	case kindArray:
		return fmt.Errorf("%w: unexpected array of %d reply to %s", errProtocol, r.n, cmd)
	}
	return fmt.Errorf("%w: unexpected %q reply to %s", errProtocol, r.kind, cmd)
}
