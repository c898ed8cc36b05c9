package wire_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/machq/machq/internal/wire"
)

// cat joins byte slices.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// zeros returns n zero bytes.
func zeros(n int) []byte { return make([]byte, n) }

// TestGoldenEncodings pins the exact bytes of one frame of each kind, written
// out by hand from the frame format, so that the encoders cannot drift
// together with the decoders.
func TestGoldenEncodings(t *testing.T) {
	digest32 := bytes.Repeat([]byte{0xab}, 32)
	for _, tc := range []struct {
		name string
		got  []byte
		want []byte
	}{
		{
			"HELLO",
			wire.AppendHello(nil, 0x0102030405060708, wire.Hello{MinVersion: 1, MaxVersion: 0x0302}),
			cat(rawHeader(24, 0x01, 0, 0, 0, 0x0102030405060708), []byte("MCHQ"), []byte{0x01, 0x00, 0x02, 0x03}),
		},
		{
			"WELCOME",
			wire.AppendWelcome(nil, 7, wire.Welcome{Version: 1, MaxInline: 0x00100000, MaxFrame: 0x00100400, MaxMessage: 0x0000000100000002, ServerPID: 0x04030201}),
			cat(rawHeader(44, 0x81, 0, 0, 0, 7), []byte("MCHQ"),
				[]byte{0x01, 0x00, 0x00, 0x00},                         // version, reserved
				[]byte{0x00, 0x00, 0x10, 0x00},                         // max inline
				[]byte{0x00, 0x04, 0x10, 0x00},                         // max frame
				[]byte{0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00}, // max message
				[]byte{0x01, 0x02, 0x03, 0x04}),                        // server pid
		},
		{
			"STORE inline",
			wire.AppendStore(nil, 3, wire.Store{Size: 3, DigestAlg: wire.DigestSHA256, Digest: []byte{0xaa, 0xbb}, Queue: []byte("q")}, []byte("abc"), false),
			cat(rawHeader(34, 0x02, wire.FlagInline, 0, 0, 3),
				[]byte{3, 0, 0, 0, 0, 0, 0, 0}, // size
				[]byte{1, 2, 1, 0},             // digest alg, digest len, name len, reserved
				[]byte{0xaa, 0xbb}, []byte("q"), []byte("abc")),
		},
		{
			"STORE out of line",
			wire.AppendStore(nil, 4, wire.Store{Size: 1 << 32, DigestAlg: wire.DigestSHA256, Digest: digest32, Queue: []byte("jobs")}, nil, true),
			cat(rawHeader(16+12+32+4, 0x02, 0, 1, 0, 4),
				[]byte{0, 0, 0, 0, 1, 0, 0, 0},
				[]byte{1, 32, 4, 0},
				digest32, []byte("jobs")),
		},
		{
			"STORE out of line ignores inline bytes",
			wire.AppendStore(nil, 4, wire.Store{Size: 9}, []byte("ignored"), true),
			cat(rawHeader(28, 0x02, 0, 1, 0, 4), []byte{9, 0, 0, 0, 0, 0, 0, 0}, []byte{0, 0, 0, 0}),
		},
		{
			"STORED",
			wire.AppendStored(nil, 9, 0x0a0b),
			cat(rawHeader(24, 0x82, 0, 0, 0, 9), []byte{0x0b, 0x0a, 0, 0, 0, 0, 0, 0}),
		},
		{
			"RETRIEVE",
			wire.AppendRetrieve(nil, 4, wire.Retrieve{WaitMillis: wire.WaitForever, Queue: []byte("abc")}),
			cat(rawHeader(27, 0x03, 0, 0, 0, 4), []byte{0xff, 0xff, 0xff, 0xff, 3, 0, 0, 0}, []byte("abc")),
		},
		{
			"RETRIEVE private queue",
			wire.AppendRetrieve(nil, 5, wire.Retrieve{WaitMillis: 1500}),
			cat(rawHeader(24, 0x03, 0, 0, 0, 5), []byte{0xdc, 0x05, 0, 0, 0, 0, 0, 0}),
		},
		{
			"MESSAGE inline",
			wire.AppendMessage(nil, 5, wire.Message{Seq: 1, Size: 2}, []byte("hi"), false),
			cat(rawHeader(42, 0x83, wire.FlagInline, 0, 0, 5),
				[]byte{1, 0, 0, 0, 0, 0, 0, 0}, []byte{2, 0, 0, 0, 0, 0, 0, 0},
				[]byte{0, 0, 0, 0, 0, 0, 0, 0}, // digest alg, digest len, 6 reserved
				[]byte("hi")),
		},
		{
			"MESSAGE out of line",
			wire.AppendMessage(nil, 6, wire.Message{Seq: 2, Size: 5, DigestAlg: wire.DigestSHA256, Digest: []byte{1, 2, 3}}, []byte("ignored"), true),
			cat(rawHeader(43, 0x83, 0, 1, 0, 6),
				[]byte{2, 0, 0, 0, 0, 0, 0, 0}, []byte{5, 0, 0, 0, 0, 0, 0, 0},
				[]byte{1, 3, 0, 0, 0, 0, 0, 0}, []byte{1, 2, 3}),
		},
		{
			"CANCEL",
			wire.AppendCancel(nil, 6, 5),
			cat(rawHeader(24, 0x04, 0, 0, 0, 6), []byte{5, 0, 0, 0, 0, 0, 0, 0}),
		},
		{
			"STAT",
			wire.AppendStat(nil, 8),
			rawHeader(16, 0x05, 0, 0, 0, 8),
		},
		{
			"STATS",
			wire.AppendStats(nil, 8, []byte(`{}`)),
			cat(rawHeader(18, 0x85, 0, 0, 0, 8), []byte(`{}`)),
		},
		{
			"ERROR",
			wire.AppendError(nil, 10, wire.CodeEmpty, "no"),
			cat(rawHeader(22, 0xff, 0, 0, 0, 10), []byte{6, 0, 0, 0}, []byte("no")),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !bytes.Equal(tc.got, tc.want) {
				t.Fatalf("encoded\n% x\nwant\n% x", tc.got, tc.want)
			}
		})
	}
}

