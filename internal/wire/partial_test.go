package wire_test

import (
	"errors"
	"testing"

	"github.com/machq/machq/internal/wire"
	"golang.org/x/sys/unix"
)

// inlineStore is a STORE frame carrying n bytes inline.
func inlineStore(id uint64, n int) []byte {
	return wire.AppendStore(nil, id, wire.Store{Size: uint64(n)}, make([]byte, n), false)
}

func TestReaderGrowsWithArrivedBytes(t *testing.T) {
	frame := inlineStore(1, wire.MaxInline)
	// The header declares a frame of 1 MiB, but only 100 KiB arrive.
	sent := frame[:100<<10]
	src := &fakeConn{t: t, chunks: splitEvery(sent, 4096)}
	rd := wire.NewReader(src)
	defer rd.Close()
	if _, err := rd.ReadFrame(); err == nil {
		t.Fatal("a frame cut short was returned whole")
	}
	if got, most := wire.BufferLen(rd), 2*len(sent); got > most {
		t.Fatalf("buffer of %d bytes after %d bytes of a frame declaring %d; want at most %d (it follows what arrived, not what was declared)", got, len(sent), len(frame), most)
	}

	// The whole frame still arrives whole, however it is split.
	rd2, _ := newFakeReader(t, splitEvery(frame, 5000))
	f, err := rd2.ReadFrame()
	if err != nil || int(f.Length) != len(frame) {
		t.Fatalf("got %+v, %v; want the %d-byte STORE", f.Header, err, len(frame))
	}
}

func TestReaderOnPartialOncePerFrame(t *testing.T) {
	a, b := inlineStore(1, 10000), inlineStore(2, 10)
	stream := append(append([]byte{}, a...), b...)
	// The first frame arrives in three reads: two waits on a partial
	// frame, one call. The second arrives with the end of the first.
	chunks := []chunk{{data: stream[:100]}, {data: stream[100:5000]}, {data: stream[5000:]}}
	rd, src := newFakeReader(t, chunks)
	calls := 0
	rd.OnPartial(func() {
		calls++
		if src.calls != 1 {
			t.Errorf("OnPartial called after %d reads, want after the first, which left a partial frame", src.calls)
		}
	})
	for i, want := range []uint64{1, 2} {
		f, err := rd.ReadFrame()
		if err != nil || f.ID != want {
			t.Fatalf("frame %d: %+v, %v", i, f.Header, err)
		}
	}
	if calls != 1 {
		t.Fatalf("OnPartial called %d times, want once (for the frame that arrived in parts)", calls)
	}
}

func TestReaderStrayInsideFrameFailsAtOnce(t *testing.T) {
	fd := dupFD(t, memfdWith(t, []byte("x")))
	frame := inlineStore(1, 50000)
	// A descriptor arrives with bytes in the middle of a frame that is
	// never finished: the reader fails on that read, without waiting for
	// the frame's end, and closes it.
	chunks := []chunk{{data: frame[:1000]}, {data: frame[1000:2000], oob: unix.UnixRights(fd)}, {data: frame[2000:3000]}}
	src := &fakeConn{t: t, chunks: chunks}
	rd := wire.NewReader(src)
	defer rd.Close()
	_, err := rd.ReadFrame()
	if !errors.Is(err, wire.ErrStrayFDs) {
		t.Fatalf("got %v, want ErrStrayFDs", err)
	}
	if src.calls != 2 {
		t.Fatalf("reader made %d reads, want 2: it must fail on the read that brought the descriptor", src.calls)
	}
	if isOpen(fd) {
		t.Fatalf("stray descriptor %d left open", fd)
	}
}

func TestReaderStrayWithFrameStartFailsAtOnce(t *testing.T) {
	fd := dupFD(t, memfdWith(t, []byte("x")))
	frame := inlineStore(1, 50000)
	// The kernel may return a descriptor with the bytes of the sendmsgs
	// before its own: here with a frame's start, but that frame declares
	// none and the descriptor's bytes end inside it.
	chunks := []chunk{{data: frame[:2000], oob: unix.UnixRights(fd)}, {data: frame[2000:3000]}}
	src := &fakeConn{t: t, chunks: chunks}
	rd := wire.NewReader(src)
	defer rd.Close()
	if _, err := rd.ReadFrame(); !errors.Is(err, wire.ErrStrayFDs) {
		t.Fatalf("got %v, want ErrStrayFDs", err)
	}
	if src.calls != 1 {
		t.Fatalf("reader made %d reads, want 1", src.calls)
	}
	if isOpen(fd) {
		t.Fatalf("stray descriptor %d left open", fd)
	}
}
