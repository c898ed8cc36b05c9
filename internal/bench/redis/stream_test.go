package redis

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
)

// xreadgroupReply returns the RESP2 reply of an XREADGROUP COUNT 1 that
// read the entry id, holding one field, of the stream key.
func xreadgroupReply(key, id, field, value string) string {
	bulk := func(s string) string { return "$" + strconv.Itoa(len(s)) + "\r\n" + s + "\r\n" }
	return "*1\r\n*2\r\n" + bulk(key) + "*1\r\n*2\r\n" + bulk(id) + "*2\r\n" + bulk(field) + bulk(value)
}

// node is a reply with its elements, as a tree.
type node struct {
	reply
	elems []node
}

// doTree sends one command and reads its whole reply as a tree.
func doTree(t *testing.T, c *conn, args ...string) node {
	t.Helper()
	c.wbuf = fmt.Appendf(c.wbuf[:0], "*%d\r\n", len(args))
	for _, a := range args {
		c.wbuf = fmt.Appendf(c.wbuf, "$%d\r\n%s\r\n", len(a), a)
	}
	if err := c.write(c.wbuf); err != nil {
		t.Fatal(err)
	}
	var read func() node
	read = func() node {
		r, err := c.rd.next()
		if err != nil {
			t.Fatalf("%s: %v", args[0], err)
		}
		n := node{reply: r}
		if r.data != nil {
			n.data = bytes.Clone(r.data)
		}
		if r.kind == kindError {
			t.Fatalf("%s: %s", args[0], r.data)
		}
		if r.kind == kindArray {
			for range r.n {
				n.elems = append(n.elems, read())
			}
		}
		return n
	}
	return read()
}

// checkSettled checks that c's stream has no pending entry and holds at
// most max entries.
func checkSettled(t *testing.T, c *Stream, max int64) {
	t.Helper()
	p := doTree(t, &c.conn, "XPENDING", c.key, streamGroup)
	if p.kind != kindArray || len(p.elems) != 4 || p.elems[0].kind != kindInteger {
		t.Fatalf("XPENDING: unexpected reply %+v", p)
	}
	if n := p.elems[0].n; n != 0 {
		t.Errorf("%d entries pending after the round trips", n)
	}
	r, err := c.do("XLEN", c.key)
	if err != nil {
		t.Fatal(err)
	}
	if r.kind != kindInteger || r.n > max {
		t.Errorf("XLEN: %q %d; want at most %d entries kept", r.kind, r.n, max)
	}
}

// dialStream opens a Stream on s, closed when t ends.
func dialStream(t testing.TB, s *Server) *Stream {
	t.Helper()
	c, err := DialStream(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// nodeEntries bounds the entries of one node of a stream's radix tree
// (stream-node-max-entries), which trimming with MAXLEN ~ may keep beyond
// the length asked for.
const nodeEntries = 100

func TestStreamRoundTripSizes(t *testing.T) {
	s := startServer(t)
	c := dialStream(t, s)
	sizes := []int{0, 1, 64, 4 << 10, copyMax, copyMax + 1, 1 << 20}
	if !testing.Short() {
		sizes = append(sizes, 64<<20)
	}
	for _, n := range sizes {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			p := payload(n, 2)
			for i := range 3 { // the later rounds reuse the buffers
				calls := 0
				err := c.RoundTrip(p, func(b []byte) {
					calls++
					if !bytes.Equal(b, p) {
						t.Errorf("round %d: got %d bytes, not the %d stored", i, len(b), len(p))
					}
				})
				if err != nil {
					t.Fatal(err)
				}
				if calls != 1 {
					t.Fatalf("got called %d times", calls)
				}
			}
			checkSettled(t, c, 1+nodeEntries)
		})
	}
}

