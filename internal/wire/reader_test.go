package wire_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/machq/machq/internal/wire"
	"golang.org/x/sys/unix"
)

// newFakeReader returns a Reader over chunks and the fake behind it.
func newFakeReader(t testing.TB, chunks []chunk) (*wire.Reader, *fakeConn) {
	t.Helper()
	src := &fakeConn{t: t, chunks: chunks}
	rd := wire.NewReader(src)
	t.Cleanup(rd.Close)
	return rd, src
}

// expectFrames reads the whole stream and checks it holds want and then ends
// cleanly.
func expectFrames(t testing.TB, chunks []chunk, want []wire.Frame) {
	t.Helper()
	rd, _ := newFakeReader(t, chunks)
	got, err := readAll(t, rd, len(want))
	if !errors.Is(err, io.EOF) {
		t.Fatalf("after %d frames: %v, want io.EOF", len(got), err)
	}
	sameFrames(t, got, want)
}

func TestReaderEverySplitSize(t *testing.T) {
	stream := sampleStream()
	want := splitFrames(t, stream)
	for n := 1; n <= len(stream)+1; n++ {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			expectFrames(t, splitEvery(stream, n), want)
		})
	}
}

func TestReaderRandomSplits(t *testing.T) {
	stream := sampleStream()
	// Repeat the sample so the stream is long enough for many cuts.
	stream = bytes.Repeat(stream, 5)
	want := splitFrames(t, stream)
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 0x3c6ef372fe94f82b))
		var sizes []int
		for range 64 {
			switch rng.IntN(4) {
			case 0:
				sizes = append(sizes, 1)
			case 1:
				sizes = append(sizes, 1+rng.IntN(wire.HeaderSize))
			case 2:
				sizes = append(sizes, 1+rng.IntN(100))
			default:
				sizes = append(sizes, 1+rng.IntN(len(stream)))
			}
		}
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			expectFrames(t, splitSizes(stream, sizes), want)
		})
	}
}

// statsFrame returns a STATS frame of exactly n bytes whose document is a
// recognisable pattern.
func statsFrame(t testing.TB, id uint64, n int) []byte {
	t.Helper()
	doc := make([]byte, n-wire.HeaderSize)
	for i := range doc {
		doc[i] = byte(i*7 + int(id))
	}
	b := wire.AppendStats(nil, id, doc)
	if len(b) != n {
		t.Fatalf("statsFrame: built %d bytes, want %d", len(b), n)
	}
	return b
}

func TestReaderLargeFrames(t *testing.T) {
	const buf = 64 << 10 // the Reader's default buffer
	for _, size := range []int{buf - 1, buf, buf + 1, buf + wire.HeaderSize, 3*buf + 5, wire.MaxFrameSize} {
		// A small frame first, so the large one starts part-way into the
		// buffer; a large one twice, so the buffer must grow again after it
		// was given back; small frames between and after.
		stream := cat(
			wire.AppendStat(nil, 1),
			statsFrame(t, 2, size),
			wire.AppendCancel(nil, 3, 1),
			statsFrame(t, 4, size),
			wire.AppendError(nil, 5, wire.CodeEmpty, "after"),
		)
		want := splitFrames(t, stream)
		splits := []int{len(stream), buf, buf - 1, buf + 1, 4096, 1000, 7}
		if size <= buf+wire.HeaderSize {
			splits = append(splits, 1)
		}
		for _, n := range splits {
			t.Run(fmt.Sprintf("size %d split %d", size, n), func(t *testing.T) {
				expectFrames(t, splitEvery(stream, n), want)
			})
		}
	}
}

// TestReaderManyFramesAcrossBuffer sends enough same-sized frames to fill the
// default buffer several times, for every residue of the buffer size modulo
// the frame size, so that the buffer ends in every position of a header and
// of a body.
func TestReaderManyFramesAcrossBuffer(t *testing.T) {
	for size := wire.HeaderSize; size <= 3*wire.HeaderSize; size++ {
		var stream []byte
		for id := uint64(0); len(stream) < 3*(64<<10); id++ {
			stream = append(stream, statsFrame(t, id, size)...)
		}
		want := splitFrames(t, stream)
		for _, n := range []int{len(stream), 64<<10 + 3, 5000} {
			t.Run(fmt.Sprintf("frame %d split %d", size, n), func(t *testing.T) {
				expectFrames(t, splitEvery(stream, n), want)
			})
		}
	}
}