// frameOf parses the single frame b must hold and checks its header.
func frameOf(t testing.TB, b []byte, op wire.Op, flags, nfds uint8, id uint64) []byte {
	t.Helper()
	h, err := wire.ParseHeader(b)
	if err != nil {
		t.Fatalf("ParseHeader: %v", err)
	}
	want := wire.Header{Length: uint32(len(b)), Op: op, Flags: flags, NFDs: nfds, ID: id}
	if h != want {
		t.Fatalf("header %+v, want %+v", h, want)
	}
	return b[wire.HeaderSize:]
}

func TestHelloRoundTrip(t *testing.T) {
	for _, h := range []wire.Hello{{}, {MinVersion: 1, MaxVersion: 1}, {MinVersion: 1, MaxVersion: 0xffff}, {MinVersion: 9, MaxVersion: 2}} {
		body := frameOf(t, wire.AppendHello(nil, 0, h), wire.OpHello, 0, 0, 0)
		got, err := wire.ParseHello(body)
		if err != nil {
			t.Fatalf("ParseHello(%+v): %v", h, err)
		}
		if got != h {
			t.Fatalf("got %+v, want %+v", got, h)
		}
	}
}

func TestWelcomeRoundTrip(t *testing.T) {
	for _, w := range []wire.Welcome{
		{},
		{Version: wire.Version, MaxInline: wire.MaxInline, MaxFrame: wire.MaxFrameSize, MaxMessage: 1 << 34, ServerPID: 1},
		{Version: 0xffff, MaxInline: ^uint32(0), MaxFrame: ^uint32(0), MaxMessage: ^uint64(0), ServerPID: ^uint32(0)},
	} {
		body := frameOf(t, wire.AppendWelcome(nil, 3, w), wire.OpWelcome, 0, 0, 3)
		got, err := wire.ParseWelcome(body)
		if err != nil {
			t.Fatalf("ParseWelcome(%+v): %v", w, err)
		}
		if got != w {
			t.Fatalf("got %+v, want %+v", got, w)
		}
	}
}

func TestWelcomeIgnoresExtension(t *testing.T) {
	w := wire.Welcome{Version: 1, MaxInline: 10, MaxFrame: 20, MaxMessage: 30, ServerPID: 40}
	body := frameOf(t, wire.AppendWelcome(nil, 0, w), wire.OpWelcome, 0, 0, 0)
	got, err := wire.ParseWelcome(append(bytes.Clone(body), "fields of a later version"...))
	if err != nil {
		t.Fatalf("ParseWelcome with trailing bytes: %v", err)
	}
	if got != w {
		t.Fatalf("got %+v, want %+v", got, w)
	}
}

