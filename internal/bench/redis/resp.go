package redis

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

const (
	// maxLine bounds a reply's first line: a type byte, then a simple
	// string, an error message, an integer or a bulk length.
	maxLine = 64 << 10
	// maxBulk bounds a bulk string's length. The server refuses larger
	// values (proto-max-bulk-len), so a larger length is a broken stream.
	maxBulk = 1 << 30
	// maxArray bounds an array's element count. The reader hands out an
	// array's elements one at a time and allocates nothing for the count,
	// but no reply to a command of this client comes near it, so a larger
	// count is a broken stream.
	maxArray = 1 << 30
	// minGrow is the smallest size the read buffer grows to.
	minGrow = 4 << 10
)

// ErrEmpty is returned by RoundTrip and Pipeline when LPOP finds the list
// empty (a nil bulk reply).
var ErrEmpty = errors.New("redis: queue empty")

// errProtocol marks a reply that does not follow RESP2.
var errProtocol = errors.New("redis: protocol error")

// ServerError is an error reply from the server, such as "ERR ..." or
// "WRONGTYPE ...".
type ServerError struct {
	// Msg is the message the server sent, without the leading '-'.
	Msg string
}

// Error returns the server's message prefixed with "redis: ".
func (e *ServerError) Error() string { return "redis: " + e.Msg }

// Reply kinds, named by their RESP2 type byte.
const (
	kindSimple   = '+'
	kindError    = '-'
	kindInteger  = ':'
	kindBulk     = '$'
	kindArray    = '*'
	kindNil      = 0 // a nil bulk string, "$-1"
	kindNilArray = 1 // a nil array, "*-1"
)

// reply is one parsed RESP2 reply. data is the simple string, the error
// message or the bulk string's bytes; it points into the reader's buffer and
// is valid only until the reader's next call. n is the integer, the bulk
// string's length, or the array's element count (-1 for the nil kinds).
//
// An array is returned as its header alone: its n elements are the next n
// replies, each of which may be an array in turn, so that a nested reply
// such as XREADGROUP's is read one element at a time, without building a
// tree.
type reply struct {
	kind byte
	n    int64
	data []byte
}

// reader parses RESP2 replies from src into a reused buffer.
type reader struct {
	src  io.Reader
	buf  []byte
	r, w int // buf[r:w] holds bytes read but not yet parsed
}

func newReader(src io.Reader, size int) *reader {
	return &reader{src: src, buf: make([]byte, size)}
}

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errProtocol}, args...)...)
}

// next parses the next reply.
func (rd *reader) next() (reply, error) {
	if rd.r == rd.w {
		rd.r, rd.w = 0, 0
	}
	line, err := rd.line()
	if err != nil {
		return reply{}, err
	}
	if len(line) == 0 {
		return reply{}, protoErr("empty reply line")
	}
	switch line[0] {
	case kindSimple, kindError:
		return reply{kind: line[0], data: line[1:]}, nil
	case kindInteger:
		n, ok := parseInt(line[1:])
		if !ok {
			return reply{}, protoErr("bad integer %q", clip(line))
		}
		return reply{kind: kindInteger, n: n}, nil
	case kindBulk:
		n, ok := parseInt(line[1:])
		switch {
		case !ok || n < -1:
			return reply{}, protoErr("bad bulk length %q", clip(line))
		case n == -1:
			return reply{kind: kindNil, n: -1}, nil
		case n > maxBulk:
			return reply{}, protoErr("bulk length %d exceeds %d", n, maxBulk)
		}
		size := int(n)
		if err := rd.ensure(size+2, size+2); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return reply{}, err
		}
		end := rd.r + size
		if rd.buf[end] != '\r' || rd.buf[end+1] != '\n' {
			return reply{}, protoErr("bulk string of %d bytes not followed by CRLF", size)
		}
		data := rd.buf[rd.r:end:end]
		rd.r = end + 2
		return reply{kind: kindBulk, n: n, data: data}, nil
	case kindArray:
		n, ok := parseInt(line[1:])
		switch {
		case !ok || n < -1:
			return reply{}, protoErr("bad array length %q", clip(line))
		case n == -1:
			return reply{kind: kindNilArray, n: -1}, nil
		case n > maxArray:
			return reply{}, protoErr("array length %d exceeds %d", n, maxArray)
		}
		return reply{kind: kindArray, n: n}, nil
	default:
		return reply{}, protoErr("unexpected reply type %q", line[0])
	}
}

// line returns the next line without its CRLF. It points into buf.
func (rd *reader) line() ([]byte, error) {
	scanned := 0 // bytes of buf[r:w] known to hold no '\n'
	for {
		if i := bytes.IndexByte(rd.buf[rd.r+scanned:rd.w], '\n'); i >= 0 {
			end := rd.r + scanned + i
			if end == rd.r || rd.buf[end-1] != '\r' {
				return nil, protoErr("line ends in LF without CR")
			}
			line := rd.buf[rd.r : end-1 : end-1]
			rd.r = end + 1
			return line, nil
		}
		scanned = rd.w - rd.r
		if scanned >= maxLine {
			return nil, protoErr("reply line longer than %d bytes", maxLine)
		}
		if err := rd.ensure(scanned+1, maxLine+2); err != nil {
			return nil, err
		}
	}
}

// ensure reads until buf[r:w] holds at least k bytes, moving the unparsed
// bytes to the front of buf or growing it when it is full. It grows by
// doubling, up to limit bytes, and only when full, so a length announced by
// a reply costs memory only as its bytes arrive.
func (rd *reader) ensure(k, limit int) error {
	empty := 0
	for rd.w-rd.r < k {
		if rd.w == len(rd.buf) || len(rd.buf)-rd.r < k {
			rd.makeRoom(limit)
		}
		n, err := rd.src.Read(rd.buf[rd.w:])
		rd.w += n
		if n > 0 {
			empty = 0
			continue
		}
		switch {
		case err == nil:
			if empty++; empty >= 100 {
				return io.ErrNoProgress
			}
		case err == io.EOF && rd.w == rd.r:
			return io.EOF
		case err == io.EOF:
			return io.ErrUnexpectedEOF
		default:
			return err
		}
	}
	return nil
}

// makeRoom moves buf[r:w] to the front of buf and, if buf is then full,
// doubles its size, but not beyond limit unless it is already that large.
func (rd *reader) makeRoom(limit int) {
	if rd.r > 0 {
		rd.w = copy(rd.buf, rd.buf[rd.r:rd.w])
		rd.r = 0
	}
	if rd.w < len(rd.buf) {
		return
	}
	size := max(2*len(rd.buf), minGrow)
	if size > limit {
		size = max(limit, len(rd.buf)+1)
	}
	buf := make([]byte, size)
	copy(buf, rd.buf[:rd.w])
	rd.buf = buf
}

// parseInt parses a RESP integer: an optional '-' and decimal digits,
// within the range of an int64.
func parseInt(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && b[0] == '-' {
		neg, b = true, b[1:]
	}
	if len(b) == 0 {
		return 0, false
	}
	limit := uint64(1<<63 - 1)
	if neg {
		limit = 1 << 63
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (limit-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	if neg {
		return -int64(n), true
	}
	return int64(n), true
}

// clip shortens a line quoted in an error message.
func clip(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}
