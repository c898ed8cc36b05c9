package wire_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"testing"

	"github.com/machq/machq/internal/wire"
)

// TestBuffered checks that Buffered reports a whole frame waiting exactly
// when the next ReadFrame can return without reading from the peer.
func TestBuffered(t *testing.T) {
	a := wire.AppendStat(nil, 1)
	b := wire.AppendRetrieve(nil, 2, wire.Retrieve{Queue: []byte("jobs")})
	stream := append(append([]byte(nil), a...), b...)
	// The first read returns frame a and half of frame b; the second
	// returns the rest of b.
	half := len(a) + len(b)/2
	fc := &fakeConn{t: t, chunks: []chunk{{data: stream[:half]}, {data: stream[half:]}}}
	rd := wire.NewReader(fc)
	if rd.Buffered() {
		t.Fatal("Buffered before any read")
	}
	if f, err := rd.ReadFrame(); err != nil || f.ID != 1 {
		t.Fatalf("first frame: id %d, %v", f.ID, err)
	}
	if rd.Buffered() {
		t.Fatal("Buffered with only half a frame received")
	}
	calls := fc.calls
	if f, err := rd.ReadFrame(); err != nil || f.ID != 2 {
		t.Fatalf("second frame: id %d, %v", f.ID, err)
	}
	if fc.calls != calls+1 {
		t.Fatalf("second frame took %d reads, want 1", fc.calls-calls)
	}

	// Two whole frames in one read: the second is buffered.
	fc = &fakeConn{t: t, chunks: []chunk{{data: stream}}}
	rd = wire.NewReader(fc)
	rd.ReadFrame()
	if !rd.Buffered() {
		t.Fatal("second whole frame not reported as buffered")
	}
	calls = fc.calls
	if _, err := rd.ReadFrame(); err != nil || fc.calls != calls {
		t.Fatalf("buffered frame: err %v, %d extra reads", err, fc.calls-calls)
	}
	if rd.Buffered() {
		t.Fatal("Buffered after every frame was taken")
	}
}

// timeoutOnce fails its first read with an expired deadline, reporting -1
// bytes as some net error paths do, then serves data.
type timeoutOnce struct {
	data  []byte
	fired bool
}

func (c *timeoutOnce) ReadMsgUnix(b, oob []byte) (int, int, int, *net.UnixAddr, error) {
	if !c.fired {
		c.fired = true
		return -1, 0, 0, nil, &net.OpError{Op: "read", Net: "unix", Err: os.ErrDeadlineExceeded}
	}
	n := copy(b, c.data)
	c.data = c.data[n:]
	return n, 0, 0, nil, nil
}

// TestDeadlineIsNotSticky checks that a read deadline expiring while
// ReadFrame waits loses nothing: the next ReadFrame returns the frame.
func TestDeadlineIsNotSticky(t *testing.T) {
	rd := wire.NewReader(&timeoutOnce{data: wire.AppendStat(nil, 7)})
	if _, err := rd.ReadFrame(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("first ReadFrame: %v, want the deadline error", err)
	}
	f, err := rd.ReadFrame()
	if err != nil || f.Op != wire.OpStat || f.ID != 7 {
		t.Fatalf("after the deadline: %s %d, %v", f.Op, f.ID, err)
	}
}

// TestLargeFrameIsOwned checks that a frame larger than the read buffer
// comes in memory of its own, which later frames do not overwrite, while
// small frames alias the buffer.
func TestLargeFrameIsOwned(t *testing.T) {
	big := make([]byte, 300<<10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	var stream []byte
	stream = wire.AppendStore(stream, 1, wire.Store{Size: uint64(len(big))}, big, false)
	stream = wire.AppendStore(stream, 2, wire.Store{Size: 3}, []byte("abc"), false)
	stream = wire.AppendStore(stream, 3, wire.Store{Size: uint64(len(big))}, make([]byte, len(big)), false)
	rd := wire.NewReader(&fakeConn{t: t, chunks: splitEvery(stream, 50<<10)})

	f, err := rd.ReadFrame()
	if err != nil || !f.Owned {
		t.Fatalf("large frame: owned %v, %v", f.Owned, err)
	}
	_, payload, err := wire.ParseStore(f.Header, f.Body)
	if err != nil {
		t.Fatal(err)
	}
	small, err := rd.ReadFrame()
	if err != nil || small.Owned {
		t.Fatalf("small frame: owned %v, %v", small.Owned, err)
	}
	if _, err := rd.ReadFrame(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(payload, big) {
		t.Fatal("an owned payload changed when later frames were read")
	}
}