func TestStoreRoundTrip(t *testing.T) {
	digest64 := bytes.Repeat([]byte{0x5a}, wire.MaxDigestSize)
	queue255 := bytes.Repeat([]byte{'q'}, wire.MaxQueueName)
	for _, tc := range []struct {
		name    string
		s       wire.Store
		payload []byte
		fd      bool
	}{
		{"inline empty", wire.Store{}, nil, false},
		{"inline private", wire.Store{Size: 5}, []byte("hello"), false},
		{"inline sha256", wire.Store{Size: 3, DigestAlg: wire.DigestSHA256, Digest: bytes.Repeat([]byte{1}, 32), Queue: []byte("jobs")}, []byte("abc"), false},
		{"inline max digest and name", wire.Store{Size: 1, DigestAlg: 0xee, Digest: digest64, Queue: queue255}, []byte{0}, false},
		{"inline MaxInline", wire.Store{Size: wire.MaxInline, Queue: []byte("big")}, bytes.Repeat([]byte("x"), wire.MaxInline), false},
		{"out of line", wire.Store{Size: 1 << 30, Queue: []byte("jobs")}, nil, true},
		{"out of line zero size", wire.Store{}, nil, true},
		{"out of line max digest and name", wire.Store{Size: ^uint64(0), DigestAlg: wire.DigestSHA256, Digest: digest64, Queue: queue255}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frame := wire.AppendStore(nil, 42, tc.s, tc.payload, tc.fd)
			if len(frame) > wire.MaxFrameSize {
				t.Fatalf("frame is %d bytes, more than MaxFrameSize", len(frame))
			}
			flags, nfds := wire.FlagInline, uint8(0)
			if tc.fd {
				flags, nfds = 0, 1
			}
			body := frameOf(t, frame, wire.OpStore, flags, nfds, 42)
			h, _ := wire.ParseHeader(frame)
			got, payload, err := wire.ParseStore(h, body)
			if err != nil {
				t.Fatalf("ParseStore: %v", err)
			}
			if got.Size != tc.s.Size || got.DigestAlg != tc.s.DigestAlg || !bytes.Equal(got.Digest, tc.s.Digest) || !bytes.Equal(got.Queue, tc.s.Queue) {
				t.Fatalf("got %+v, want %+v", got, tc.s)
			}
			if tc.fd {
				if payload != nil {
					t.Fatalf("out-of-line STORE returned payload %q, want nil", payload)
				}
			} else if !bytes.Equal(payload, tc.payload) {
				t.Fatalf("payload %d bytes, want %d", len(payload), len(tc.payload))
			}
		})
	}
}

// TestStoreSlicesAreCapped checks that appending to the returned digest or
// queue name cannot overwrite the bytes that follow them in the body.
func TestStoreSlicesAreCapped(t *testing.T) {
	frame := wire.AppendStore(nil, 1, wire.Store{Size: 4, Digest: []byte{1, 2}, Queue: []byte("qq")}, []byte("data"), false)
	h, _ := wire.ParseHeader(frame)
	body := frame[wire.HeaderSize:]
	orig := bytes.Clone(body)
	s, payload, err := wire.ParseStore(h, body)
	if err != nil {
		t.Fatal(err)
	}
	if cap(s.Digest) != len(s.Digest) || cap(s.Queue) != len(s.Queue) {
		t.Fatalf("digest cap %d len %d, queue cap %d len %d: slices reach into the following bytes",
			cap(s.Digest), len(s.Digest), cap(s.Queue), len(s.Queue))
	}
	_ = append(s.Digest, 'X')
	_ = append(s.Queue, 'Y')
	if !bytes.Equal(body, orig) {
		t.Fatalf("appending to parsed slices changed the body:\n% x\nwas\n% x", body, orig)
	}
	if string(payload) != "data" {
		t.Fatalf("payload %q", payload)
	}
}

// TestStoreSlicesAlias documents that the parsed slices share the body's
// memory, so callers know to copy before the next ReadFrame.
func TestStoreSlicesAlias(t *testing.T) {
	frame := wire.AppendStore(nil, 1, wire.Store{Size: 1, Queue: []byte("q")}, []byte("p"), false)
	h, _ := wire.ParseHeader(frame)
	body := frame[wire.HeaderSize:]
	s, payload, err := wire.ParseStore(h, body)
	if err != nil {
		t.Fatal(err)
	}
	body[len(body)-2], body[len(body)-1] = 'Q', 'P'
	if string(s.Queue) != "Q" || string(payload) != "P" {
		t.Fatalf("queue %q payload %q do not alias the body", s.Queue, payload)
	}
}

func TestStoredRoundTrip(t *testing.T) {
	for _, seq := range []uint64{0, 1, 1 << 32, ^uint64(0)} {
		body := frameOf(t, wire.AppendStored(nil, 7, seq), wire.OpStored, 0, 0, 7)
		got, err := wire.ParseStored(body)
		if err != nil || got != seq {
			t.Fatalf("ParseStored = %d, %v; want %d", got, err, seq)
		}
	}
}

func TestRetrieveRoundTrip(t *testing.T) {
	for _, r := range []wire.Retrieve{
		{},
		{WaitMillis: 1, Queue: []byte("a")},
		{WaitMillis: wire.WaitForever, Queue: []byte("jobs/eu.west-1")},
		{WaitMillis: 30000, Queue: bytes.Repeat([]byte("n"), wire.MaxQueueName)},
	} {
		body := frameOf(t, wire.AppendRetrieve(nil, 8, r), wire.OpRetrieve, 0, 0, 8)
		got, err := wire.ParseRetrieve(body)
		if err != nil {
			t.Fatalf("ParseRetrieve(%+v): %v", r, err)
		}
		if got.WaitMillis != r.WaitMillis || !bytes.Equal(got.Queue, r.Queue) {
			t.Fatalf("got %+v, want %+v", got, r)
		}
	}
}

