package wire_test

import (
	"testing"

	"github.com/machq/machq/internal/wire"
)

// allocRuns is how many calls testing.AllocsPerRun averages over.
const allocRuns = 200

// checkAllocs fails if f allocates other than want times per call.
func checkAllocs(t *testing.T, what string, want float64, f func()) {
	t.Helper()
	if got := testing.AllocsPerRun(allocRuns, f); got != want {
		t.Errorf("%s: %v allocations per call, want %v", what, got, want)
	}
}

// TestSteadyStateAllocs checks that encoding into a buffer with room,
// decoding any body, and reading inline frames with a warmed-up Reader
// allocate nothing.
func TestSteadyStateAllocs(t *testing.T) {
	t.Run("append", func(t *testing.T) {
		buf := make([]byte, 0, 64<<10)
		hello := wire.Hello{MinVersion: 1, MaxVersion: 1}
		welcome := wire.Welcome{Version: 1, MaxInline: 1 << 16, MaxFrame: wire.MaxFrameSize, MaxMessage: 1 << 30, ServerPID: 1}
		retrieve := wire.Retrieve{WaitMillis: 100, Queue: benchQueue}
		doc := []byte(`{"messages":0}`)
		for _, tc := range []struct {
			name string
			f    func()
		}{
			{"PutHeader", func() { wire.PutHeader(buf[:wire.HeaderSize], wire.Header{Length: 16, Op: wire.OpStat, ID: 1}) }},
			{"AppendHello", func() { buf = wire.AppendHello(buf[:0], 1, hello) }},
			{"AppendWelcome", func() { buf = wire.AppendWelcome(buf[:0], 1, welcome) }},
			{"AppendStore/inline", func() { buf = wire.AppendStore(buf[:0], 1, benchStore, benchPayload, false) }},
			{"AppendStore/outOfLine", func() { buf = wire.AppendStore(buf[:0], 1, benchStoreOOL, nil, true) }},
			{"AppendStored", func() { buf = wire.AppendStored(buf[:0], 1, 2) }},
			{"AppendRetrieve", func() { buf = wire.AppendRetrieve(buf[:0], 1, retrieve) }},
			{"AppendMessage/inline", func() { buf = wire.AppendMessage(buf[:0], 1, benchMessage, benchPayload, false) }},
			{"AppendMessage/outOfLine", func() { buf = wire.AppendMessage(buf[:0], 1, benchMessageOOL, nil, true) }},
			{"AppendCancel", func() { buf = wire.AppendCancel(buf[:0], 1, 2) }},
			{"AppendStat", func() { buf = wire.AppendStat(buf[:0], 1) }},
			{"AppendStats", func() { buf = wire.AppendStats(buf[:0], 1, doc) }},
			{"AppendError", func() { buf = wire.AppendError(buf[:0], 1, wire.CodeEmpty, "queue is empty") }},
			// Appending to what is already there must not copy it elsewhere.
			{"AppendStore/extend", func() {
				buf = wire.AppendStore(buf[:0], 1, benchStore, benchPayload, false)
				buf = wire.AppendStore(buf, 2, benchStore, benchPayload, false)
			}},
		} {
			checkAllocs(t, tc.name, 0, tc.f)
		}
	})

	t.Run("parse", func(t *testing.T) {
		frames := map[string][]byte{
			"Hello":             wire.AppendHello(nil, 1, wire.Hello{MinVersion: 1, MaxVersion: 1}),
			"Welcome":           wire.AppendWelcome(nil, 1, wire.Welcome{Version: 1, MaxInline: 1 << 16}),
			"Store/inline":      wire.AppendStore(nil, 1, benchStore, benchPayload, false),
			"Store/outOfLine":   wire.AppendStore(nil, 1, benchStoreOOL, nil, true),
			"Stored":            wire.AppendStored(nil, 1, 2),
			"Retrieve":          wire.AppendRetrieve(nil, 1, wire.Retrieve{WaitMillis: 5, Queue: benchQueue}),
			"Message/inline":    wire.AppendMessage(nil, 1, benchMessage, benchPayload, false),
			"Message/outOfLine": wire.AppendMessage(nil, 1, benchMessageOOL, nil, true),
			"Cancel":            wire.AppendCancel(nil, 1, 2),
			"Error/empty":       wire.AppendError(nil, 1, wire.CodeEmpty, ""),
			"Error":             wire.AppendError(nil, 1, wire.CodeEmpty, "queue is empty"),
		}
		split := func(name string) (wire.Header, []byte) { return splitHeader(t, frames[name]) }
		var err error
		mustParse := func(name string) {
			t.Helper()
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}

		h, body := split("Hello")
		checkAllocs(t, "ParseHeader", 0, func() { sinkHeader, err = wire.ParseHeader(frames["Hello"]) })
		mustParse("ParseHeader")
		checkAllocs(t, "ParseHello", 0, func() { _, err = wire.ParseHello(body) })
		mustParse("ParseHello")
		_, body = split("Welcome")
		checkAllocs(t, "ParseWelcome", 0, func() { _, err = wire.ParseWelcome(body) })
		mustParse("ParseWelcome")
		for _, name := range []string{"Store/inline", "Store/outOfLine"} {
			h, body = split(name)
			checkAllocs(t, "Parse"+name, 0, func() { sinkStore, sinkBytes, err = wire.ParseStore(h, body) })
			mustParse(name)
		}
		_, body = split("Stored")
		checkAllocs(t, "ParseStored", 0, func() { sinkU64, err = wire.ParseStored(body) })
		mustParse("ParseStored")
		_, body = split("Retrieve")
		checkAllocs(t, "ParseRetrieve", 0, func() { _, err = wire.ParseRetrieve(body) })
		mustParse("ParseRetrieve")
		for _, name := range []string{"Message/inline", "Message/outOfLine"} {
			h, body = split(name)
			checkAllocs(t, "Parse"+name, 0, func() { sinkMsg, sinkBytes, err = wire.ParseMessage(h, body) })
			mustParse(name)
		}
		_, body = split("Cancel")
		checkAllocs(t, "ParseCancel", 0, func() { sinkU64, err = wire.ParseCancel(body) })
		mustParse("ParseCancel")

		// ParseError returns the message as a string, which must not alias
		// the body (that is the Reader's buffer, reused by the next frame),
		// so a non-empty message costs exactly one allocation: the copy.
		var msg string
		_, body = split("Error/empty")
		checkAllocs(t, "ParseError/empty", 0, func() { _, msg, err = wire.ParseError(body) })
		mustParse("ParseError/empty")
		_, body = split("Error")
		checkAllocs(t, "ParseError", 1, func() { _, msg, err = wire.ParseError(body) })
		mustParse("ParseError")
		if msg != "queue is empty" {
			t.Errorf("ParseError message %q", msg)
		}
	})

	t.Run("ReadFrame", func(t *testing.T) {
		stream, frameLen := inlineStores(64)
		for _, tc := range []struct {
			name string
			max  int
		}{
			{"oneFramePerRead", frameLen},
			{"burst", len(stream)},
			{"partialFrames", 1000}, // reads end mid-frame
			{"fullBuffer", 0},
		} {
			rd := wire.NewReader(&loopSource{stream: stream, max: tc.max})
			read := func() {
				f, err := rd.ReadFrame()
				if err != nil {
					t.Fatalf("%s: ReadFrame: %v", tc.name, err)
				}
				if len(f.Body) != frameLen-wire.HeaderSize || f.FDs != nil {
					t.Fatalf("%s: frame with %d body bytes and descriptors %v", tc.name, len(f.Body), f.FDs)
				}
			}
			// Warm up: wrap around the Reader's buffer a few times.
			for range 3 * (64 << 10) / frameLen {
				read()
			}
			checkAllocs(t, "ReadFrame/"+tc.name, 0, read)
		}
	})

	// A frame larger than the Reader's buffer is read into memory of
	// its own, which the frame keeps (Owned): that is its one
	// allocation; the reader goes back to the buffer it had.
	t.Run("ReadFrame/large", func(t *testing.T) {
		big := wire.AppendStore(nil, 1, benchStore, make([]byte, 64<<10), false)
		small := wire.AppendStore(nil, 2, benchStore, benchPayload, false)
		rd := wire.NewReader(&loopSource{stream: append(big, small...), max: 16 << 10})
		read := func() {
			for _, want := range []int{len(big), len(small)} {
				f, err := rd.ReadFrame()
				if err != nil || len(f.Body) != want-wire.HeaderSize {
					t.Fatalf("ReadFrame: %d body bytes, %v; want %d", len(f.Body), err, want-wire.HeaderSize)
				}
				if f.Owned != (want == len(big)) {
					t.Fatalf("frame of %d bytes: Owned %v", want, f.Owned)
				}
			}
		}
		read()
		checkAllocs(t, "ReadFrame/large", 1, read)
	})
}