func TestStreamPipeline(t *testing.T) {
	s := startServer(t)
	c := dialStream(t, s)
	type pipeCase struct{ depth, n int }
	cases := []pipeCase{
		{600, 64},
		{600, copyMax + 1}, // more iovecs than one writev takes
	}
	for _, depth := range []int{1, 8, 16, 64} {
		for _, n := range []int{0, 64, 4 << 10, copyMax + 1, 1 << 20} {
			cases = append(cases, pipeCase{depth, n})
		}
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("depth=%d/%d", tc.depth, tc.n), func(t *testing.T) {
			p := payload(tc.n, uint64(tc.depth))
			for range 2 {
				calls := 0
				err := c.Pipeline(p, tc.depth, func(b []byte) {
					calls++
					if !bytes.Equal(b, p) {
						t.Errorf("payload %d: got %d bytes, not the %d stored", calls, len(b), len(p))
					}
				})
				if err != nil {
					t.Fatal(err)
				}
				if calls != tc.depth {
					t.Errorf("got called %d times, want %d", calls, tc.depth)
				}
			}
			checkSettled(t, c, int64(tc.depth)+nodeEntries)
		})
	}
	if err := c.Pipeline([]byte("x"), 0, nil); err == nil {
		t.Error("Pipeline with depth 0 succeeded")
	}
}

// TestStreamTrimKeepsUnread checks that the trimming of XADD never drops
// an entry still to be read: a pipeline adds depth entries before reading
// any, each XADD trimming to about depth.
func TestStreamTrimKeepsUnread(t *testing.T) {
	s := startServer(t)
	c := dialStream(t, s)
	// Large entries take a node each, so that trimming is exact.
	p := payload(8<<10, 5)
	for _, depth := range []int{1, 2, 16, 1, 16} {
		calls := 0
		if err := c.Pipeline(p, depth, func([]byte) { calls++ }); err != nil {
			t.Fatalf("depth %d: %v", depth, err)
		}
		if calls != depth {
			t.Fatalf("depth %d: read %d entries", depth, calls)
		}
		checkSettled(t, c, int64(depth))
	}
}

func TestStreamEmpty(t *testing.T) {
	s := startServer(t)
	c := dialStream(t, s)
	if err := c.write(c.read); err != nil {
		t.Fatal(err)
	}
	err := c.readEntry(func([]byte) { t.Error("got called for an empty stream") })
	if !errors.Is(err, ErrEmpty) {
		t.Fatalf("XREADGROUP of an empty stream: %v, want ErrEmpty", err)
	}
	if len(c.idEnd) != 0 {
		t.Errorf("%d IDs recorded for an empty read", len(c.idEnd))
	}
	// The connection is still in step.
	if err := c.RoundTrip([]byte("after"), nil); err != nil {
		t.Fatalf("RoundTrip after an empty read: %v", err)
	}
}

func TestStreamServerErrorReply(t *testing.T) {
	s := startServer(t)
	c := dialStream(t, s)
	if _, err := c.do("DEL", c.key); err != nil {
		t.Fatal(err)
	}
	if _, err := c.do("SET", c.key, "a string, not a stream"); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"RoundTrip": func() error { return c.RoundTrip([]byte("x"), nil) },
		"Pipeline":  func() error { return c.Pipeline([]byte("x"), 4, nil) },
	} {
		err := call()
		var se *ServerError
		if !errors.As(err, &se) || !strings.HasPrefix(se.Msg, "WRONGTYPE") {
			t.Errorf("%s on a string key: %v, want a WRONGTYPE *ServerError", name, err)
		}
	}
	// A stream without the group: XADD makes the stream, XREADGROUP fails.
	if _, err := c.do("DEL", c.key); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"RoundTrip": func() error { return c.RoundTrip([]byte("x"), nil) },
		"Pipeline":  func() error { return c.Pipeline([]byte("x"), 4, nil) },
	} {
		err := call()
		var se *ServerError
		if !errors.As(err, &se) || !strings.HasPrefix(se.Msg, "NOGROUP") {
			t.Errorf("%s without the group: %v, want a NOGROUP *ServerError", name, err)
		}
	}
	if err := c.create(); err != nil {
		t.Fatal(err)
	}
	if err := c.RoundTrip([]byte("x"), nil); err != nil {
		t.Fatalf("RoundTrip after error replies: %v", err)
	}
	if err := c.Pipeline([]byte("x"), 4, nil); err != nil {
		t.Fatalf("Pipeline after error replies: %v", err)
	}
}

func TestStreamXACKNotPending(t *testing.T) {
	s := startServer(t)
	c := dialStream(t, s)
	c.ids = append(c.ids[:0], "1-1"...)
	c.idEnd = append(c.idEnd[:0], len(c.ids))
	if err := c.writeAcks(); err != nil {
		t.Fatal(err)
	}
	if err := c.readAcked(); err == nil || !strings.Contains(err.Error(), "not pending") {
		t.Errorf("XACK of an entry never read: %v, want an error saying it was not pending", err)
	}
	if err := c.RoundTrip([]byte("after"), nil); err != nil {
		t.Fatalf("RoundTrip after: %v", err)
	}
}

