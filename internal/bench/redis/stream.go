package redis

import (
	"fmt"
	"io"
	"os"
	"strconv"
)

const (
	// streamGroup and streamConsumer name the consumer group a Stream
	// reads through and the consumer it reads as.
	streamGroup    = "machq-bench"
	streamConsumer = "c"
	// streamField is the field an entry's payload is stored under.
	streamField = "p"
)

// Stream is a RESP2 connection to a redis-server over its Unix socket,
// using one stream of its own as a queue with acknowledged delivery: a
// payload is added with XADD, taken with XREADGROUP through a consumer
// group created once, and acknowledged with XACK, which removes it from
// the group's pending entries. A Stream is not safe for concurrent use;
// open one per goroutine.
//
// XACK leaves the entry in the stream, so every XADD also trims the
// stream (MAXLEN ~ with the number of entries the call adds), as an
// application keeping a stream as a queue would: what stays behind is
// acknowledged entries, at most one node of the stream's radix tree
// beyond the entries still to be read, never an entry not yet read.
type Stream struct {
	conn
	key   string
	add   []byte // "XADD key MAXLEN ~ " up to the trim length's bulk header
	read  []byte // the whole "XREADGROUP GROUP g c COUNT 1 STREAMS key >" command
	ack   []byte // "XACK key g" up to the ID's length
	ids   []byte // the IDs of the entries read and not yet acknowledged, back to back
	idEnd []int  // where each ID in ids ends
}

// DialStream connects to the redis-server listening on the Unix socket at
// path, deletes the key the new Stream will use, whose name is unique to
// it, and creates the stream with its consumer group (XGROUP CREATE ...
// MKSTREAM).
func DialStream(path string) (*Stream, error) {
	t, err := dialRaw(path)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	c := newStream(t)
	c.setKey(fmt.Sprintf("machq-bench-stream:%d:%d", os.Getpid(), keyCount.Add(1)))
	if err := c.create(); err != nil {
		c.t.Close()
		return nil, err
	}
	return c, nil
}

func newStream(t transport) *Stream {
	return &Stream{conn: newConn(t)}
}

// setKey sets the stream's key and builds the commands that name it.
func (c *Stream) setKey(key string) {
	c.key = key
	c.add = fmt.Appendf(nil, "*8\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n", len(key), key)
	c.read = fmt.Appendf(nil, "*9\r\n$10\r\nXREADGROUP\r\n$5\r\nGROUP\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$5\r\nCOUNT\r\n$1\r\n1\r\n$7\r\nSTREAMS\r\n$%d\r\n%s\r\n$1\r\n>\r\n",
		len(streamGroup), streamGroup, len(streamConsumer), streamConsumer, len(key), key)
	c.ack = fmt.Appendf(nil, "*4\r\n$4\r\nXACK\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$", len(key), key, len(streamGroup), streamGroup)
}

// create makes the stream, empty, and its consumer group.
func (c *Stream) create() error {
	if _, err := c.do("DEL", c.key); err != nil {
		return err
	}
	_, err := c.do("XGROUP", "CREATE", c.key, streamGroup, "$", "MKSTREAM")
	return err
}

// RoundTrip adds p to the stream with XADD, takes the oldest entry not yet
// delivered with XREADGROUP, calls got with its payload (valid only during
// the call), and acknowledges it with XACK. Each command waits for its
// reply before the next is sent. No entry to read gives ErrEmpty and an
// error reply a *ServerError.
func (c *Stream) RoundTrip(p []byte, got func([]byte)) error {
	if c.err != nil {
		return c.err
	}
	if err := c.writeAdd(p, 1); err != nil {
		return err
	}
	if err := c.readAdded(); err != nil {
		return err
	}
	if err := c.write(c.read); err != nil {
		return err
	}
	c.ids, c.idEnd = c.ids[:0], c.idEnd[:0]
	if err := c.readEntry(got); err != nil {
		return err
	}
	if err := c.writeAcks(); err != nil {
		return err
	}
	return c.readAcked()
}

// Pipeline sends depth XADDs of p in one write and reads their replies,
// then as many XREADGROUPs (COUNT 1 each) in one write, reading each entry
// and calling got with its payload, then one XACK per entry read in one
// write, and reads their replies. If some commands fail, the next step
// covers only the entries that made it through the one before, so that
// nothing is left unread or unacknowledged, and Pipeline returns the first
// error.
func (c *Stream) Pipeline(p []byte, depth int, got func([]byte)) error {
	if c.err != nil {
		return c.err
	}
	if depth < 1 {
		return fmt.Errorf("redis: pipeline depth %d is less than 1", depth)
	}
	if err := c.writeAdd(p, depth); err != nil {
		return err
	}
	var first error
	note := func(err error) {
		if first == nil {
			first = err
		}
	}
	added := 0
	for range depth {
		switch err := c.readAdded(); {
		case err == nil:
			added++
		case c.err != nil:
			return err
		default:
			note(err)
		}
	}
	if added == 0 {
		return first
	}
	c.wbuf = c.wbuf[:0]
	for range added {
		c.wbuf = append(c.wbuf, c.read...)
	}
	if err := c.write(c.wbuf); err != nil {
		return err
	}
	c.ids, c.idEnd = c.ids[:0], c.idEnd[:0]
	for range added {
		err := c.readEntry(got)
		if c.err != nil {
			return err
		}
		if err != nil {
			note(err)
		}
	}
	read := len(c.idEnd)
	if read == 0 {
		return first
	}
	if err := c.writeAcks(); err != nil {
		return err
	}
	for range read {
		err := c.readAcked()
		if c.err != nil {
			return err
		}
		if err != nil {
			note(err)
		}
	}
	return first
}