func TestMessageRoundTrip(t *testing.T) {
	digest64 := bytes.Repeat([]byte{0xc3}, wire.MaxDigestSize)
	for _, tc := range []struct {
		name    string
		m       wire.Message
		payload []byte
		fd      bool
	}{
		{"inline empty", wire.Message{Seq: 1}, nil, false},
		{"inline", wire.Message{Seq: 2, Size: 5}, []byte("hello"), false},
		{"inline digest", wire.Message{Seq: 3, Size: 3, DigestAlg: wire.DigestSHA256, Digest: bytes.Repeat([]byte{7}, 32)}, []byte("abc"), false},
		{"inline max digest", wire.Message{Seq: ^uint64(0), Size: 2, DigestAlg: 9, Digest: digest64}, []byte("zz"), false},
		{"inline MaxInline", wire.Message{Seq: 4, Size: wire.MaxInline}, bytes.Repeat([]byte("m"), wire.MaxInline), false},
		{"out of line", wire.Message{Seq: 5, Size: 1 << 33}, nil, true},
		{"out of line digest", wire.Message{Seq: 6, Size: 10, DigestAlg: wire.DigestSHA256, Digest: digest64}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frame := wire.AppendMessage(nil, 11, tc.m, tc.payload, tc.fd)
			if len(frame) > wire.MaxFrameSize {
				t.Fatalf("frame is %d bytes, more than MaxFrameSize", len(frame))
			}
			flags, nfds := wire.FlagInline, uint8(0)
			if tc.fd {
				flags, nfds = 0, 1
			}
			body := frameOf(t, frame, wire.OpMessage, flags, nfds, 11)
			h, _ := wire.ParseHeader(frame)
			got, payload, err := wire.ParseMessage(h, body)
			if err != nil {
				t.Fatalf("ParseMessage: %v", err)
			}
			if got.Seq != tc.m.Seq || got.Size != tc.m.Size || got.DigestAlg != tc.m.DigestAlg || !bytes.Equal(got.Digest, tc.m.Digest) {
				t.Fatalf("got %+v, want %+v", got, tc.m)
			}
			if cap(got.Digest) != len(got.Digest) {
				t.Fatalf("digest cap %d, len %d: it reaches into the payload", cap(got.Digest), len(got.Digest))
			}
			if tc.fd {
				if payload != nil {
					t.Fatalf("out-of-line MESSAGE returned payload %q, want nil", payload)
				}
			} else if !bytes.Equal(payload, tc.payload) {
				t.Fatalf("payload %d bytes, want %d", len(payload), len(tc.payload))
			}
		})
	}
}

func TestCancelRoundTrip(t *testing.T) {
	for _, target := range []uint64{0, 5, ^uint64(0)} {
		body := frameOf(t, wire.AppendCancel(nil, 99, target), wire.OpCancel, 0, 0, 99)
		got, err := wire.ParseCancel(body)
		if err != nil || got != target {
			t.Fatalf("ParseCancel = %d, %v; want %d", got, err, target)
		}
	}
}

func TestStatAndStats(t *testing.T) {
	if body := frameOf(t, wire.AppendStat(nil, 12), wire.OpStat, 0, 0, 12); len(body) != 0 {
		t.Fatalf("STAT body is %d bytes, want 0", len(body))
	}
	for _, doc := range [][]byte{nil, []byte(`{}`), []byte(`{"queues":{"a":{"messages":3}}}`), bytes.Repeat([]byte(" "), 70000)} {
		body := frameOf(t, wire.AppendStats(nil, 12, doc), wire.OpStats, 0, 0, 12)
		if !bytes.Equal(body, doc) {
			t.Fatalf("STATS body is %q, want %q", body, doc)
		}
	}
}

func TestErrorRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		code wire.Code
		msg  string
	}{
		{wire.CodeEmpty, ""},
		{wire.CodeMalformed, "frame length 3 is shorter than the 16-byte header"},
		{wire.CodeBadQueueName, "queue name \"a/../b\" is not allowed: ünïcödé"},
		{wire.Code(0xffff), "unknown code"},
		{wire.CodeInternal, strings.Repeat("x", 4096)},
	} {
		body := frameOf(t, wire.AppendError(nil, 13, tc.code, tc.msg), wire.OpError, 0, 0, 13)
		code, msg, err := wire.ParseError(body)
		if err != nil {
			t.Fatalf("ParseError: %v", err)
		}
		if code != tc.code || msg != tc.msg {
			t.Fatalf("got %s %q, want %s %q", code, msg, tc.code, tc.msg)
		}
	}
}

