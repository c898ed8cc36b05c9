package wire_test

import (
	"bytes"
	"errors"
	"net"
	"testing"

	"github.com/machq/machq/internal/wire"
	"golang.org/x/sys/unix"
)

// fakeWriter is a wire.MsgWriter that records what it is asked to send.
type fakeWriter struct {
	msgCalls   int
	writeCalls int
	oob        []byte      // control data of the last WriteMsgUnix
	sent       []byte      // every byte accepted, in order
	calls      []writeCall // every call, in order

	msgAccept int   // bytes WriteMsgUnix accepts; -1 for all
	msgErr    error // error WriteMsgUnix returns
	writeErr  error // error Write returns
}

func (w *fakeWriter) WriteMsgUnix(b, oob []byte, addr *net.UnixAddr) (int, int, error) {
	w.msgCalls++
	if addr != nil {
		return 0, 0, errors.New("fakeWriter: Write passed an address on a connected socket")
	}
	if w.msgErr != nil {
		return 0, 0, w.msgErr
	}
	n := len(b)
	if w.msgAccept >= 0 {
		n = min(n, w.msgAccept)
	}
	w.oob = bytes.Clone(oob)
	w.sent = append(w.sent, b[:n]...)
	w.calls = append(w.calls, writeCall{data: bytes.Clone(b[:n]), fds: rightsIn(oob)})
	return n, len(oob), nil
}

// writeCall is one call a fakeWriter received.
type writeCall struct {
	data []byte
	fds  []int // nil for a plain Write
}

// rightsIn returns the descriptors in SCM_RIGHTS control data.
func rightsIn(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return []int{-1}
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return []int{-1}
		}
		fds = append(fds, got...)
	}
	return fds
}

func (w *fakeWriter) Write(b []byte) (int, error) {
	w.writeCalls++
	if w.writeErr != nil {
		return 0, w.writeErr
	}
	w.sent = append(w.sent, b...)
	w.calls = append(w.calls, writeCall{data: bytes.Clone(b)})
	return len(b), nil
}

func TestWriteWithoutFDsUsesWrite(t *testing.T) {
	w := &fakeWriter{msgAccept: -1}
	b := sampleStream()
	if err := wire.Write(w, b, nil); err != nil {
		t.Fatal(err)
	}
	if w.msgCalls != 0 || w.writeCalls != 1 || !bytes.Equal(w.sent, b) {
		t.Fatalf("WriteMsgUnix ×%d, Write ×%d, %d bytes sent; want Write ×1 with all %d bytes", w.msgCalls, w.writeCalls, len(w.sent), len(b))
	}
}

func TestWriteAttachesFDs(t *testing.T) {
	w := &fakeWriter{msgAccept: -1}
	b := cat(fdFrame(1), fdFrame(2))
	fds := []int{7, 9}
	if err := wire.Write(w, b, fds); err != nil {
		t.Fatal(err)
	}
	if w.msgCalls != 1 || w.writeCalls != 0 {
		t.Fatalf("WriteMsgUnix ×%d, Write ×%d; want one WriteMsgUnix", w.msgCalls, w.writeCalls)
	}
	if !bytes.Equal(w.sent, b) {
		t.Fatalf("sent %d bytes, want %d", len(w.sent), len(b))
	}
	msgs, err := unix.ParseSocketControlMessage(w.oob)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control data holds %d messages (%v), want 1", len(msgs), err)
	}
	got, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || !equalInts(got, fds) {
		t.Fatalf("SCM_RIGHTS carries %v (%v), want %v", got, err, fds)
	}
}

func TestWriteFinishesShortSendmsg(t *testing.T) {
	for _, accept := range []int{0, 1, 15, 16, 40} {
		w := &fakeWriter{msgAccept: accept}
		b := cat(fdFrame(1), wire.AppendStat(nil, 2))
		if err := wire.Write(w, b, []int{3}); err != nil {
			t.Fatal(err)
		}
		if w.msgCalls != 1 {
			t.Fatalf("accept %d: WriteMsgUnix ×%d; the descriptors must be sent once", accept, w.msgCalls)
		}
		if !bytes.Equal(w.sent, b) {
			t.Fatalf("accept %d: sent\n% x\nwant\n% x", accept, w.sent, b)
		}
	}
}

func TestWriteErrors(t *testing.T) {
	errMsg, errWrite := errors.New("sendmsg failed"), errors.New("write failed")

	w := &fakeWriter{msgErr: errMsg}
	if err := wire.Write(w, fdFrame(1), []int{3}); !errors.Is(err, errMsg) {
		t.Fatalf("WriteMsgUnix failing: got %v, want %v", err, errMsg)
	}
	if w.writeCalls != 0 {
		t.Fatalf("Write called after WriteMsgUnix failed")
	}

	w = &fakeWriter{msgAccept: 4, writeErr: errWrite}
	if err := wire.Write(w, fdFrame(1), []int{3}); !errors.Is(err, errWrite) {
		t.Fatalf("Write failing after a short sendmsg: got %v, want %v", err, errWrite)
	}

	w = &fakeWriter{writeErr: errWrite}
	if err := wire.Write(w, wire.AppendStat(nil, 1), nil); !errors.Is(err, errWrite) {
		t.Fatalf("Write failing without descriptors: got %v, want %v", err, errWrite)
	}
}

