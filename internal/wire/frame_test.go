package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/machq/machq/internal/wire"
)

// rawHeader builds header bytes field by field, independently of PutHeader.
func rawHeader(length uint32, op, flags, nfds, reserved uint8, id uint64) []byte {
	b := binary.LittleEndian.AppendUint32(nil, length)
	b = append(b, op, flags, nfds, reserved)
	return binary.LittleEndian.AppendUint64(b, id)
}

func TestPutHeaderLayout(t *testing.T) {
	b := bytes.Repeat([]byte{0xee}, wire.HeaderSize+1)
	wire.PutHeader(b, wire.Header{Length: 0x04030201, Op: wire.OpMessage, Flags: wire.FlagInline, NFDs: 1, ID: 0x0807060504030201})
	want := []byte{
		0x01, 0x02, 0x03, 0x04, // length, little-endian
		0x83, 0x01, 0x01, 0x00, // op, flags, nfds, reserved
		0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // id, little-endian
		0xee, // untouched
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("PutHeader wrote\n% x\nwant\n% x", b, want)
	}
}

func TestPutHeaderClearsReserved(t *testing.T) {
	b := bytes.Repeat([]byte{0xff}, wire.HeaderSize)
	wire.PutHeader(b, wire.Header{Length: wire.HeaderSize, Op: wire.OpStat})
	if b[7] != 0 {
		t.Fatalf("reserved byte is %#x after PutHeader, want 0", b[7])
	}
	if _, err := wire.ParseHeader(b); err != nil {
		t.Fatalf("ParseHeader after PutHeader over garbage: %v", err)
	}
}

func TestPutHeaderShortBufferPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("PutHeader into a 15-byte buffer did not panic")
		}
	}()
	wire.PutHeader(make([]byte, wire.HeaderSize-1), wire.Header{})
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, h := range []wire.Header{
		{Length: wire.HeaderSize, Op: wire.OpStat},
		{Length: wire.HeaderSize + 8, Op: wire.OpHello, ID: 0},
		{Length: wire.MaxFrameSize, Op: wire.OpStore, Flags: wire.FlagInline, ID: ^uint64(0)},
		{Length: 100, Op: wire.OpMessage, NFDs: wire.MaxFDsPerFrame, ID: 1 << 40},
		{Length: 20, Op: wire.Op(0x42), Flags: 0xfe, ID: 12345}, // unknown ops and flags are not the header's business
	} {
		b := make([]byte, wire.HeaderSize)
		wire.PutHeader(b, h)
		got, err := wire.ParseHeader(b)
		if err != nil {
			t.Fatalf("ParseHeader(PutHeader(%+v)): %v", h, err)
		}
		if got != h {
			t.Fatalf("round trip: got %+v, want %+v", got, h)
		}
	}
}

func TestParseHeaderIgnoresBytesPastHeader(t *testing.T) {
	b := append(rawHeader(40, uint8(wire.OpStats), 0, 0, 0, 9), "trailing body bytes"...)
	h, err := wire.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := (wire.Header{Length: 40, Op: wire.OpStats, ID: 9}); h != want {
		t.Fatalf("got %+v, want %+v", h, want)
	}
}

func TestParseHeaderErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"one byte", []byte{16}},
		{"15 bytes", rawHeader(16, 1, 0, 0, 0, 1)[:15]},
		{"length 0", rawHeader(0, 1, 0, 0, 0, 1)},
		{"length 1", rawHeader(1, 1, 0, 0, 0, 1)},
		{"length 15", rawHeader(15, 1, 0, 0, 0, 1)},
		{"length MaxFrameSize+1", rawHeader(wire.MaxFrameSize+1, 2, 1, 0, 0, 1)},
		{"length 2^32-1", rawHeader(^uint32(0), 2, 1, 0, 0, 1)},
		{"reserved 1", rawHeader(16, 5, 0, 0, 1, 1)},
		{"reserved 0x80", rawHeader(16, 5, 0, 0, 0x80, 1)},
		{"reserved 0xff", rawHeader(16, 5, 0, 0, 0xff, 1)},
		{"2 fds", rawHeader(28, 2, 0, 2, 0, 1)},
		{"255 fds", rawHeader(28, 2, 0, 255, 0, 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := wire.ParseHeader(tc.in)
			if err == nil {
				t.Fatalf("ParseHeader(% x) succeeded, want an error", tc.in)
			}
			if !errors.Is(err, wire.ErrMalformed) {
				t.Fatalf("ParseHeader(% x) = %v, want an error wrapping ErrMalformed", tc.in, err)
			}
		})
	}
}