func TestErrorMessageCut(t *testing.T) {
	long := strings.Repeat("0123456789abcdef", 300) // 4800 bytes
	for _, tc := range []struct {
		n, want int
	}{
		{4095, 4095},
		{4096, 4096},
		{4097, 4096},
		{4800, 4096},
	} {
		body := frameOf(t, wire.AppendError(nil, 1, wire.CodeInternal, long[:tc.n]), wire.OpError, 0, 0, 1)
		_, msg, err := wire.ParseError(body)
		if err != nil {
			t.Fatal(err)
		}
		if msg != long[:tc.want] {
			t.Fatalf("%d-byte message came back as %d bytes, want its first %d", tc.n, len(msg), tc.want)
		}
	}
}

// TestAppendExtends checks that every Append function appends after what b
// already holds, leaves it alone, and measures the frame from its own start.
func TestAppendExtends(t *testing.T) {
	appenders := map[string]func([]byte) []byte{
		"HELLO":   func(b []byte) []byte { return wire.AppendHello(b, 1, wire.Hello{MinVersion: 1, MaxVersion: 1}) },
		"WELCOME": func(b []byte) []byte { return wire.AppendWelcome(b, 1, wire.Welcome{Version: 1}) },
		"STORE": func(b []byte) []byte {
			return wire.AppendStore(b, 1, wire.Store{Size: 3, Queue: []byte("q")}, []byte("abc"), false)
		},
		"STORE fd": func(b []byte) []byte { return wire.AppendStore(b, 1, wire.Store{Size: 3}, nil, true) },
		"STORED":   func(b []byte) []byte { return wire.AppendStored(b, 1, 2) },
		"RETRIEVE": func(b []byte) []byte { return wire.AppendRetrieve(b, 1, wire.Retrieve{Queue: []byte("q")}) },
		"MESSAGE": func(b []byte) []byte {
			return wire.AppendMessage(b, 1, wire.Message{Seq: 1, Size: 2}, []byte("hi"), false)
		},
		"MESSAGE fd": func(b []byte) []byte { return wire.AppendMessage(b, 1, wire.Message{Seq: 1, Size: 2}, nil, true) },
		"CANCEL":     func(b []byte) []byte { return wire.AppendCancel(b, 1, 2) },
		"STAT":       func(b []byte) []byte { return wire.AppendStat(b, 1) },
		"STATS":      func(b []byte) []byte { return wire.AppendStats(b, 1, []byte("{}")) },
		"ERROR":      func(b []byte) []byte { return wire.AppendError(b, 1, wire.CodeEmpty, "empty") },
	}
	for name, app := range appenders {
		t.Run(name, func(t *testing.T) {
			alone := app(nil)
			prefix := wire.AppendStats(nil, 500, []byte("a previous frame"))
			both := app(bytes.Clone(prefix))
			if !bytes.Equal(both[:len(prefix)], prefix) {
				t.Fatalf("the bytes already in b changed")
			}
			if !bytes.Equal(both[len(prefix):], alone) {
				t.Fatalf("frame appended after a prefix\n% x\ndiffers from the frame alone\n% x", both[len(prefix):], alone)
			}
			// A buffer with spare capacity must be used, not reallocated
			// into a copy that loses the prefix.
			spare := append(make([]byte, 0, 4096), prefix...)
			out := app(spare)
			if &out[0] != &spare[:1][0] {
				t.Fatalf("appending into a buffer with room reallocated it")
			}
			sameFrames(t, splitFrames(t, out), splitFrames(t, cat(prefix, alone)))
		})
	}
}

// malformed asserts that err reports a malformed body.
func malformed(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: parse succeeded, want an error", what)
	}
	if !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("%s: %v does not wrap ErrMalformed", what, err)
	}
}

func TestParseHelloErrors(t *testing.T) {
	good := wire.AppendHello(nil, 0, wire.Hello{MinVersion: 1, MaxVersion: 1})[wire.HeaderSize:]
	for name, body := range map[string][]byte{
		"nil":        nil,
		"short":      good[:7],
		"magic only": good[:4],
		"long":       append(bytes.Clone(good), 0),
		"bad magic":  cat([]byte("MCHX"), good[4:]),
		"lower case": cat([]byte("mchq"), good[4:]),
		"zeros":      zeros(8),
	} {
		_, err := wire.ParseHello(body)
		malformed(t, name, err)
	}
}

func TestParseWelcomeErrors(t *testing.T) {
	good := wire.AppendWelcome(nil, 0, wire.Welcome{Version: 1})[wire.HeaderSize:]
	for name, body := range map[string][]byte{
		"nil":           nil,
		"short by one":  good[:len(good)-1],
		"magic only":    good[:4],
		"HELLO body":    wire.AppendHello(nil, 0, wire.Hello{MinVersion: 1, MaxVersion: 1})[wire.HeaderSize:],
		"bad magic":     cat([]byte("MCHq"), good[4:]),
		"zeros":         zeros(28),
		"long bad tail": cat([]byte("XCHQ"), good[4:], []byte("ext")),
	} {
		_, err := wire.ParseWelcome(body)
		malformed(t, name, err)
	}
}

