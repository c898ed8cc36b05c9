package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"unicode/utf8"

	"github.com/machq/machq/internal/wire"
	"golang.org/x/sys/unix"
)

// fuzzSplits turns fuzz bytes into chunk sizes: a byte below 0xf0 is a size
// of 1 to 240 bytes, a byte from 0xf0 up a size of 256 bytes to 8 MiB, so
// that both byte-at-a-time reads and reads larger than the Reader's buffer
// occur.
func fuzzSplits(splits []byte) []int {
	sizes := make([]int, len(splits))
	for i, s := range splits {
		if s < 0xf0 {
			sizes[i] = int(s) + 1
		} else {
			sizes[i] = 1 << (8 + int(s-0xf0))
		}
	}
	return sizes
}

// referenceDecode decodes stream the simple way, written from the frame
// format rather than from the Reader: frame after frame, all bytes at hand.
// It returns the frames and the sentinel error the Reader must end with.
func referenceDecode(stream []byte) ([]wire.Frame, error) {
	var frames []wire.Frame
	for {
		switch {
		case len(stream) == 0:
			return frames, io.EOF
		case len(stream) < wire.HeaderSize:
			return frames, io.ErrUnexpectedEOF
		}
		length := binary.LittleEndian.Uint32(stream)
		nfds, reserved := stream[6], stream[7]
		if length < wire.HeaderSize || length > wire.MaxFrameSize || reserved != 0 || nfds > wire.MaxFDsPerFrame {
			return frames, wire.ErrMalformed
		}
		if uint32(len(stream)) < length {
			return frames, io.ErrUnexpectedEOF
		}
		if nfds > 0 {
			// No descriptor ever arrives in this model.
			return frames, wire.ErrMissingFDs
		}
		frames = append(frames, wire.Frame{
			Header: wire.Header{
				Length: length,
				Op:     wire.Op(stream[4]),
				Flags:  stream[5],
				ID:     binary.LittleEndian.Uint64(stream[8:]),
			},
			Body: stream[wire.HeaderSize:length],
		})
		stream = stream[length:]
	}
}

// sameErrorClass reports whether got is the kind of error want stands for.
func sameErrorClass(got, want error) bool {
	if want == io.ErrUnexpectedEOF {
		// A cut inside a frame must not look like a clean end.
		return errors.Is(got, io.ErrUnexpectedEOF) && !errors.Is(got, io.EOF)
	}
	return errors.Is(got, want)
}

// FuzzReader feeds the Reader arbitrary bytes in reads of sizes the fuzzer
// chooses, and checks it returns exactly the frames, and ends with exactly
// the error, that referenceDecode finds with the whole stream at hand; that
// every frame's body agrees with its header; that it terminates; and that
// its error is sticky.
func FuzzReader(f *testing.F) {
	stream := sampleStream()
	big := wire.AppendStats(nil, 1, bytes.Repeat([]byte("0123456789"), 7000)) // 70 KiB, more than the default buffer
	f.Add(stream, []byte(nil))
	f.Add(stream, []byte{0})
	f.Add(stream, []byte{14, 15, 16})
	f.Add(stream, []byte{3, 200, 0, 0xf0, 7})
	f.Add(stream[:len(stream)-3], []byte{5})
	f.Add(cat(wire.AppendStat(nil, 1), rawHeader(wire.MaxFrameSize+1, 2, 1, 0, 0, 2)), []byte{1})
	f.Add(cat(wire.AppendStat(nil, 1), rawHeader(16, 5, 0, 0, 1, 2)), []byte{})
	f.Add(cat(wire.AppendStat(nil, 1), fdFrame(2)), []byte{9})
	f.Add(cat(wire.AppendStat(nil, 1), big, wire.AppendStat(nil, 2)), []byte{0xff})
	f.Add(cat(wire.AppendStat(nil, 1), big, wire.AppendStat(nil, 2)), []byte{0xf7, 0xf0, 100})
	f.Add(big[:40000], []byte{0xf8})

	f.Fuzz(func(t *testing.T, stream, splits []byte) {
		want, wantErr := referenceDecode(stream)

		src := &fakeConn{t: t, chunks: splitSizes(stream, fuzzSplits(splits))}
		// Every read but the last returns at least one byte, so a Reader
		// that terminates never needs more reads than this.
		src.maxCalls = len(stream) + 2
		rd := wire.NewReader(src)

		got, err := readAll(t, rd, len(stream)/wire.HeaderSize)
		if err == nil {
			t.Fatalf("readAll returned no error")
		}
		sameFrames(t, got, want)
		if !sameErrorClass(err, wantErr) {
			t.Fatalf("after %d frames: %v, want %v", len(got), err, wantErr)
		}
		if f, again := rd.ReadFrame(); again != err {
			t.Fatalf("after failing with %v, ReadFrame returned %+v, %v", err, f.Header, again)
		}
	})
}