// Close deletes the Stream's key, and with it the consumer group, and
// closes the connection.
func (c *Stream) Close() error { return c.close(c.key) }

// writeAdd sends n XADDs of p in one write, each trimming the stream to
// about n entries.
func (c *Stream) writeAdd(p []byte, n int) error {
	c.wbuf = append(c.wbuf[:0], crlf...)
	c.wbuf = append(c.wbuf, c.add...)
	c.wbuf = append(c.wbuf, '$')
	c.wbuf = strconv.AppendInt(c.wbuf, int64(decimalLen(n)), 10)
	c.wbuf = append(c.wbuf, crlf...)
	c.wbuf = strconv.AppendInt(c.wbuf, int64(n), 10)
	c.wbuf = append(c.wbuf, "\r\n$1\r\n*\r\n$1\r\n"+streamField+"\r\n$"...)
	return c.writeRepeated(p, n)
}

// decimalLen returns the number of digits of n >= 0.
func decimalLen(n int) int {
	k := 1
	for ; n >= 10; n /= 10 {
		k++
	}
	return k
}

// writeAcks sends one XACK for each ID in c.ids, in one write.
func (c *Stream) writeAcks() error {
	c.wbuf = c.wbuf[:0]
	start := 0
	for _, end := range c.idEnd {
		c.wbuf = append(c.wbuf, c.ack...)
		c.wbuf = strconv.AppendInt(c.wbuf, int64(end-start), 10)
		c.wbuf = append(c.wbuf, crlf...)
		c.wbuf = append(c.wbuf, c.ids[start:end]...)
		c.wbuf = append(c.wbuf, crlf...)
		start = end
	}
	return c.write(c.wbuf)
}

// readAdded reads the reply to an XADD: the new entry's ID.
func (c *Stream) readAdded() error {
	r, err := c.rd.next()
	if err != nil {
		return c.fail(err)
	}
	switch r.kind {
	case kindBulk:
		return nil
	case kindError:
		return &ServerError{Msg: string(r.data)}
	}
	return c.fail(unexpected("XADD", r))
}

// readAcked reads the reply to an XACK of one ID: how many entries it
// acknowledged, which must be 1.
func (c *Stream) readAcked() error {
	r, err := c.rd.next()
	if err != nil {
		return c.fail(err)
	}
	switch r.kind {
	case kindInteger:
		if r.n != 1 {
			return fmt.Errorf("redis: XACK acknowledged %d entries, not 1: the entry was not pending", r.n)
		}
		return nil
	case kindError:
		return &ServerError{Msg: string(r.data)}
	}
	return c.fail(unexpected("XACK", r))
}

// readEntry reads the reply to an XREADGROUP COUNT 1 of one stream,
//
//	[[key, [[id, [field, payload]]]]]
//
// appends the entry's ID to c.ids for the XACK and calls got with the
// payload. A nil reply (no entry to read) gives ErrEmpty; any other shape
// is a protocol error that ends the connection, which would be out of
// step.
func (c *Stream) readEntry(got func([]byte)) error {
	r, err := c.rd.next()
	if err != nil {
		return c.fail(err)
	}
	switch r.kind {
	case kindNilArray:
		return ErrEmpty
	case kindError:
		return &ServerError{Msg: string(r.data)}
	}
	if err := c.want(r, kindArray, 1, "the streams"); err != nil {
		return err
	}
	if _, err := c.element(kindArray, 2, "a stream"); err != nil {
		return err
	}
	if r, err = c.element(kindBulk, -1, "the stream's key"); err != nil {
		return err
	}
	if string(r.data) != c.key {
		return c.fail(protoErr("XREADGROUP reply: entries of stream %q, not %q", clip(r.data), c.key))
	}
	if _, err := c.element(kindArray, 1, "the entries"); err != nil {
		return err
	}
	if _, err := c.element(kindArray, 2, "an entry"); err != nil {
		return err
	}
	if r, err = c.element(kindBulk, -1, "the entry's ID"); err != nil {
		return err
	}
	// The ID points into the reader's buffer, which the next replies
	// may move: keep a copy.
	c.ids = append(c.ids, r.data...)
	c.idEnd = append(c.idEnd, len(c.ids))
	if _, err := c.element(kindArray, 2, "the entry's fields"); err != nil {
		return err
	}
	if r, err = c.element(kindBulk, -1, "the field's name"); err != nil {
		return err
	}
	if string(r.data) != streamField {
		return c.fail(protoErr("XREADGROUP reply: field %q, not %q", clip(r.data), streamField))
	}
	if r, err = c.element(kindBulk, -1, "the payload"); err != nil {
		return err
	}
	if got != nil {
		got(r.data)
	}
	return nil
}

// element reads the next element of an XREADGROUP reply, which must be of
// kind and, for an array, hold n elements; what says what it is.
func (c *Stream) element(kind byte, n int64, what string) (reply, error) {
	r, err := c.rd.next()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return reply{}, c.fail(err)
	}
	return r, c.want(r, kind, n, what)
}

// want checks that r is of kind and, for an array, holds n elements.
func (c *Stream) want(r reply, kind byte, n int64, what string) error {
	if r.kind == kind && (kind != kindArray || r.n == n) {
		return nil
	}
	got := fmt.Sprintf("a %q reply", r.kind)
	switch r.kind {
	case kindNil:
		got = "a nil bulk string"
	case kindNilArray:
		got = "a nil array"
	case kindArray:
		got = fmt.Sprintf("an array of %d", r.n)
	}
	wanted := "a bulk string"
	if kind == kindArray {
		wanted = fmt.Sprintf("an array of %d", n)
	}
	return c.fail(protoErr("XREADGROUP reply: %s where %s, %s, belongs", got, what, wanted))
}