// storeBody builds a STORE body field by field.
func storeBody(size uint64, alg, dl, nl, reserved uint8, rest ...[]byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, size)
	b = append(b, alg, dl, nl, reserved)
	return cat(append([][]byte{b}, rest...)...)
}

func TestParseStoreErrors(t *testing.T) {
	inline := wire.Header{Op: wire.OpStore, Flags: wire.FlagInline}
	outOfLine := wire.Header{Op: wire.OpStore, NFDs: 1}
	for _, tc := range []struct {
		name string
		h    wire.Header
		body []byte
	}{
		{"nil", inline, nil},
		{"11 bytes", inline, storeBody(0, 0, 0, 0, 0)[:11]},
		{"11 bytes out of line", outOfLine, storeBody(0, 0, 0, 0, 0)[:11]},
		{"reserved byte", inline, storeBody(0, 0, 0, 0, 1)},
		{"reserved byte out of line", outOfLine, storeBody(0, 0, 0, 0, 0x80)},
		{"digest 65 bytes", outOfLine, storeBody(0, 1, 65, 0, 0, zeros(65))},
		{"digest 255 bytes", inline, storeBody(0, 1, 255, 0, 0, zeros(255))},
		{"digest longer than body", outOfLine, storeBody(0, 1, 32, 0, 0, zeros(31))},
		{"name longer than body", outOfLine, storeBody(0, 0, 0, 5, 0, []byte("jobs"))},
		{"digest and name longer than body", outOfLine, storeBody(0, 1, 2, 2, 0, []byte{1, 2, 'q'})},
		{"inline payload short", inline, storeBody(4, 0, 0, 1, 0, []byte("q"), []byte("abc"))},
		{"inline payload long", inline, storeBody(2, 0, 0, 1, 0, []byte("q"), []byte("abc"))},
		{"inline payload missing", inline, storeBody(10, 0, 0, 0, 0)},
		{"inline size 2^64-1", inline, storeBody(^uint64(0), 0, 0, 0, 0, []byte("x"))},
		{"out of line with payload", outOfLine, storeBody(3, 0, 0, 1, 0, []byte("q"), []byte("abc"))},
		{"out of line with one stray byte", outOfLine, storeBody(3, 0, 0, 0, 0, []byte{0})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := wire.ParseStore(tc.h, tc.body)
			malformed(t, tc.name, err)
		})
	}
}

func TestParseStoreFlagDecidesInline(t *testing.T) {
	// Only the inline flag bit decides; other flag bits and the descriptor
	// count are the caller's business.
	body := storeBody(3, 0, 0, 1, 0, []byte("q"), []byte("abc"))
	if _, p, err := wire.ParseStore(wire.Header{Flags: 0xff}, body); err != nil || string(p) != "abc" {
		t.Fatalf("flags 0xff: payload %q, err %v; want abc, nil", p, err)
	}
	if _, _, err := wire.ParseStore(wire.Header{Flags: 0xfe}, body); err == nil {
		t.Fatalf("flags 0xfe (not inline) accepted a body carrying payload bytes")
	}
}

func TestParseStoredErrors(t *testing.T) {
	for _, n := range []int{0, 1, 7, 9, 16} {
		_, err := wire.ParseStored(zeros(n))
		malformed(t, fmt.Sprintf("%d-byte STORED body", n), err)
	}
}

func TestParseRetrieveErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"nil", nil},
		{"7 bytes", zeros(7)},
		{"reserved byte 5", []byte{0, 0, 0, 0, 0, 1, 0, 0}},
		{"reserved byte 6", []byte{0, 0, 0, 0, 0, 0, 1, 0}},
		{"reserved byte 7", []byte{0, 0, 0, 0, 0, 0, 0, 1}},
		{"name shorter than declared", cat([]byte{0, 0, 0, 0, 4, 0, 0, 0}, []byte("abc"))},
		{"name longer than declared", cat([]byte{0, 0, 0, 0, 2, 0, 0, 0}, []byte("abc"))},
		{"name without length", cat([]byte{0, 0, 0, 0, 0, 0, 0, 0}, []byte("a"))},
		{"255 declared, none sent", []byte{0, 0, 0, 0, 255, 0, 0, 0}},
	} {
		_, err := wire.ParseRetrieve(tc.body)
		malformed(t, tc.name, err)
	}
}

// messageBody builds a MESSAGE body field by field.
func messageBody(seq, size uint64, alg, dl uint8, rest ...[]byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, seq)
	b = binary.LittleEndian.AppendUint64(b, size)
	b = append(b, alg, dl, 0, 0, 0, 0, 0, 0)
	return cat(append([][]byte{b}, rest...)...)
}