// checkReencode fails the test unless encoded, a frame an Append function
// built, carries canonical as its body.
func checkReencode(t *testing.T, what string, encoded, canonical []byte) {
	t.Helper()
	h, err := wire.ParseHeader(encoded)
	if err != nil {
		t.Fatalf("%s: re-encoded frame has a bad header: %v", what, err)
	}
	if int(h.Length) != len(encoded) {
		t.Fatalf("%s: re-encoded frame is %d bytes, header says %d", what, len(encoded), h.Length)
	}
	if body := encoded[wire.HeaderSize:]; !bytes.Equal(body, canonical) {
		t.Fatalf("%s: parsed and re-encoded\n% x\nwant\n% x", what, body, canonical)
	}
}

// checkParseErr fails the test if a parser reported an error that does not
// wrap ErrMalformed.
func checkParseErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("%s: error %v does not wrap ErrMalformed", what, err)
	}
}

// zeroed returns a copy of b with b[from:to] set to zero.
func zeroed(b []byte, from, to int) []byte {
	c := bytes.Clone(b)
	clear(c[from:to])
	return c
}

// FuzzParseBodies runs every Parse function over arbitrary bytes. None may
// panic or modify its input; every error wraps ErrMalformed; and whatever
// parses re-encodes, with the matching Append function, to the same bytes
// (apart from reserved bytes the parser does not check, and the cut of long
// ERROR texts).
func FuzzParseBodies(f *testing.F) {
	for _, frame := range sampleFrames() {
		f.Add(frame[5], frame[wire.HeaderSize:])
		f.Add(frame[5], frame) // whole frames exercise ParseHeader
	}
	for _, frame := range [][]byte{
		wire.AppendStore(nil, 1, wire.Store{Size: 1 << 30, DigestAlg: wire.DigestSHA256, Digest: bytes.Repeat([]byte{1}, 32), Queue: []byte("q")}, nil, true),
		wire.AppendMessage(nil, 2, wire.Message{Seq: 1, Size: 1 << 30, DigestAlg: wire.DigestSHA256, Digest: bytes.Repeat([]byte{2}, 64)}, nil, true),
		wire.AppendError(nil, 3, wire.CodeInternal, string(bytes.Repeat([]byte("e"), 5000))),
		wire.AppendRetrieve(nil, 4, wire.Retrieve{WaitMillis: 100, Queue: []byte("jobs"), Ack: true, LeaseMillis: 30000, Credit: 8}),
		wire.AppendMessage(nil, 5, wire.Message{Seq: 9, Size: 3, DigestAlg: wire.DigestSHA256, Digest: bytes.Repeat([]byte{3}, 32), Ack: true, Token: 77, Deliveries: 2, Dead: wire.DeadTerm, Note: []byte("bad input"), DiedAfter: 20}, []byte("abc"), false),
		wire.AppendMessage(nil, 6, wire.Message{Seq: 9, Size: 1 << 20, Ack: true, Token: 78, Deliveries: 1}, nil, true),
		wire.AppendSettle(nil, wire.OpAck, 7, wire.Settle{Token: 77}),
		wire.AppendSettle(nil, wire.OpNak, 8, wire.Settle{Token: 77, DelayMillis: 500, Text: []byte("retry later")}),
		wire.AppendSettle(nil, wire.OpTerm, 9, wire.Settle{Token: 77, Text: []byte("poison")}),
		wire.AppendSettle(nil, wire.OpTouch, 10, wire.Settle{Token: 77}),
		wire.AppendSettled(nil, 10, wire.Settled{Outcome: wire.OutcomeTouched, LeaseMillis: 30000}),
		wire.AppendKick(nil, 11, wire.Kick{Count: 5, Queue: []byte("jobs")}),
		wire.AppendKicked(nil, 11, 5),
		wire.AppendQueueOp(nil, wire.OpPeek, 12, wire.QueueOp{Index: 3, Queue: []byte("jobs")}),
		wire.AppendQueueOp(nil, wire.OpPurge, 13, wire.QueueOp{}),
		wire.AppendQueueOp(nil, wire.OpDelete, 14, wire.QueueOp{Queue: []byte("jobs")}),
		wire.AppendDropped(nil, wire.OpPurged, 13, wire.Dropped{Freed: 7, Pending: 2}),
		wire.AppendRetrieve(nil, 15, wire.Retrieve{WaitMillis: 1, Queue: []byte("jobs"), Group: []byte("billing"), Ack: true}),
		wire.AppendGroup(nil, 16, wire.Group{Action: wire.GroupCreateFromOldest, Queue: []byte("jobs"), Group: []byte("billing")}),
		wire.AppendGrouped(nil, 16, wire.Grouped{Changed: true, Count: 3}),
		wire.AppendConfig(nil, 17, wire.Config{MaxDeliveries: 5, LeaseMillis: wire.NoLease, Queue: []byte("jobs")}),
	} {
		f.Add(frame[5], frame[wire.HeaderSize:])
	}
	f.Add(wire.FlagInline, []byte("MCHQ\x01\x00\xff\xff"))

	f.Fuzz(func(t *testing.T, flags byte, body []byte) {
		orig := bytes.Clone(body)

		if h, err := wire.ParseHeader(body); err == nil {
			b := make([]byte, wire.HeaderSize)
			wire.PutHeader(b, h)
			if !bytes.Equal(b, body[:wire.HeaderSize]) {
				t.Fatalf("header re-encoded as\n% x\nwant\n% x", b, body[:wire.HeaderSize])
			}
		} else {
			checkParseErr(t, "ParseHeader", err)
		}

		if hello, err := wire.ParseHello(body); err == nil {
			checkReencode(t, "HELLO", wire.AppendHello(nil, 0, hello), body)
		} else {
			checkParseErr(t, "ParseHello", err)
		}

		if w, err := wire.ParseWelcome(body); err == nil {
			// The two bytes after the version are not checked; a
			// software name, when one was taken, is its length byte
			// and its bytes; whatever else follows is an extension.
			want := zeroed(body[:28], 6, 8)
			if w.Software != "" {
				want = append(want, body[28:29+len(w.Software)]...)
			}
			checkReencode(t, "WELCOME", wire.AppendWelcome(nil, 0, w), want)
		} else {
			checkParseErr(t, "ParseWelcome", err)
		}

		h := wire.Header{Op: wire.OpStore, Flags: flags}
		inline := flags&wire.FlagInline != 0
		if s, payload, err := wire.ParseStore(h, body); err == nil {
			if len(s.Digest) > wire.MaxDigestSize || cap(s.Digest) != len(s.Digest) || cap(s.Queue) != len(s.Queue) {
				t.Fatalf("STORE digest len %d cap %d, queue len %d cap %d", len(s.Digest), cap(s.Digest), len(s.Queue), cap(s.Queue))
			}
			if inline && uint64(len(payload)) != s.Size || !inline && payload != nil {
				t.Fatalf("STORE (inline %v) of size %d returned a %d-byte payload", inline, s.Size, len(payload))
			}
			checkReencode(t, "STORE", wire.AppendStore(nil, 0, s, payload, !inline), body)
		} else {
			checkParseErr(t, "ParseStore", err)
		}

		if seq, err := wire.ParseStored(body); err == nil {
			checkReencode(t, "STORED", wire.AppendStored(nil, 0, seq), body)
		} else {
			checkParseErr(t, "ParseStored", err)
		}

		if r, err := wire.ParseRetrieve(body); err == nil {
			checkReencode(t, "RETRIEVE", wire.AppendRetrieve(nil, 0, r), body)
		} else {
			checkParseErr(t, "ParseRetrieve", err)
		}

		if r, err := wire.ParseAckRetrieve(body); err == nil {
			if !r.Ack {
				t.Fatalf("ParseAckRetrieve returned a plain retrieve")
			}
			checkReencode(t, "ack RETRIEVE", wire.AppendRetrieve(nil, 0, r), body)
		} else {
			checkParseErr(t, "ParseAckRetrieve", err)
		}

		for _, op := range []wire.Op{wire.OpAck, wire.OpNak, wire.OpTouch, wire.OpTerm} {
			if st, err := wire.ParseSettle(op, body); err == nil {
				if len(st.Text) > wire.MaxNote || st.DelayMillis != 0 && op != wire.OpNak || len(st.Text) != 0 && op != wire.OpNak && op != wire.OpTerm {
					t.Fatalf("%s parsed as %+v", op, st)
				}
				checkReencode(t, op.String(), wire.AppendSettle(nil, op, 0, st), body)
			} else {
				checkParseErr(t, "ParseSettle("+op.String()+")", err)
			}
		}

		if st, err := wire.ParseSettled(body); err == nil {
			checkReencode(t, "SETTLED", wire.AppendSettled(nil, 0, st), zeroed(body, 1, 4))
		} else {
			checkParseErr(t, "ParseSettled", err)
		}

		if k, err := wire.ParseKick(body); err == nil {
			checkReencode(t, "KICK", wire.AppendKick(nil, 0, k), body)
		} else {
			checkParseErr(t, "ParseKick", err)
		}

		for _, op := range []wire.Op{wire.OpPeek, wire.OpPurge, wire.OpDelete} {
			if q, err := wire.ParseQueueOp(op, body); err == nil {
				if q.Index != 0 && op != wire.OpPeek {
					t.Fatalf("%s parsed with index %d", op, q.Index)
				}
				checkReencode(t, op.String(), wire.AppendQueueOp(nil, op, 0, q), body)
			} else {
				checkParseErr(t, "ParseQueueOp("+op.String()+")", err)
			}
		}

		if c, err := wire.ParseConfig(body); err == nil {
			checkReencode(t, "CONFIG", wire.AppendConfig(nil, 0, c), body)
		} else {
			checkParseErr(t, "ParseConfig", err)
		}

		if g, err := wire.ParseGroup(body); err == nil {
			checkReencode(t, "GROUP", wire.AppendGroup(nil, 0, g), body)
		} else {
			checkParseErr(t, "ParseGroup", err)
		}

		if g, err := wire.ParseGrouped(body); err == nil {
			b := zeroed(body, 1, 8)
			if b[0] != 0 {
				b[0] = 1
			}
			checkReencode(t, "GROUPED", wire.AppendGrouped(nil, 0, g), b)
		} else {
			checkParseErr(t, "ParseGrouped", err)
		}

		if d, err := wire.ParseDropped(body); err == nil {
			checkReencode(t, "PURGED", wire.AppendDropped(nil, wire.OpPurged, 0, d), body)
		} else {
			checkParseErr(t, "ParseDropped", err)
		}

		if n, err := wire.ParseKicked(body); err == nil {
			checkReencode(t, "KICKED", wire.AppendKicked(nil, 0, n), zeroed(body, 4, 8))
		} else {
			checkParseErr(t, "ParseKicked", err)
		}

		h.Op = wire.OpMessage
		if m, payload, err := wire.ParseMessage(h, body); err == nil {
			if len(m.Digest) > wire.MaxDigestSize || cap(m.Digest) != len(m.Digest) {
				t.Fatalf("MESSAGE digest len %d cap %d", len(m.Digest), cap(m.Digest))
			}
			if inline && uint64(len(payload)) != m.Size || !inline && payload != nil {
				t.Fatalf("MESSAGE (inline %v) of size %d returned a %d-byte payload", inline, m.Size, len(payload))
			}
			// ParseMessage does not check the reserved bytes (the six
			// after the digest length; in ack mode the one after the dead
			// reason and the two after the note length); everything else
			// must survive.
			if flags&wire.FlagAck != 0 {
				if !m.Ack || len(m.Note) > wire.MaxNote || cap(m.Note) != len(m.Note) {
					t.Fatalf("ack MESSAGE parsed as %+v", m)
				}
				checkReencode(t, "ack MESSAGE", wire.AppendMessage(nil, 0, m, payload, !inline), zeroed(zeroed(body, 19, 20), 34, 36))
			} else {
				checkReencode(t, "MESSAGE", wire.AppendMessage(nil, 0, m, payload, !inline), zeroed(body, 18, 24))
			}
		} else {
			checkParseErr(t, "ParseMessage", err)
		}

		if target, err := wire.ParseCancel(body); err == nil {
			checkReencode(t, "CANCEL", wire.AppendCancel(nil, 0, target), body)
		} else {
			checkParseErr(t, "ParseCancel", err)
		}

		if name, err := wire.ParseDisown(body); err == nil {
			checkReencode(t, "DISOWN", wire.AppendDisown(nil, 0, name), body)
		} else {
			checkParseErr(t, "ParseDisown", err)
		}

		if code, msg, err := wire.ParseError(body); err == nil {
			if msg != string(body[4:]) {
				t.Fatalf("ERROR message %q, body carries %q", msg, body[4:])
			}
			// The reserved bytes are not checked, and AppendError cuts
			// messages longer than 4096 bytes, not inside a character.
			re := wire.AppendError(nil, 0, code, msg)
			if len(msg) <= 4096 {
				checkReencode(t, "ERROR", re, zeroed(body, 2, 4))
			} else {
				cut := len(re) - wire.HeaderSize - 4
				checkReencode(t, "ERROR", re, zeroed(body[:4+cut], 2, 4))
				if cut > 4096 || utf8.ValidString(msg) && (cut < 4096-(utf8.UTFMax-1) || !utf8.ValidString(msg[:cut])) {
					t.Fatalf("a %d-byte ERROR text was cut to %d bytes", len(msg), cut)
				}
			}
		} else {
			checkParseErr(t, "ParseError", err)
		}

		if !bytes.Equal(body, orig) {
			t.Fatalf("parsing modified its input")
		}
	})
}

