package spin

import (
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair returns both ends of a connected Unix stream socket as
// *net.UnixConn, closed when the test ends.
func pair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
		t.Cleanup(func() { conns[i].Close() })
	}
	return conns[0], conns[1]
}

// TestReadsBytesAndDescriptors: what a peer sends arrives as from
// ReadMsgUnix, descriptors included, close-on-exec, spinning or not; the
// end of the stream reads as 0 bytes and no error.
func TestReadsBytesAndDescriptors(t *testing.T) {
	for _, budget := range []time.Duration{0, time.Millisecond} {
		a, b := pair(t)
		r := NewReader(b, budget, nil)
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			a.WriteMsgUnix([]byte("hello"), unix.UnixRights(efd), nil)
			unix.Close(efd)
			a.Close()
		}()
		buf, oob := make([]byte, 64), make([]byte, unix.CmsgSpace(4))
		n, oobn, flags, _, err := r.ReadMsgUnix(buf, oob)
		if err != nil || string(buf[:n]) != "hello" || flags&unix.MSG_CTRUNC != 0 {
			t.Fatalf("budget %v: read %q, flags %#x, %v", budget, buf[:n], flags, err)
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			t.Fatalf("budget %v: control messages %v, %v", budget, msgs, err)
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			t.Fatalf("budget %v: descriptors %v, %v", budget, fds, err)
		}
		fl, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GETFD, 0)
		if err != nil || fl&unix.FD_CLOEXEC == 0 {
			t.Errorf("budget %v: received descriptor not close-on-exec (%#x, %v)", budget, fl, err)
		}
		unix.Close(fds[0])
		n, _, _, _, err = r.ReadMsgUnix(buf, oob)
		if n != 0 || err != nil {
			t.Fatalf("budget %v: at the end of the stream read %d bytes, %v", budget, n, err)
		}
	}
}

// TestDeadlineAndCloseEndAWait: a read deadline ends a wait that spins
// first, and so does closing the connection.
func TestDeadlineAndCloseEndAWait(t *testing.T) {
	_, b := pair(t)
	r := NewReader(b, time.Millisecond, nil)
	b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	buf := make([]byte, 8)
	if _, _, _, _, err := r.ReadMsgUnix(buf, nil); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past the deadline: %v", err)
	}
	b.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, _, _, _, err := r.ReadMsgUnix(buf, nil)
		done <- err
	}()
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the wait")
	}
}

// TestErrorsAreThePeers: a reset connection reads as ECONNRESET, as from
// the net package.
func TestErrorsAreThePeers(t *testing.T) {
	a, b := pair(t)
	r := NewReader(b, 0, nil)
	// Closing with unread data makes the peer's next read ECONNRESET.
	b.Write([]byte("unread"))
	a.Close()
	_, _, _, _, err := r.ReadMsgUnix(make([]byte, 8), nil)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after the peer went: %v", err)
	}
}

// TestSpinningAdapts: a reader spins its whole budget while spins find
// data; FailLimit spins in a row that find nothing stop it, it then parks
// Probe waits and tries once more, parking again at once if that finds
// nothing too, and one that finds data makes it spin every time again.
func TestSpinningAdapts(t *testing.T) {
	const max = 40 * time.Microsecond
	r := &Reader{}
	r.max.Store(int64(max))
	for i := 0; i < 10; i++ {
		if got := r.next(); got != max {
			t.Fatalf("wait %d: budget %v, want %v", i, got, max)
		}
		r.adapt(i%2 == 1) // a failure now and then is forgiven
	}
	for i := 0; i < FailLimit; i++ {
		if got := r.next(); got != max {
			t.Fatalf("failure %d: budget %v", i, got)
		}
		r.adapt(false)
	}
	probe := func() {
		t.Helper()
		for i := 0; i < Probe; i++ {
			if got := r.next(); got != 0 {
				t.Fatalf("wait %d after %d failures spins %v", i, FailLimit, got)
			}
		}
		if got := r.next(); got != max {
			t.Fatalf("the probe after %d waits: budget %v, want %v", Probe, got, max)
		}
	}
	probe()
	r.adapt(false)
	probe() // a failed probe parks again at once
	r.adapt(true)
	for i := 0; i < 5; i++ {
		if got := r.next(); got != max {
			t.Fatalf("after a probe that found data: budget %v", got)
		}
		r.adapt(true)
	}
	r.SetMax(0)
	if got := r.next(); got != 0 {
		t.Fatalf("spinning off: budget %v", got)
	}
}

// TestLimiter: at most n readers hold a Limiter at once; a nil Limiter
// lets everyone spin, a zero one nobody.
func TestLimiter(t *testing.T) {
	l := NewLimiter(2)
	got := []bool{l.acquire(), l.acquire(), l.acquire()}
	if !got[0] || !got[1] || got[2] {
		t.Fatalf("a limiter of 2 let in %v", got)
	}
	l.release()
	if !l.acquire() {
		t.Fatal("a released place was not taken again")
	}
	var none *Limiter
	if !none.acquire() {
		t.Fatal("a nil limiter refused")
	}
	none.release()
	if (&Limiter{}).acquire() {
		t.Fatal("a zero limiter let a reader spin")
	}
}

// TestReadAllocatesNothing: a read of what is there allocates nothing.
func TestReadAllocatesNothing(t *testing.T) {
	a, b := pair(t)
	r := NewReader(b, time.Millisecond, nil)
	buf, oob := make([]byte, 64), make([]byte, 64)
	msg := []byte("x")
	allocs := testing.AllocsPerRun(100, func() {
		a.Write(msg)
		if n, _, _, _, err := r.ReadMsgUnix(buf, oob); n != 1 || err != nil {
			t.Fatalf("read %d, %v", n, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per read", allocs)
	}
}