func TestParseMessageErrors(t *testing.T) {
	inline := wire.Header{Op: wire.OpMessage, Flags: wire.FlagInline}
	outOfLine := wire.Header{Op: wire.OpMessage, NFDs: 1}
	for _, tc := range []struct {
		name string
		h    wire.Header
		body []byte
	}{
		{"nil", inline, nil},
		{"23 bytes", inline, messageBody(1, 0, 0, 0)[:23]},
		{"23 bytes out of line", outOfLine, messageBody(1, 0, 0, 0)[:23]},
		{"digest longer than body", outOfLine, messageBody(1, 0, 1, 32, zeros(31))},
		{"digest 65 bytes", outOfLine, messageBody(1, 0, 1, 65, zeros(65))},
		{"digest 255 bytes inline", inline, messageBody(1, 0, 1, 255, zeros(255))},
		{"inline payload short", inline, messageBody(1, 4, 0, 0, []byte("abc"))},
		{"inline payload long", inline, messageBody(1, 2, 0, 0, []byte("abc"))},
		{"inline payload missing", inline, messageBody(1, 1, 0, 0)},
		{"out of line with payload", outOfLine, messageBody(1, 3, 0, 0, []byte("abc"))},
		{"out of line stray byte after digest", outOfLine, messageBody(1, 3, 1, 2, []byte{1, 2, 3})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := wire.ParseMessage(tc.h, tc.body)
			malformed(t, tc.name, err)
		})
	}
}

func TestParseCancelErrors(t *testing.T) {
	for _, n := range []int{0, 4, 7, 9, 24} {
		_, err := wire.ParseCancel(zeros(n))
		malformed(t, fmt.Sprintf("%d-byte CANCEL body", n), err)
	}
}

func TestParseErrorErrors(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3} {
		_, _, err := wire.ParseError(zeros(n))
		malformed(t, fmt.Sprintf("%d-byte ERROR body", n), err)
	}
	// The smallest valid ERROR: a code and no message.
	code, msg, err := wire.ParseError([]byte{12, 0, 0, 0})
	if err != nil || code != wire.CodeBadDescriptor || msg != "" {
		t.Fatalf("ParseError(4 bytes) = %s, %q, %v; want BAD_DESCRIPTOR, \"\", nil", code, msg, err)
	}
}

// TestParseDoesNotModifyBody runs every parser over a copy of a real body
// and checks the body is unchanged afterwards.
func TestParseDoesNotModifyBody(t *testing.T) {
	for _, frame := range sampleFrames() {
		h, err := wire.ParseHeader(frame)
		if err != nil {
			t.Fatal(err)
		}
		body := bytes.Clone(frame[wire.HeaderSize:])
		orig := slices.Clone(body)
		wire.ParseHello(body)
		wire.ParseWelcome(body)
		wire.ParseStore(h, body)
		wire.ParseStored(body)
		wire.ParseRetrieve(body)
		wire.ParseMessage(h, body)
		wire.ParseCancel(body)
		wire.ParseError(body)
		if !bytes.Equal(body, orig) {
			t.Fatalf("%s: parsing changed the body", h.Op)
		}
	}
}

// unhex decodes a hex dump, ignoring spaces and newlines.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

// TestProtocolWorkedExample encodes the frames of docs/PROTOCOL.md section
// 12 and compares them with the hex given there.
func TestProtocolWorkedExample(t *testing.T) {
	sum := sha256.Sum256([]byte("hi"))
	digest := sum[:]
	if want := unhex(t, "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"); !bytes.Equal(digest, want) {
		t.Fatalf("SHA-256(hi) = %x, the document says %x", digest, want)
	}
	for _, tc := range []struct {
		name string
		got  []byte
		want string
	}{
		{"HELLO", wire.AppendHello(nil, 0, wire.Hello{MinVersion: 1, MaxVersion: 1}), `
			18 00 00 00  01  00  00  00  00 00 00 00 00 00 00 00
			4d 43 48 51  01 00  01 00`},
		{"WELCOME", wire.AppendWelcome(nil, 0, wire.Welcome{Version: 1, MaxInline: 1 << 20, MaxFrame: wire.MaxFrameSize, MaxMessage: 4 << 30, ServerPID: 4242}), `
			2c 00 00 00  81  00  00  00  00 00 00 00 00 00 00 00
			4d 43 48 51  01 00  00 00  00 00 10 00  00 04 10 00
			00 00 00 00 01 00 00 00  92 10 00 00`},
		{"STORE", wire.AppendStore(nil, 1, wire.Store{Size: 2, DigestAlg: wire.DigestSHA256, Digest: digest, Queue: []byte("q")}, []byte("hi"), false), `
			3f 00 00 00  02  01  00  00  01 00 00 00 00 00 00 00
			02 00 00 00 00 00 00 00  01  20  01  00
			8f 43 43 46 64 8f 6b 96 df 89 dd a9 01 c5 17 6b
			10 a6 d8 39 61 dd 3c 1a c8 8b 59 b2 dc 32 7a a4
			71  68 69`},
		{"STORED", wire.AppendStored(nil, 1, 1), `
			18 00 00 00  82  00  00  00  01 00 00 00 00 00 00 00
			01 00 00 00 00 00 00 00`},
		{"RETRIEVE", wire.AppendRetrieve(nil, 2, wire.Retrieve{WaitMillis: 0, Queue: []byte("q")}), `
			19 00 00 00  03  00  00  00  02 00 00 00 00 00 00 00
			00 00 00 00  01  00 00 00  71`},
		{"MESSAGE", wire.AppendMessage(nil, 2, wire.Message{Seq: 1, Size: 2, DigestAlg: wire.DigestSHA256, Digest: digest}, []byte("hi"), false), `
			4a 00 00 00  83  01  00  00  02 00 00 00 00 00 00 00
			01 00 00 00 00 00 00 00  02 00 00 00 00 00 00 00
			01  20  00 00 00 00 00 00
			8f 43 43 46 64 8f 6b 96 df 89 dd a9 01 c5 17 6b
			10 a6 d8 39 61 dd 3c 1a c8 8b 59 b2 dc 32 7a a4
			68 69`},
		{"ERROR", wire.AppendError(nil, 2, wire.CodeEmpty, "queue q is empty"), `
			24 00 00 00  ff  00  00  00  02 00 00 00 00 00 00 00
			06 00  00 00
			71 75 65 75 65 20 71 20 69 73 20 65 6d 70 74 79`},
	} {
		if want := unhex(t, tc.want); !bytes.Equal(tc.got, want) {
			t.Errorf("%s encodes as\n% x\nthe document says\n% x", tc.name, tc.got, want)
		}
	}
}