// fdChunk is a chunk of FuzzReaderDescriptors's stream with the descriptors
// that arrive with it.
type fdChunk struct {
	start, end int
	fds        []int
}

// FuzzReaderDescriptors feeds the Reader arbitrary bytes in arbitrary reads,
// some of which bring descriptors (real ones, duplicates of a memfd). It
// checks that the Reader returns the frames the bytes hold, never hands a
// frame descriptors that arrived with a read not holding the frame's first
// byte, never hands one out twice, closes every received descriptor it does
// not hand out, and, when the descriptors arrive as the sending rules of
// docs/PROTOCOL.md section 4 produce them, fails only as the bytes dictate.
func FuzzReaderDescriptors(f *testing.F) {
	memfd := memfdWith(f, []byte("page"))
	stat := wire.AppendStat(nil, 9)
	// Conforming: every descriptor-carrying frame starts the read that
	// brings its descriptor. splits are chunk sizes minus one; the top two
	// bits of marks[i] are how many descriptors chunk i carries.
	f.Add(cat(fdFrame(1), stat, fdFrame(2), stat), []byte{39, 15, 55}, []byte{0x40, 0, 0x40})
	f.Add(cat(stat, fdFrame(1), fdFrame(2)), []byte{15, 39, 39}, []byte{0, 0x40, 0x40})
	// The descriptor's read also returns the frames in front of its frame.
	f.Add(cat(stat, fdFrame(1), stat), []byte{71}, []byte{0x40})
	// Reads split the descriptor frames.
	f.Add(cat(fdFrame(1), fdFrame(2)), []byte{9, 29, 4, 34}, []byte{0x40, 0, 0x40, 0})
	// A stray, a count mismatch, a late descriptor.
	f.Add(cat(stat, stat), []byte{15, 15}, []byte{0x40})
	f.Add(cat(fdFrame(1), stat), []byte{55}, []byte{0x80})
	f.Add(fdFrame(1), []byte{9, 29}, []byte{0, 0x40})
	f.Add(sampleStream(), []byte{0, 1, 2}, []byte{0x40, 0, 0, 0xc0})

	f.Fuzz(func(t *testing.T, stream, splits, marks []byte) {
		want, wantErr := referenceDecodeBytes(stream)
		chunks := splitSizes(stream, fuzzSplits(splits))

		// Attach descriptors, at most 64, to the first len(marks) chunks.
		var layout []fdChunk
		owner := map[int]int{} // descriptor -> index in layout
		pos, total := 0, 0
		for i := range chunks {
			c := fdChunk{start: pos, end: pos + len(chunks[i].data)}
			pos = c.end
			if i < len(marks) {
				for range int(marks[i] >> 6) {
					if total == 64 {
						break
					}
					fd := dupFD(t, memfd)
					owner[fd] = len(layout)
					c.fds = append(c.fds, fd)
					total++
				}
			}
			if len(c.fds) > 0 {
				chunks[i].oob = unix.UnixRights(c.fds...)
			}
			layout = append(layout, c)
		}

		src := &fakeConn{t: t, chunks: chunks, maxCalls: len(stream) + 2}
		rd := wire.NewReader(src)
		var got []wire.Frame
		var handed []int
		framePos := 0
		var err error
		for {
			var fr wire.Frame
			fr, err = rd.ReadFrame()
			if err != nil {
				break
			}
			checkFrameShape(t, fr)
			if len(got) == len(want) {
				t.Fatalf("more frames than the stream holds")
			}
			if len(fr.FDs) > 0 {
				// Every descriptor a frame gets came with a read that
				// returned the frame's first byte, and it gets all of them.
				c := owner[fr.FDs[0]]
				if lc := layout[c]; framePos < lc.start || framePos >= lc.end || !equalInts(fr.FDs, lc.fds) {
					t.Fatalf("frame at %d got descriptors %v; read %d brought %v with bytes [%d, %d)", framePos, fr.FDs, c, lc.fds, lc.start, lc.end)
				}
				for _, fd := range fr.FDs {
					if !isOpen(fd) {
						t.Fatalf("frame got closed descriptor %d", fd)
					}
				}
				handed = append(handed, fr.FDs...)
			}
			fr.Body = bytes.Clone(fr.Body)
			got = append(got, fr)
			framePos += int(fr.Length)
		}
		// The frames are what the bytes say, up to wherever the Reader
		// stopped. (Descriptors were checked above.)
		for i := range got {
			want[i].FDs = got[i].FDs
		}
		sameFrames(t, got, want[:len(got)])

		// No descriptor is lost: those not handed out are closed now.
		isHanded := map[int]bool{}
		for _, fd := range handed {
			if isHanded[fd] {
				t.Fatalf("descriptor %d handed out twice", fd)
			}
			isHanded[fd] = true
		}
		received := map[int]bool{}
		for _, oob := range src.delivered {
			for _, fd := range rightsIn(oob) {
				received[fd] = true
			}
		}
		for fd := range owner {
			switch {
			case !received[fd]:
				// Still in the "socket": not the Reader's to close.
				unix.Close(fd)
			case !isHanded[fd] && isOpen(fd):
				t.Fatalf("descriptor %d neither handed out nor closed after %v", fd, err)
			}
		}
		wire.CloseFDs(handed)

		if conformingFDs(stream, want, layout) {
			// A sender that follows the rules never sees a descriptor error.
			if len(got) != len(want) || !sameErrorClass(err, wantErr) {
				t.Fatalf("conforming stream: %d frames and %v, want %d and %v", len(got), err, len(want), wantErr)
			}
		} else if len(got) == len(want) && total == 0 && !sameErrorClass(err, wantErr) {
			t.Fatalf("after all %d frames: %v, want %v", len(got), err, wantErr)
		}
	})
}

