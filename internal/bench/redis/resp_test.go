package redis

import (
	"bytes"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// parseAll parses replies from src until the first error, copying each
// reply's data, and returns them with that error.
func parseAll(src io.Reader, bufSize int) ([]reply, error) {
	rd := newReader(src, bufSize)
	var out []reply
	for {
		r, err := rd.next()
		if err != nil {
			return out, err
		}
		if r.data != nil {
			r.data = bytes.Clone(r.data)
		}
		out = append(out, r)
	}
}

// readers returns ways of delivering data: all at once, a byte at a time,
// and in reads that also return io.EOF with the last bytes.
func readers(data []byte) map[string]io.Reader {
	return map[string]io.Reader{
		"whole":   bytes.NewReader(data),
		"onebyte": iotest.OneByteReader(bytes.NewReader(data)),
		"dataeof": iotest.DataErrReader(bytes.NewReader(data)),
	}
}

func TestParseReply(t *testing.T) {
	good := []struct {
		in   string
		want []reply
	}{
		{"+OK\r\n", []reply{{kind: kindSimple, data: []byte("OK")}}},
		{"+\r\n", []reply{{kind: kindSimple, data: []byte{}}}},
		{"-ERR wrong number of arguments\r\n", []reply{{kind: kindError, data: []byte("ERR wrong number of arguments")}}},
		{":0\r\n:42\r\n:-7\r\n", []reply{{kind: kindInteger}, {kind: kindInteger, n: 42}, {kind: kindInteger, n: -7}}},
		{":9223372036854775807\r\n:-9223372036854775808\r\n", []reply{{kind: kindInteger, n: math.MaxInt64}, {kind: kindInteger, n: math.MinInt64}}},
		{"$0\r\n\r\n", []reply{{kind: kindBulk, data: []byte{}}}},
		{"$5\r\nhe\r\no\r\n", []reply{{kind: kindBulk, n: 5, data: []byte("he\r\no")}}},
		{"$-1\r\n", []reply{{kind: kindNil, n: -1}}},
		{"$3\r\nabc\r\n:1\r\n$-1\r\n+PONG\r\n", []reply{
			{kind: kindBulk, n: 3, data: []byte("abc")},
			{kind: kindInteger, n: 1},
			{kind: kindNil, n: -1},
			{kind: kindSimple, data: []byte("PONG")},
		}},
		// Arrays come as their header, then their elements.
		{"*0\r\n*-1\r\n*2\r\n:1\r\n$1\r\na\r\n", []reply{
			{kind: kindArray},
			{kind: kindNilArray, n: -1},
			{kind: kindArray, n: 2},
			{kind: kindInteger, n: 1},
			{kind: kindBulk, n: 1, data: []byte("a")},
		}},
		// An XREADGROUP reply: [[key, [[id, [field, value]]]]].
		{xreadgroupReply("s", "1-0", "p", "he\r\nllo"), []reply{
			{kind: kindArray, n: 1},
			{kind: kindArray, n: 2},
			{kind: kindBulk, n: 1, data: []byte("s")},
			{kind: kindArray, n: 1},
			{kind: kindArray, n: 2},
			{kind: kindBulk, n: 3, data: []byte("1-0")},
			{kind: kindArray, n: 2},
			{kind: kindBulk, n: 1, data: []byte("p")},
			{kind: kindBulk, n: 7, data: []byte("he\r\nllo")},
		}},
		{"*1073741824\r\n", []reply{{kind: kindArray, n: maxArray}}},
	}
	for _, tc := range good {
		for name, src := range readers([]byte(tc.in)) {
			got, err := parseAll(src, 1)
			if err != io.EOF {
				t.Errorf("%q (%s): ended with %v, want io.EOF", tc.in, name, err)
			}
			if !equalReplies(got, tc.want) {
				t.Errorf("%q (%s): got %+v, want %+v", tc.in, name, got, tc.want)
			}
		}
	}

	bad := []struct{ in, want string }{
		{"+OK", "unexpected EOF"},
		{"+OK\r", "unexpected EOF"},
		{"+OK\n", "LF without CR"},
		{"\r\n", "empty reply line"},
		{"\n", "LF without CR"},
		{"hello\r\n", "unexpected reply type"},
		{"%1\r\n+a\r\n+b\r\n", "unexpected reply type"}, // a RESP3 map
		{"*\r\n", "bad array length"},
		{"*x\r\n", "bad array length"},
		{"*+1\r\n", "bad array length"},
		{"*-2\r\n", "bad array length"},
		{"*99999999999999999999\r\n", "bad array length"},
		{"*1073741825\r\n", "exceeds"},
		{":\r\n", "bad integer"},
		{":12x\r\n", "bad integer"},
		{":+1\r\n", "bad integer"},
		{":9223372036854775808\r\n", "bad integer"},
		{":-\r\n", "bad integer"},
		{"$\r\n", "bad bulk length"},
		{"$abc\r\n", "bad bulk length"},
		{"$-2\r\n", "bad bulk length"},
		{"$99999999999999999999\r\n", "bad bulk length"},
		{"$1073741825\r\n", "exceeds"},
		{"$1073741824\r\n", "unexpected EOF"},
		{"$3\r\n", "unexpected EOF"},
		{"$3\r\nab", "unexpected EOF"},
		{"$3\r\nabc", "unexpected EOF"},
		{"$3\r\nabc\r", "unexpected EOF"},
		{"$3\r\nabcXY", "not followed by CRLF"},
		{"$3\r\nabcd\r\n", "not followed by CRLF"},
		{"+" + strings.Repeat("x", maxLine), "longer than"},
	}
	for _, tc := range bad {
		for name, src := range readers([]byte(tc.in)) {
			_, err := parseAll(src, 16)
			if err == nil || err == io.EOF || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%.40q (%s): error %v, want one mentioning %q", tc.in, name, err, tc.want)
			}
		}
	}
}