func TestReaderEmptyStream(t *testing.T) {
	rd, _ := newFakeReader(t, nil)
	f, err := rd.ReadFrame()
	if err != io.EOF {
		t.Fatalf("ReadFrame on an empty stream = %+v, %v; want io.EOF", f, err)
	}
}

// TestReaderTruncated cuts the sample stream at every offset: a cut on a
// frame boundary is a clean end (io.EOF), any other an unexpected one.
func TestReaderTruncated(t *testing.T) {
	stream := sampleStream()
	all := splitFrames(t, stream)
	for cut := 0; cut <= len(stream); cut++ {
		// The frames wholly before the cut, and whether it is on a boundary.
		whole, end := 0, 0
		for whole < len(all) && end+int(all[whole].Length) <= cut {
			end += int(all[whole].Length)
			whole++
		}
		onBoundary := end == cut
		for _, n := range []int{1, 5, len(stream)} {
			t.Run(fmt.Sprintf("cut %d split %d", cut, n), func(t *testing.T) {
				rd, _ := newFakeReader(t, splitEvery(stream[:cut], n))
				got, err := readAll(t, rd, len(all))
				switch {
				case onBoundary && err != io.EOF:
					t.Fatalf("stream cut on a frame boundary: %v, want io.EOF", err)
				case !onBoundary && (!errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)):
					t.Fatalf("stream cut %d bytes into a frame: %v, want io.ErrUnexpectedEOF", cut-end, err)
				}
				sameFrames(t, got, all[:whole])
			})
		}
	}
}

func TestReaderMalformedHeader(t *testing.T) {
	good := wire.AppendStat(nil, 1)
	for _, tc := range []struct {
		name   string
		header []byte
	}{
		{"length 0", rawHeader(0, uint8(wire.OpStat), 0, 0, 0, 2)},
		{"length 15", rawHeader(15, uint8(wire.OpStat), 0, 0, 0, 2)},
		{"length MaxFrameSize+1", rawHeader(wire.MaxFrameSize+1, uint8(wire.OpStore), wire.FlagInline, 0, 0, 2)},
		{"length 2^32-1", rawHeader(^uint32(0), uint8(wire.OpStore), wire.FlagInline, 0, 0, 2)},
		{"reserved", rawHeader(16, uint8(wire.OpStat), 0, 0, 1, 2)},
		{"two fds", rawHeader(28, uint8(wire.OpStore), 0, 2, 0, 2)},
	} {
		for _, n := range []int{1, 100} {
			t.Run(fmt.Sprintf("%s split %d", tc.name, n), func(t *testing.T) {
				// Only the header follows the good frame: the Reader must
				// reject it from the header alone, not wait for a body.
				rd, _ := newFakeReader(t, splitEvery(cat(good, tc.header), n))
				got, err := readAll(t, rd, 1)
				if !errors.Is(err, wire.ErrMalformed) {
					t.Fatalf("got %v, want ErrMalformed", err)
				}
				sameFrames(t, got, splitFrames(t, good))
			})
		}
	}
}

func TestReaderSourceError(t *testing.T) {
	errBoom := errors.New("boom")
	stream := sampleStream()
	chunks := append(splitEvery(stream, 10), chunk{err: errBoom})
	rd, _ := newFakeReader(t, chunks)
	got, err := readAll(t, rd, 100)
	if !errors.Is(err, errBoom) {
		t.Fatalf("got %v, want the source's error", err)
	}
	sameFrames(t, got, splitFrames(t, stream))
}