func TestErrorMessageCutKeepsCharacters(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  string
	}{
		{"two-byte rune across the limit", strings.Repeat("a", 4095) + "é"},
		{"three-byte runes", strings.Repeat("€", 2000)},
		{"four-byte runes", strings.Repeat("𝄞", 1500)},
		{"rune ending at the limit", strings.Repeat("a", 4094) + "é" + "tail"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := frameOf(t, wire.AppendError(nil, 1, wire.CodeInternal, tc.msg), wire.OpError, 0, 0, 1)
			_, msg, err := wire.ParseError(body)
			if err != nil {
				t.Fatal(err)
			}
			if len(msg) > 4096 || len(msg) < 4096-(utf8.UTFMax-1) {
				t.Fatalf("message cut to %d bytes, want 4093 to 4096", len(msg))
			}
			if !strings.HasPrefix(tc.msg, msg) {
				t.Fatalf("cut message is not a prefix of the original")
			}
			if !utf8.ValidString(msg) {
				t.Fatalf("cut message %q… is not valid UTF-8: a character was split", msg[len(msg)-8:])
			}
		})
	}
}

// TestWelcomeSoftware: the server's software name travels after the
// fixed fields, a WELCOME without it (an older server) parses with none,
// and what is not a whole printable name is ignored, never an error.
func TestWelcomeSoftware(t *testing.T) {
	w := wire.Welcome{Version: 3, MaxInline: 1 << 16, MaxFrame: wire.MaxFrameSize, MaxMessage: 1 << 32, ServerPID: 42, Software: "machqd devel 1f4c724a9b3e (go1.26.8)"}
	_, body := splitHeader(t, wire.AppendWelcome(nil, 1, w))
	got, err := wire.ParseWelcome(body)
	if err != nil || got != w {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, w)
	}
	old := w
	old.Software = ""
	_, body = splitHeader(t, wire.AppendWelcome(nil, 1, old))
	if len(body) != 28 {
		t.Fatalf("a WELCOME without software is %d bytes, want 28", len(body))
	}
	if got, err := wire.ParseWelcome(body); err != nil || got != old {
		t.Fatalf("28-byte WELCOME: %+v, %v", got, err)
	}
	for name, tail := range map[string][]byte{
		"truncated":       append([]byte{10}, "abc"...),
		"escape sequence": append([]byte{4}, "\x1b[2J"...),
		"not UTF-8":       {2, 0xff, 0xfe},
		"empty":           {0},
	} {
		got, err := wire.ParseWelcome(append(append([]byte(nil), body...), tail...))
		if err != nil || got.Software != "" || got.ServerPID != 42 {
			t.Errorf("%s: %+v, %v; want the fixed fields and no software", name, got, err)
		}
	}
	long := w
	long.Software = strings.Repeat("x", 300)
	_, body = splitHeader(t, wire.AppendWelcome(nil, 1, long))
	if got, _ := wire.ParseWelcome(body); len(got.Software) != wire.MaxSoftware {
		t.Fatalf("a 300-byte name arrives as %d bytes, want it cut to %d", len(got.Software), wire.MaxSoftware)
	}
}