func TestParseReplyReadError(t *testing.T) {
	boom := errors.New("boom")
	_, err := parseAll(io.MultiReader(strings.NewReader("$10\r\nabc"), iotest.ErrReader(boom)), 16)
	if !errors.Is(err, boom) {
		t.Errorf("got %v, want the reader's error", err)
	}
	_, err = parseAll(iotest.ErrReader(nil), 16) // (0, nil) forever
	if !errors.Is(err, io.ErrNoProgress) {
		t.Errorf("got %v, want io.ErrNoProgress", err)
	}
}

func TestParseReplyBufferReuse(t *testing.T) {
	// Replies of growing size and many small ones after them: the buffer
	// grows only to the largest, and compacting keeps every reply whole.
	var in bytes.Buffer
	var want []reply
	for _, n := range []int{10, 5000, 70000, 3, 200000, 1} {
		p := bytes.Repeat([]byte{byte('a' + n%26)}, n)
		in.WriteString("$" + strconv.Itoa(n) + "\r\n")
		in.Write(p)
		in.WriteString("\r\n")
		want = append(want, reply{kind: kindBulk, n: int64(n), data: p})
	}
	for i := range 1000 {
		in.WriteString(":" + strconv.Itoa(i) + "\r\n")
		want = append(want, reply{kind: kindInteger, n: int64(i)})
	}
	rd := newReader(iotest.HalfReader(bytes.NewReader(in.Bytes())), 1)
	for i, w := range want {
		r, err := rd.next()
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if !equalReplies([]reply{r}, []reply{w}) {
			t.Fatalf("reply %d: got %q %d (%d bytes), want %q %d (%d bytes)", i, r.kind, r.n, len(r.data), w.kind, w.n, len(w.data))
		}
	}
	if _, err := rd.next(); err != io.EOF {
		t.Errorf("after the last reply: %v, want io.EOF", err)
	}
	if len(rd.buf) > 2*200002 {
		t.Errorf("buffer grew to %d bytes for replies of at most 200002", len(rd.buf))
	}
}