func TestReaderStickyErrors(t *testing.T) {
	errBoom := errors.New("boom")
	memfd := memfdWith(t, []byte("x"))
	for _, tc := range []struct {
		name   string
		chunks func() []chunk
		want   error
	}{
		// An empty chunk is a zero-byte read: the end of the stream.
		{"eof", func() []chunk { return []chunk{{}} }, io.EOF},
		{"unexpected eof", func() []chunk { return []chunk{{data: wire.AppendStat(nil, 1)[:9]}, {}} }, io.ErrUnexpectedEOF},
		{"malformed", func() []chunk { return []chunk{{data: rawHeader(3, 1, 0, 0, 0, 0)}} }, wire.ErrMalformed},
		{"source error", func() []chunk { return []chunk{{err: errBoom}} }, errBoom},
		{"missing fds", func() []chunk {
			return []chunk{{data: wire.AppendStore(nil, 1, wire.Store{Size: 1}, nil, true)}}
		}, wire.ErrMissingFDs},
		{"stray fds", func() []chunk {
			return []chunk{{oob: unix.UnixRights(dupFD(t, memfd)), data: wire.AppendStat(nil, 1)}}
		}, wire.ErrStrayFDs},
		{"truncated control", func() []chunk {
			return []chunk{{oob: unix.UnixRights(dupFD(t, memfd)), flags: unix.MSG_CTRUNC, data: wire.AppendStat(nil, 1)}}
		}, wire.ErrTruncatedControl},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// More data follows the failure, to show the Reader does not
			// read on after it.
			chunks := append(tc.chunks(), chunk{data: wire.AppendStat(nil, 99)})
			rd, src := newFakeReader(t, chunks)
			_, first := readAll(t, rd, 1)
			if !errors.Is(first, tc.want) {
				t.Fatalf("first error %v, want %v", first, tc.want)
			}
			calls := src.calls
			for range 3 {
				f, err := rd.ReadFrame()
				if err != first {
					t.Fatalf("later call returned %+v, %v; want the first error %v again", f, err, first)
				}
			}
			if src.calls != calls {
				t.Fatalf("the Reader read from its source %d more times after failing", src.calls-calls)
			}
		})
	}
}

// fdFrame returns an out-of-line MESSAGE frame: it declares one descriptor.
func fdFrame(id uint64) []byte {
	return wire.AppendMessage(nil, id, wire.Message{Seq: id, Size: 1 << 21}, nil, true)
}

