package wire_test

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/machq/machq/internal/wire"
)

func TestAckRetrieveRoundTrip(t *testing.T) {
	r := wire.Retrieve{WaitMillis: 250, Queue: []byte("jobs"), Ack: true, LeaseMillis: 30000, Credit: 16}
	f := wire.AppendRetrieve(nil, 7, r)
	h, err := wire.ParseHeader(f)
	if err != nil {
		t.Fatal(err)
	}
	if h.Flags != wire.FlagAck || h.Op != wire.OpRetrieve || int(h.Length) != len(f) {
		t.Fatalf("header %+v", h)
	}
	got, err := wire.ParseAckRetrieve(f[wire.HeaderSize:])
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatalf("got %+v, want %+v", got, r)
	}
	// The layout of docs/PROTOCOL.md: wait, name length, 3 reserved,
	// lease, credit, name.
	want := []byte{250, 0, 0, 0, 4, 0, 0, 0, 0x30, 0x75, 0, 0, 16, 0, 0, 0, 'j', 'o', 'b', 's'}
	if !bytes.Equal(f[wire.HeaderSize:], want) {
		t.Fatalf("body % x, want % x", f[wire.HeaderSize:], want)
	}
	// A plain parse of the same body sees a name length that does not
	// add up.
	if _, err := wire.ParseRetrieve(f[wire.HeaderSize:]); !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("plain parse of an ack body: %v", err)
	}
}

func TestAckMessageRoundTrip(t *testing.T) {
	digest := bytes.Repeat([]byte{9}, 32)
	for _, hasFD := range []bool{false, true} {
		m := wire.Message{Seq: 41, Size: 5, DigestAlg: wire.DigestSHA256, Digest: digest, Ack: true, Token: 1 << 40, Deliveries: 3, Dead: wire.DeadMaxDeliveries, Note: []byte("not now"), DiedAfter: 20}
		f := wire.AppendMessage(nil, 2, m, []byte("hello"), hasFD)
		h, err := wire.ParseHeader(f)
		if err != nil {
			t.Fatal(err)
		}
		if h.Flags&wire.FlagAck == 0 {
			t.Fatalf("flags %#x lack ACK", h.Flags)
		}
		got, payload, err := wire.ParseMessage(h, f[wire.HeaderSize:])
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("got %+v, want %+v", got, m)
		}
		if want := map[bool]string{false: "hello", true: ""}[hasFD]; string(payload) != want {
			t.Fatalf("payload %q, want %q", payload, want)
		}
	}
	// The note is cut to MaxNote on encoding.
	long := wire.Message{Ack: true, Note: bytes.Repeat([]byte("n"), wire.MaxNote+10)}
	f := wire.AppendMessage(nil, 1, long, nil, false)
	h, _ := wire.ParseHeader(f)
	got, _, err := wire.ParseMessage(h, f[wire.HeaderSize:])
	if err != nil || len(got.Note) != wire.MaxNote {
		t.Fatalf("long note: %d bytes, %v", len(got.Note), err)
	}
}

func TestSettleRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		op wire.Op
		s  wire.Settle
	}{
		{wire.OpAck, wire.Settle{Token: 5}},
		{wire.OpTouch, wire.Settle{Token: 6}},
		{wire.OpNak, wire.Settle{Token: 7, DelayMillis: 1500, Text: []byte("busy")}},
		{wire.OpNak, wire.Settle{Token: 7}},
		{wire.OpTerm, wire.Settle{Token: 8, Text: []byte("poison")}},
	} {
		f := wire.AppendSettle(nil, tc.op, 3, tc.s)
		h, err := wire.ParseHeader(f)
		if err != nil || h.Op != tc.op {
			t.Fatalf("%s header %+v, %v", tc.op, h, err)
		}
		got, err := wire.ParseSettle(tc.op, f[wire.HeaderSize:])
		if err != nil {
			t.Fatalf("%s: %v", tc.op, err)
		}
		if got.Token != tc.s.Token || got.DelayMillis != tc.s.DelayMillis || string(got.Text) != string(tc.s.Text) {
			t.Fatalf("%s: got %+v, want %+v", tc.op, got, tc.s)
		}
	}
	s, err := wire.ParseSettled(wire.AppendSettled(nil, 1, wire.Settled{Outcome: wire.OutcomeTouched, LeaseMillis: 99})[wire.HeaderSize:])
	if err != nil || s.Outcome != wire.OutcomeTouched || s.LeaseMillis != 99 {
		t.Fatalf("SETTLED: %+v, %v", s, err)
	}
}

func TestParseSettleErrors(t *testing.T) {
	body := func(op wire.Op, s wire.Settle) []byte { return wire.AppendSettle(nil, op, 1, s)[wire.HeaderSize:] }
	for _, tc := range []struct {
		name string
		op   wire.Op
		body []byte
		want string
	}{
		{"short", wire.OpAck, make([]byte, 15), "want at least 16"},
		{"delay on ACK", wire.OpAck, body(wire.OpNak, wire.Settle{DelayMillis: 1}), "only NAK may"},
		{"delay on TERM", wire.OpTerm, body(wire.OpNak, wire.Settle{DelayMillis: 1}), "only NAK may"},
		{"text on ACK", wire.OpAck, body(wire.OpNak, wire.Settle{Text: []byte("x")}), "only NAK and TERM"},
		{"text on TOUCH", wire.OpTouch, body(wire.OpTerm, wire.Settle{Text: []byte("x")}), "only NAK and TERM"},
		{"text too long", wire.OpNak, append(append([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0x01, 0x02, 0, 0), make([]byte, 513)...), "exceeds 512"},
		{"text length does not add up", wire.OpNak, append(body(wire.OpNak, wire.Settle{Text: []byte("abc")}), 'd'), "carries 4 bytes"},
		{"reserved", wire.OpAck, []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0}, "reserved"},
	} {
		_, err := wire.ParseSettle(tc.op, tc.body)
		if !errors.Is(err, wire.ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestKickRoundTrip(t *testing.T) {
	k := wire.Kick{Count: 3, Queue: []byte("jobs")}
	f := wire.AppendKick(nil, 4, k)
	got, err := wire.ParseKick(f[wire.HeaderSize:])
	if err != nil || got.Count != 3 || string(got.Queue) != "jobs" {
		t.Fatalf("KICK: %+v, %v", got, err)
	}
	if _, err := wire.ParseKick(append(f[wire.HeaderSize:], 'x')); !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("KICK with a stray byte: %v", err)
	}
	n, err := wire.ParseKicked(wire.AppendKicked(nil, 4, 12)[wire.HeaderSize:])
	if err != nil || n != 12 {
		t.Fatalf("KICKED: %d, %v", n, err)
	}
}