func TestWriteFDLimit(t *testing.T) {
	fds := make([]int, wire.MaxFDsPerWrite+1)
	w := &fakeWriter{msgAccept: -1}
	if err := wire.Write(w, wire.AppendStat(nil, 1), fds); err == nil {
		t.Fatalf("Write with %d descriptors succeeded, limit is %d", len(fds), wire.MaxFDsPerWrite)
	}
	if w.msgCalls+w.writeCalls != 0 || len(w.sent) != 0 {
		t.Fatalf("a rejected Write sent %d bytes", len(w.sent))
	}
	if err := wire.Write(w, wire.AppendStat(nil, 1), fds[:wire.MaxFDsPerWrite]); err != nil {
		t.Fatalf("Write with exactly %d descriptors: %v", wire.MaxFDsPerWrite, err)
	}
}

func TestWriteFrames(t *testing.T) {
	a, b, c := wire.AppendStat(nil, 1), wire.AppendCancel(nil, 2, 1), wire.AppendStats(nil, 3, []byte("{}"))
	f4, f5, f6 := fdFrame(4), fdFrame(5), fdFrame(6)
	for _, tc := range []struct {
		name   string
		frames [][]byte
		fds    []int
		fdAt   []int // index into frames of the frame carrying each fd
		want   []writeCall
	}{
		{
			name:   "no descriptors: one write",
			frames: [][]byte{a, b, c},
			want:   []writeCall{{data: cat(a, b, c)}},
		},
		{
			name:   "descriptor frame first, plain frames share its sendmsg",
			frames: [][]byte{f4, a, b},
			fds:    []int{40}, fdAt: []int{0},
			want: []writeCall{{data: cat(f4, a, b), fds: []int{40}}},
		},
		{
			name:   "plain frames before the first descriptor frame go alone",
			frames: [][]byte{a, b, f4, c},
			fds:    []int{40}, fdAt: []int{2},
			want: []writeCall{{data: cat(a, b)}, {data: cat(f4, c), fds: []int{40}}},
		},
		{
			name:   "each descriptor frame starts its own sendmsg",
			frames: [][]byte{f4, f5, a, f6},
			fds:    []int{40, 50, 60}, fdAt: []int{0, 1, 3},
			want: []writeCall{{data: f4, fds: []int{40}}, {data: cat(f5, a), fds: []int{50}}, {data: f6, fds: []int{60}}},
		},
		{
			name:   "several descriptors on one frame travel together",
			frames: [][]byte{a, f4, b},
			fds:    []int{40, 41}, fdAt: []int{1, 1},
			want: []writeCall{{data: a}, {data: cat(f4, b), fds: []int{40, 41}}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf []byte
			var offsets []int
			for _, f := range tc.frames {
				offsets = append(offsets, len(buf))
				buf = append(buf, f...)
			}
			fdAt := make([]int, len(tc.fdAt))
			for i, k := range tc.fdAt {
				fdAt[i] = offsets[k]
			}
			w := &fakeWriter{msgAccept: -1}
			if err := wire.WriteFrames(w, buf, tc.fds, fdAt); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(w.sent, buf) {
				t.Fatalf("sent %d bytes, want the %d of buf in order", len(w.sent), len(buf))
			}
			if len(w.calls) != len(tc.want) {
				t.Fatalf("%d calls, want %d: %+v", len(w.calls), len(tc.want), w.calls)
			}
			for i, want := range tc.want {
				got := w.calls[i]
				if !bytes.Equal(got.data, want.data) || !equalInts(got.fds, want.fds) {
					t.Fatalf("call %d sent %d bytes with descriptors %v, want %d bytes with %v", i, len(got.data), got.fds, len(want.data), want.fds)
				}
				if len(want.fds) > 0 {
					if h, err := wire.ParseHeader(got.data); err != nil || h.NFDs == 0 {
						t.Fatalf("call %d with %d descriptors does not start with a frame that declares descriptors", i, len(want.fds))
					}
				}
			}
		})
	}
}

func TestWriteFramesStopsAtError(t *testing.T) {
	errMsg := errors.New("sendmsg failed")
	w := &fakeWriter{msgErr: errMsg}
	buf := cat(wire.AppendStat(nil, 1), fdFrame(2), fdFrame(3))
	if err := wire.WriteFrames(w, buf, []int{5, 6}, []int{16, 56}); !errors.Is(err, errMsg) {
		t.Fatalf("got %v, want %v", err, errMsg)
	}
	if w.msgCalls != 1 {
		t.Fatalf("WriteMsgUnix called %d times; WriteFrames must stop at the first failure", w.msgCalls)
	}
}