func TestReaderDescriptorsInOrder(t *testing.T) {
	memfd := memfdWith(t, []byte("page"))
	// With reads of 30 bytes, the second write's descriptor arrives while
	// the first frame, 40 bytes long, still waits for its last 10.
	for _, n := range []int{1, 3, wire.HeaderSize, 30, 40, 1 << 16} {
		t.Run(fmt.Sprint("split ", n), func(t *testing.T) {
			fds := []int{dupFD(t, memfd), dupFD(t, memfd), dupFD(t, memfd), dupFD(t, memfd)}
			writes := []sendmsg{
				{data: fdFrame(1), fds: fds[0:1]},
				{data: fdFrame(2), fds: fds[1:2]},
				{data: cat(wire.AppendStat(nil, 3), wire.AppendCancel(nil, 4, 1))},
				{data: cat(fdFrame(5), wire.AppendStored(nil, 6, 5)), fds: fds[2:3]},
				{data: fdFrame(7), fds: fds[3:4]},
				{data: wire.AppendStat(nil, 8)},
			}
			rd, _ := newFakeReader(t, deliver(t, writes, n))
			var got []wire.Frame
			for {
				f, err := rd.ReadFrame()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("after %d frames: %v", len(got), err)
				}
				got = append(got, f)
			}
			wantFDs := map[uint64][]int{1: fds[0:1], 2: fds[1:2], 5: fds[2:3], 7: fds[3:4]}
			if len(got) != 8 {
				t.Fatalf("got %d frames, want 8", len(got))
			}
			for _, f := range got {
				if !equalInts(f.FDs, wantFDs[f.ID]) {
					t.Errorf("frame %d (%s) got descriptors %v, want %v", f.ID, f.Op, f.FDs, wantFDs[f.ID])
				}
			}
			for _, fd := range fds {
				if !isOpen(fd) {
					t.Fatalf("descriptor %d handed out in a frame was closed by the Reader", fd)
				}
			}
			wire.CloseFDs(fds)
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestReaderFDsGluedAfterPlainFrames has one read return the end of a write
// without descriptors and then a write that starts with a frame carrying
// one, as the kernel may: the descriptor arrives before the frames in front
// of its own, which must not take it.
func TestReaderFDsGluedAfterPlainFrames(t *testing.T) {
	fd := dupFD(t, memfdWith(t, nil))
	data := cat(wire.AppendStat(nil, 1), wire.AppendStat(nil, 2), fdFrame(3))
	rd, _ := newFakeReader(t, []chunk{{data: data, oob: unix.UnixRights(fd)}})
	got, err := readAll(t, rd, 3)
	if err != io.EOF {
		t.Fatalf("got %v, want io.EOF", err)
	}
	if len(got) != 3 || len(got[0].FDs)+len(got[1].FDs) != 0 || !equalInts(got[2].FDs, []int{fd}) {
		t.Fatalf("descriptors went to the wrong frames: %+v", got)
	}
	wire.CloseFDs(got[2].FDs)
}

// TestReaderFDsBeyondTheirBytes: descriptors arrive with bytes in which no
// frame that declares descriptors starts; the next such frame starts later
// and must not get them.
func TestReaderFDsBeyondTheirBytes(t *testing.T) {
	memfd := memfdWith(t, nil)
	fds := []int{dupFD(t, memfd), dupFD(t, memfd), dupFD(t, memfd)}
	first := fdFrame(1)
	stat := wire.AppendStat(nil, 2)
	chunks := []chunk{
		{data: first[:10], oob: unix.UnixRights(fds[0])},
		// The rest of frame 1 and a whole STAT, with a descriptor nobody
		// there declares.
		{data: cat(first[10:], stat, stat[:5]), oob: unix.UnixRights(fds[1])},
		{data: cat(stat[5:], fdFrame(3)), oob: unix.UnixRights(fds[2])},
	}
	rd, _ := newFakeReader(t, chunks)
	f, err := rd.ReadFrame()
	if err != nil || !equalInts(f.FDs, fds[:1]) {
		t.Fatalf("frame 1: %+v, %v; want it with descriptor %d", f.Header, err, fds[0])
	}
	defer wire.CloseFDs(f.FDs)
	stats := 0
	for {
		f, err := rd.ReadFrame()
		if err != nil {
			if !errors.Is(err, wire.ErrStrayFDs) {
				t.Fatalf("got %v, want ErrStrayFDs", err)
			}
			break
		}
		if len(f.FDs) > 0 {
			t.Fatalf("frame %d got descriptors %v that arrived with bytes before it", f.ID, f.FDs)
		}
		stats++
	}
	// Both STATs precede the frame where the stray descriptor shows.
	if stats != 2 {
		t.Fatalf("got %d frames before the failure, want the 2 STATs", stats)
	}
	for _, fd := range fds[1:] {
		if isOpen(fd) {
			t.Fatalf("descriptor %d left open after the Reader failed", fd)
		}
	}
}

// TestReaderFDFrameMovedByBufferGrowth has a descriptor-carrying frame too
// large for the rest of the buffer arrive with its descriptor after other
// frames, so the Reader must move it to grow the buffer while the
// descriptor waits for it.
func TestReaderFDFrameMovedByBufferGrowth(t *testing.T) {
	fd := dupFD(t, memfdWith(t, nil))
	stat := wire.AppendStat(nil, 1)
	big := cat(rawHeader(70000, uint8(wire.OpMessage), 0, 1, 0, 2), make([]byte, 70000-wire.HeaderSize))
	chunks := []chunk{
		{data: cat(stat, stat[:5])},
		// The descriptor comes with the first byte of big, glued after the
		// end of the second STAT.
		{data: cat(stat[5:], big[:50]), oob: unix.UnixRights(fd)},
		{data: big[50:]},
	}
	rd, _ := newFakeReader(t, chunks)
	got, err := readAll(t, rd, 3)
	if err != io.EOF {
		t.Fatalf("after %d frames: %v, want io.EOF", len(got), err)
	}
	if len(got) != 3 || !equalInts(got[2].FDs, []int{fd}) {
		t.Fatalf("got %d frames, the last with descriptors %v; want 3, the last with %d", len(got), got[len(got)-1].FDs, fd)
	}
	wire.CloseFDs(got[2].FDs)
}

// TestReaderFDArrivesAfterFrameStart: a frame's descriptor comes with a
// later part of the frame rather than its first byte.
func TestReaderFDArrivesAfterFrameStart(t *testing.T) {
	fd := dupFD(t, memfdWith(t, nil))
	frame := fdFrame(1)
	rd, _ := newFakeReader(t, []chunk{{data: frame[:20]}, {data: frame[20:], oob: unix.UnixRights(fd)}})
	_, err := rd.ReadFrame()
	if !errors.Is(err, wire.ErrMissingFDs) {
		t.Fatalf("got %v, want ErrMissingFDs", err)
	}
	if isOpen(fd) {
		t.Fatalf("descriptor %d left open", fd)
	}
}

// TestReaderFDCountMismatch: the claiming frame declares one descriptor but
// two came with it.
func TestReaderFDCountMismatch(t *testing.T) {
	memfd := memfdWith(t, nil)
	fds := []int{dupFD(t, memfd), dupFD(t, memfd)}
	rd, _ := newFakeReader(t, []chunk{{data: cat(fdFrame(1), fdFrame(2)), oob: unix.UnixRights(fds...)}})
	_, err := rd.ReadFrame()
	if !errors.Is(err, wire.ErrStrayFDs) {
		t.Fatalf("got %v, want ErrStrayFDs", err)
	}
	for _, fd := range fds {
		if isOpen(fd) {
			t.Fatalf("descriptor %d left open", fd)
		}
	}
}

// TestReaderFDsWithoutData: a read that returns descriptors and no byte.
func TestReaderFDsWithoutData(t *testing.T) {
	fd := dupFD(t, memfdWith(t, nil))
	rd, _ := newFakeReader(t, []chunk{{data: wire.AppendStat(nil, 1)[:5]}, {oob: unix.UnixRights(fd)}, {data: wire.AppendStat(nil, 1)[5:]}})
	_, err := rd.ReadFrame()
	if !errors.Is(err, wire.ErrStrayFDs) {
		t.Fatalf("got %v, want ErrStrayFDs", err)
	}
	if isOpen(fd) {
		t.Fatalf("descriptor %d left open", fd)
	}
}

func TestReaderStrayFDsClosed(t *testing.T) {
	memfd := memfdWith(t, nil)
	fds := []int{dupFD(t, memfd), dupFD(t, memfd)}
	rd, _ := newFakeReader(t, []chunk{{data: wire.AppendStat(nil, 1), oob: unix.UnixRights(fds...)}})
	f, err := rd.ReadFrame()
	if err != nil || f.Op != wire.OpStat || len(f.FDs) != 0 {
		t.Fatalf("first frame %+v, %v; want a STAT without descriptors", f, err)
	}
	_, err = rd.ReadFrame()
	if !errors.Is(err, wire.ErrStrayFDs) {
		t.Fatalf("got %v, want ErrStrayFDs", err)
	}
	for _, fd := range fds {
		if isOpen(fd) {
			t.Fatalf("stray descriptor %d left open", fd)
		}
	}
}

func TestReaderMissingFDs(t *testing.T) {
	for _, frame := range [][]byte{
		fdFrame(1),
		wire.AppendStore(nil, 2, wire.Store{Size: 10, Queue: []byte("q")}, nil, true),
		rawHeader(16, uint8(wire.OpStat), 0, 1, 0, 3), // a descriptor on a frame that never has one
	} {
		rd, _ := newFakeReader(t, []chunk{{data: frame}})
		_, err := rd.ReadFrame()
		if !errors.Is(err, wire.ErrMissingFDs) {
			t.Fatalf("% x: got %v, want ErrMissingFDs", frame[:8], err)
		}
	}
}

// TestReaderMissingFDsAfterClaimed sends two frames that each declare a
// descriptor but only one descriptor.
func TestReaderMissingFDsAfterClaimed(t *testing.T) {
	fd := dupFD(t, memfdWith(t, nil))
	rd, _ := newFakeReader(t, []chunk{{data: cat(fdFrame(1), fdFrame(2)), oob: unix.UnixRights(fd)}})
	f, err := rd.ReadFrame()
	if err != nil || !equalInts(f.FDs, []int{fd}) {
		t.Fatalf("first frame %+v, %v; want it to carry %d", f, err, fd)
	}
	defer wire.CloseFDs(f.FDs)
	if _, err := rd.ReadFrame(); !errors.Is(err, wire.ErrMissingFDs) {
		t.Fatalf("second frame: %v, want ErrMissingFDs", err)
	}
}

func TestReaderTruncatedControl(t *testing.T) {
	fd := dupFD(t, memfdWith(t, nil))
	rd, _ := newFakeReader(t, []chunk{{data: fdFrame(1), oob: unix.UnixRights(fd), flags: unix.MSG_CTRUNC}})
	_, err := rd.ReadFrame()
	if !errors.Is(err, wire.ErrTruncatedControl) {
		t.Fatalf("got %v, want ErrTruncatedControl", err)
	}
	if isOpen(fd) {
		t.Fatalf("descriptor %d from a truncated control message left open", fd)
	}
}

func TestReaderUnparseableControl(t *testing.T) {
	// A control message header claiming more bytes than there are.
	oob := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_SOCKET, unix.SCM_RIGHTS
	h.SetLen(len(oob) + 64)
	rd, _ := newFakeReader(t, []chunk{{data: wire.AppendStat(nil, 1), oob: oob}})
	_, err := rd.ReadFrame()
	if !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("got %v, want ErrMalformed", err)
	}
}

func TestReaderOtherControlMessagesTruncated(t *testing.T) {
	// The control buffer holds one descriptor and nothing larger:
	// credentials (never asked for) do not fit, and the kernel says so.
	oob := unix.UnixCredentials(&unix.Ucred{Pid: 1, Uid: 2, Gid: 3})
	rd, _ := newFakeReader(t, []chunk{{data: wire.AppendStat(nil, 1), oob: oob}})
	if _, err := rd.ReadFrame(); !errors.Is(err, wire.ErrTruncatedControl) {
		t.Fatalf("got %v, want ErrTruncatedControl", err)
	}
}

func TestReaderCloseClosesUnclaimed(t *testing.T) {
	fd := dupFD(t, memfdWith(t, nil))
	// A whole STAT, then the first bytes of a frame that will claim the
	// descriptor; the rest never arrives before Close.
	frame := fdFrame(2)
	rd, _ := newFakeReader(t, []chunk{{data: cat(wire.AppendStat(nil, 1), frame[:20]), oob: unix.UnixRights(fd)}})
	f, err := rd.ReadFrame()
	if err != nil || f.Op != wire.OpStat {
		t.Fatalf("got %+v, %v; want the STAT", f, err)
	}
	if !isOpen(fd) {
		t.Fatalf("descriptor %d closed while its frame was still arriving", fd)
	}
	rd.Close()
	if isOpen(fd) {
		t.Fatalf("Close left descriptor %d open", fd)
	}
	rd.Close() // a second Close must not close anything again
}

func TestCloseFDs(t *testing.T) {
	memfd := memfdWith(t, nil)
	fds := []int{dupFD(t, memfd), -1, dupFD(t, memfd)}
	wire.CloseFDs(fds)
	if isOpen(fds[0]) || isOpen(fds[2]) {
		t.Fatalf("CloseFDs left %v open", fds)
	}
	if !isOpen(memfd) {
		t.Fatalf("CloseFDs closed a descriptor it was not given")
	}
	wire.CloseFDs(nil)
}