// referenceDecodeBytes is referenceDecode with descriptors assumed present:
// frames that declare them decode like any other.
func referenceDecodeBytes(stream []byte) ([]wire.Frame, error) {
	var frames []wire.Frame
	for {
		fs, err := referenceDecode(stream)
		frames = append(frames, fs...)
		if err != wire.ErrMissingFDs {
			return frames, err
		}
		for _, f := range fs {
			stream = stream[f.Length:]
		}
		length := binary.LittleEndian.Uint32(stream)
		frames = append(frames, wire.Frame{
			Header: wire.Header{Length: length, Op: wire.Op(stream[4]), Flags: stream[5], NFDs: stream[6], ID: binary.LittleEndian.Uint64(stream[8:])},
			Body:   stream[wire.HeaderSize:length],
		})
		stream = stream[length:]
	}
}

// conformingFDs reports whether descriptors arrive as the protocol's sending
// rules produce them: each read that brings descriptors starts with a whole
// frame declaring exactly that many, and every frame declaring descriptors
// starts such a read. Reads past where decoding stops do not matter.
func conformingFDs(stream []byte, frames []wire.Frame, layout []fdChunk) bool {
	starts := map[int]int{} // frame start -> declared descriptors
	end := 0
	for _, f := range frames {
		starts[end] = int(f.NFDs)
		end += int(f.Length)
	}
	claimed := map[int]bool{}
	for _, c := range layout {
		if len(c.fds) > wire.MaxFDsPerFrame {
			return false // more than any frame may claim
		}
		if len(c.fds) == 0 {
			continue
		}
		if c.start == end {
			// For a last frame that never ends: conforming if it declares
			// them (or its header never arrived whole).
			if h, err := wire.ParseHeader(stream[end:]); len(stream)-end >= wire.HeaderSize && (err != nil || int(h.NFDs) != len(c.fds)) {
				return false
			}
			continue
		}
		if c.start > end {
			return false // inside the last frame, which cannot claim them
		}
		if n, ok := starts[c.start]; !ok || n != len(c.fds) {
			return false
		}
		claimed[c.start] = true
	}
	for at, n := range starts {
		if n > 0 && !claimed[at] {
			return false
		}
	}
	return true
}