func TestStreamCloseDeletesKey(t *testing.T) {
	s := startServer(t)
	c1 := dialStream(t, s)
	c2, err := DialStream(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if c1.key == c2.key {
		t.Fatalf("two streams share key %q", c1.key)
	}
	if err := c2.RoundTrip([]byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c2.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := c2.RoundTrip(nil, nil); err == nil {
		t.Error("RoundTrip on a closed Stream succeeded")
	}
	r, err := c1.do("EXISTS", c2.key)
	if err != nil {
		t.Fatal(err)
	}
	if r.kind != kindInteger || r.n != 0 {
		t.Errorf("key %q still exists after Close", c2.key)
	}
}

func TestStreamAfterServerExit(t *testing.T) {
	s := startServer(t)
	c, err := DialStream(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.RoundTrip(payload(64, 0), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := c.RoundTrip(payload(64, 0), nil); err == nil {
			t.Errorf("RoundTrip %d after the server exited succeeded", i)
		}
	}
	if err := c.Pipeline(payload(64, 0), 4, nil); err == nil {
		t.Error("Pipeline after the server exited succeeded")
	}
}

// readEntries reads XREADGROUP replies for the stream "s" from in with a
// read buffer of size bytes until the connection fails, and returns what
// each read gave: "id=payload", "empty" or "error: message".
func readEntries(in io.Reader, size int) (outcomes []string, err error) {
	c := &Stream{conn: conn{rd: newReader(in, size)}}
	c.setKey("s")
	for {
		var payload []byte
		calls := 0
		c.ids, c.idEnd = c.ids[:0], c.idEnd[:0]
		err := c.readEntry(func(b []byte) {
			calls++
			payload = bytes.Clone(b)
		})
		var se *ServerError
		switch {
		case c.err != nil:
			return outcomes, c.err
		case errors.Is(err, ErrEmpty):
			outcomes = append(outcomes, "empty")
		case errors.As(err, &se):
			outcomes = append(outcomes, "error: "+se.Msg)
		case err != nil:
			return outcomes, fmt.Errorf("readEntry failed without ending the connection: %w", err)
		case calls != 1 || len(c.idEnd) != 1:
			return outcomes, fmt.Errorf("got called %d times, %d IDs recorded", calls, len(c.idEnd))
		default:
			outcomes = append(outcomes, string(c.ids)+"="+string(payload))
		}
	}
}

func TestReadEntry(t *testing.T) {
	big := strings.Repeat("x", 200<<10)
	good := []struct {
		in   string
		want []string
	}{
		{xreadgroupReply("s", "1718000000000-0", "p", "hello"), []string{"1718000000000-0=hello"}},
		{xreadgroupReply("s", "1-0", "p", ""), []string{"1-0="}},
		{xreadgroupReply("s", "1-0", "p", "a\r\n*1\r\nb"), []string{"1-0=a\r\n*1\r\nb"}},
		{"*-1\r\n", []string{"empty"}},
		{"-NOGROUP No such key 's' or consumer group 'g'\r\n", []string{"error: NOGROUP No such key 's' or consumer group 'g'"}},
		// Back to back, as a pipeline reads them: an ID survives the
		// large payload after it, which moves or grows the buffer.
		{xreadgroupReply("s", "5-0", "p", big) + "*-1\r\n" + xreadgroupReply("s", "5-1", "p", "z"),
			[]string{"5-0=" + big, "empty", "5-1=z"}},
	}
	for _, tc := range good {
		for _, size := range []int{1, 16, 64 << 10} {
			for name, src := range readers([]byte(tc.in)) {
				got, err := readEntries(src, size)
				if !errors.Is(err, io.EOF) {
					t.Errorf("%.40q (%s/%d): ended with %v, want io.EOF", tc.in, name, size, err)
				}
				if strings.Join(got, "|") != strings.Join(tc.want, "|") {
					t.Errorf("%.40q (%s/%d): read %.80q, want %.80q", tc.in, name, size, got, tc.want)
				}
			}
		}
	}

	bad := []struct{ in, want string }{
		{":1\r\n", `a ':' reply where the streams`},
		{"$-1\r\n", "a nil bulk string where the streams"},
		{"*2\r\n", "an array of 2 where the streams, an array of 1, belongs"},
		{"*1\r\n*3\r\n", "an array of 3 where a stream"},
		{"*1\r\n*2\r\n*0\r\n", "an array of 0 where the stream's key"},
		{"*1\r\n*2\r\n$1\r\nt\r\n", `entries of stream "t", not "s"`},
		{"*1\r\n*2\r\n$1\r\ns\r\n*-1\r\n", "a nil array where the entries"},
		{"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n", "an array of 2 where the entries"},
		{"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*1\r\n", "an array of 1 where an entry"},
		{"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n:1\r\n", "where the entry's ID"},
		// A deleted entry read from the pending history has nil fields;
		// a read of new entries never gives one.
		{"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*-1\r\n", "a nil array where the entry's fields"},
		{"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*4\r\n", "an array of 4 where the entry's fields"},
		{xreadgroupReply("s", "1-0", "q", "v"), `field "q", not "p"`},
		{strings.TrimSuffix(xreadgroupReply("s", "1-0", "p", "v"), "$1\r\nv\r\n") + "$-1\r\n", "a nil bulk string where the payload"},
		{strings.TrimSuffix(xreadgroupReply("s", "1-0", "p", "value"), "\r\n"), "unexpected EOF"},
		{"*1\r\n*2\r\n$1\r\ns\r\n", "unexpected EOF"},
		{"*1\r\n", "unexpected EOF"},
		{"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\np\r\n$5\r\nab", "unexpected EOF"},
		{"*1\r\n*2\r\n+s\r\n", "where the stream's key"},
	}
	for _, tc := range bad {
		for name, src := range readers([]byte(tc.in)) {
			got, err := readEntries(src, 16)
			if len(got) != 0 || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%.60q (%s): read %q, error %v; want an error mentioning %q", tc.in, name, got, err, tc.want)
			}
		}
	}
}

// referenceEntries reads the replies referenceParse finds in in as
// XREADGROUP replies for the stream "s", as readEntries does, stopping at
// the first that is not one or is incomplete.
func referenceEntries(in []byte) []string {
	flat, _ := referenceParse(in)
	var out []string
	for len(flat) > 0 {
		r := flat[0]
		switch r.kind {
		case kindNilArray:
			out = append(out, "empty")
			flat = flat[1:]
			continue
		case kindError:
			out = append(out, "error: "+string(r.data))
			flat = flat[1:]
			continue
		}
		// [[key, [[id, [field, payload]]]]], flattened.
		shape := []struct {
			kind byte
			n    int64
		}{{kindArray, 1}, {kindArray, 2}, {kindBulk, -1}, {kindArray, 1}, {kindArray, 2}, {kindBulk, -1}, {kindArray, 2}, {kindBulk, -1}, {kindBulk, -1}}
		if len(flat) < len(shape) {
			return out
		}
		for i, s := range shape {
			if flat[i].kind != s.kind || (s.kind == kindArray && flat[i].n != s.n) {
				return out
			}
		}
		if string(flat[2].data) != "s" || string(flat[7].data) != "p" {
			return out
		}
		out = append(out, string(flat[5].data)+"="+string(flat[8].data))
		flat = flat[len(shape):]
	}
	return out
}

func FuzzReadEntry(f *testing.F) {
	for _, s := range []string{
		xreadgroupReply("s", "1-0", "p", "abc"),
		xreadgroupReply("s", "1-0", "p", "") + "*-1\r\n" + xreadgroupReply("s", "2-0", "p", "x"),
		xreadgroupReply("t", "1-0", "p", "abc"),
		xreadgroupReply("s", "1-0", "q", "abc"),
		"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*-1\r\n",
		"-NOGROUP no such group\r\n*-1\r\n",
		"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\np\r\n$5\r\nab",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > maxLine {
			return // as in FuzzParseReply
		}
		want := referenceEntries(in)
		for _, size := range []int{0, 5, 512} {
			for name, src := range readers(in) {
				got, err := readEntries(src, size)
				if err == nil {
					t.Fatalf("%s/%d: readEntries ended without an error", name, size)
				}
				if strings.Join(got, "|") != strings.Join(want, "|") {
					t.Fatalf("%s/%d: read %q, the reference %q (ended with %v)", name, size, got, want, err)
				}
			}
		}
	})
}