func TestParseInt(t *testing.T) {
	for _, s := range []string{"0", "-0", "7", "-7", "007", "9223372036854775807", "-9223372036854775808",
		"9223372036854775808", "-9223372036854775809", "18446744073709551616", "99999999999999999999",
		"", "-", "+1", "1-", " 1", "1 ", "0x10", "1_000"} {
		n, ok := parseInt([]byte(s))
		wn, werr := strconv.ParseInt(s, 10, 64)
		wok := werr == nil && !strings.HasPrefix(s, "+")
		if ok != wok || (ok && n != wn) {
			t.Errorf("parseInt(%q) = %d, %v; want %d, %v", s, n, ok, wn, wok)
		}
	}
}

func equalReplies(a, b []reply) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].kind != b[i].kind || a[i].n != b[i].n || !bytes.Equal(a[i].data, b[i].data) {
			return false
		}
	}
	return true
}

// referenceParse parses RESP2 replies the simple way, with the whole input
// at hand, and reports whether it ended cleanly at a reply boundary.
func referenceParse(in []byte) (replies []reply, clean bool) {
	for len(in) > 0 {
		i := bytes.IndexByte(in, '\n')
		if i <= 0 || in[i-1] != '\r' || i == 1 {
			return replies, false
		}
		line, rest := in[:i-1], in[i+1:]
		switch line[0] {
		case '+', '-':
			replies = append(replies, reply{kind: line[0], data: line[1:]})
		case ':', '$', '*':
			s := string(line[1:])
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || strings.HasPrefix(s, "+") {
				return replies, false
			}
			if line[0] == ':' {
				replies = append(replies, reply{kind: kindInteger, n: n})
				break
			}
			if line[0] == '*' {
				switch {
				case n == -1:
					replies = append(replies, reply{kind: kindNilArray, n: -1})
				case n < -1 || n > maxArray:
					return replies, false
				default:
					replies = append(replies, reply{kind: kindArray, n: n})
				}
				break
			}
			switch {
			case n == -1:
				replies = append(replies, reply{kind: kindNil, n: -1})
			case n < -1 || n > maxBulk || int64(len(rest)) < n+2 || rest[n] != '\r' || rest[n+1] != '\n':
				return replies, false
			default:
				replies = append(replies, reply{kind: kindBulk, n: n, data: rest[:n]})
				rest = rest[n+2:]
			}
		default:
			return replies, false
		}
		in = rest
	}
	return replies, true
}

func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		"+OK\r\n", "-ERR unknown command\r\n", ":42\r\n", "$3\r\nabc\r\n", "$-1\r\n", "$0\r\n\r\n",
		"$3\r\nab", "$5\r\nabc\r\n", ":1\r\n$-1\r\n+PONG\r\n", "$99999999999\r\n", "*2\r\n:1\r\n:2\r\n",
		"*-1\r\n", "*0\r\n", "*-2\r\n", "*1073741825\r\n", xreadgroupReply("s", "1-0", "p", "abc"),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > maxLine {
			// A line limit that depends on buffering; skip rather than
			// model it.
			return
		}
		want, clean := referenceParse(in)
		for _, size := range []int{0, 5, 512} {
			for name, src := range readers(in) {
				checkParse(t, src, size, name, want, clean)
			}
		}
	})
}

// checkParse parses src with a buffer of size bytes and compares the
// result with the reference parser's.
func checkParse(t *testing.T, src io.Reader, size int, name string, want []reply, clean bool) {
	t.Helper()
	got, err := parseAll(src, size)
	name += "/" + strconv.Itoa(size)
	if err == nil {
		t.Fatalf("%s: parseAll ended without an error", name)
	}
	if (err == io.EOF) != clean {
		t.Fatalf("%s: ended with %v; the reference parser ended cleanly: %v", name, err, clean)
	}
	if !equalReplies(got, want) {
		t.Fatalf("%s: parsed %+v, the reference parser %+v", name, got, want)
	}
	for _, r := range got {
		if r.kind == kindBulk && int64(len(r.data)) != r.n {
			t.Fatalf("%s: bulk reply of length %d holds %d bytes", name, r.n, len(r.data))
		}
	}
}