func TestParseHeaderBounds(t *testing.T) {
	for _, tc := range []struct {
		length uint32
		ok     bool
	}{
		{wire.HeaderSize - 1, false},
		{wire.HeaderSize, true},
		{wire.MaxFrameSize, true},
		{wire.MaxFrameSize + 1, false},
	} {
		_, err := wire.ParseHeader(rawHeader(tc.length, uint8(wire.OpStats), 0, 0, 0, 1))
		if (err == nil) != tc.ok {
			t.Errorf("length %d: err = %v, want ok=%v", tc.length, err, tc.ok)
		}
	}
	for nfds := range uint8(4) {
		_, err := wire.ParseHeader(rawHeader(40, uint8(wire.OpMessage), 0, nfds, 0, 1))
		if ok := nfds <= wire.MaxFDsPerFrame; (err == nil) != ok {
			t.Errorf("%d fds: err = %v, want ok=%v", nfds, err, ok)
		}
	}
}

func TestOpString(t *testing.T) {
	for op, want := range map[wire.Op]string{
		wire.OpHello:      "HELLO",
		wire.OpStore:      "STORE",
		wire.OpRetrieve:   "RETRIEVE",
		wire.OpCancel:     "CANCEL",
		wire.OpStat:       "STAT",
		wire.OpWelcome:    "WELCOME",
		wire.OpStored:     "STORED",
		wire.OpMessage:    "MESSAGE",
		wire.OpStats:      "STATS",
		wire.OpError:      "ERROR",
		0x00:              "Op(0x00)",
		wire.OpDisown:     "DISOWN",
		wire.OpDisowned:   "DISOWNED",
		wire.OpAck:        "ACK",
		wire.OpNak:        "NAK",
		wire.OpTouch:      "TOUCH",
		wire.OpTerm:       "TERM",
		wire.OpKick:       "KICK",
		wire.OpSettled:    "SETTLED",
		wire.OpKicked:     "KICKED",
		wire.OpPeek:       "PEEK",
		wire.OpPurge:      "PURGE",
		wire.OpDelete:     "DELETE",
		wire.OpPurged:     "PURGED",
		wire.OpDeleted:    "DELETED",
		wire.OpGroup:      "GROUP",
		wire.OpGrouped:    "GROUPED",
		wire.OpConfig:     "CONFIG",
		wire.OpConfigured: "CONFIGURED",
		0x11:              "Op(0x11)",
		0x80:              "Op(0x80)",
		0x84:              "Op(0x84)",
		0xfe:              "Op(0xfe)",
	} {
		if got := op.String(); got != want {
			t.Errorf("Op(%#x).String() = %q, want %q", uint8(op), got, want)
		}
	}
}

func TestOpValues(t *testing.T) {
	// The numbers are the protocol; a renumbering breaks every peer.
	for op, want := range map[wire.Op]uint8{
		wire.OpHello: 0x01, wire.OpStore: 0x02, wire.OpRetrieve: 0x03, wire.OpCancel: 0x04, wire.OpStat: 0x05,
		wire.OpWelcome: 0x81, wire.OpStored: 0x82, wire.OpMessage: 0x83, wire.OpStats: 0x85, wire.OpError: 0xff,
		wire.OpDisown: 0x06, wire.OpDisowned: 0x86, wire.OpAck: 0x07, wire.OpNak: 0x08, wire.OpTouch: 0x09,
		wire.OpTerm: 0x0a, wire.OpKick: 0x0b, wire.OpSettled: 0x87, wire.OpKicked: 0x8b,
		wire.OpPeek: 0x0c, wire.OpPurge: 0x0d, wire.OpDelete: 0x0e, wire.OpPurged: 0x8d, wire.OpDeleted: 0x8e,
		wire.OpGroup: 0x0f, wire.OpGrouped: 0x8f, wire.OpConfig: 0x10, wire.OpConfigured: 0x90,
	} {
		if uint8(op) != want {
			t.Errorf("%s = %#x, want %#x", op, uint8(op), want)
		}
	}
}
