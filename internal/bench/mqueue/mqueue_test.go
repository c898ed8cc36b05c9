package mqueue

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/bench/peertest"
	"github.com/machq/machq/internal/bench/rawsock"
)

const waitLimit = peertest.WaitLimit

func startServer(t testing.TB) *peertest.Server {
	t.Helper()
	return peertest.Start(t, "mq.sock", func(ctx context.Context, ln int, connDone func(error)) error {
		return serve(ctx, ln, connDone)
	})
}

// maxSize returns MaxSize, skipping the test if this system has no POSIX
// message queues.
func maxSize(t testing.TB) int {
	t.Helper()
	n, why := MaxSize()
	if n < 0 {
		t.Skip(why)
	}
	return n
}

func dial(t testing.TB, s *peertest.Server, size, depth int) *Client {
	t.Helper()
	c, err := DialDepth(s.Path, size, depth)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitFor polls cond, yielding the processor between tries, until it
// holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
	}
}

// curmsgs returns the number of messages queued in mqd.
func curmsgs(t *testing.T, mqd int) int {
	t.Helper()
	a, err := mqGetattr(mqd)
	if err != nil {
		t.Fatal(err)
	}
	return a.Curmsgs
}

// mqueueMount returns where the mqueue filesystem is mounted, if it is.
func mqueueMount(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS... - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && fields[i+1] == "mqueue" && len(fields) > 4 {
				return fields[4]
			}
		}
	}
	return ""
}

// nameExists reports whether a queue called name exists, looking in the
// mqueue filesystem if it is mounted and asking mq_open otherwise.
func nameExists(t *testing.T, name string) bool {
	t.Helper()
	if dir := mqueueMount(t); dir != "" {
		_, err := os.Stat(filepath.Join(dir, name[1:]))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return err == nil
	}
	fd, err := mqOpen(name, unix.O_RDONLY|unix.O_CLOEXEC, nil)
	if err == nil {
		unix.Close(fd)
		return true
	}
	if err != unix.ENOENT {
		t.Fatalf("mq_open %s: %v, want ENOENT or success", name, err)
	}
	return false
}

// checkNoNames fails if any queue of this process is left, by name.
func checkNoNames(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		if nameExists(t, name) {
			t.Errorf("queue %s still exists", name)
			mqUnlink(name)
		}
	}
	if dir := mqueueMount(t); dir != "" {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		mine := strings.TrimPrefix(baseName(0), "/")
		mine = mine[:len(mine)-1] // "machq-bench-PID-"
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), mine) {
				t.Errorf("queue /%s left in %s", e.Name(), dir)
			}
		}
	}
}

func TestMaxSize(t *testing.T) {
	n, why := MaxSize()
	if n < 0 {
		t.Skip(why)
	}
	t.Logf("MaxSize: %d bytes, set by %s", n, why)
	if n == 0 || n > hardMsgsizeMax || why == "" {
		t.Fatalf("MaxSize() = %d, %q", n, why)
	}
	if l := getLimits(); !l.privileged {
		if limit := readSysctl("msgsize_max", defaultMsgsizeMax); n > limit {
			t.Errorf("MaxSize %d exceeds fs.mqueue.msgsize_max %d without privilege", n, limit)
		}
	}

	s := startServer(t)
	_, err := Dial(s.Path, n+1)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Dial(%d) = %v, want ErrTooLarge", n+1, err)
	}
	if !strings.Contains(err.Error(), why) {
		t.Errorf("error %q does not name the limit %q", err, why)
	}
	_, err = Dial(s.Path, 1<<30)
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("Dial(1 GiB) = %v, want ErrTooLarge", err)
	}

	c := dial(t, s, n, 2)
	defer c.Close()
	want := peertest.Payload(n, 1)
	calls := 0
	if err := c.RoundTrip(want, peertest.Expect(t, want, &calls)); err != nil || calls != 1 {
		t.Fatalf("RoundTrip of MaxSize bytes: %v, %d calls", err, calls)
	}
	if err := c.RoundTrip(make([]byte, n+1), func([]byte) {}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("RoundTrip over the dialled size: %v, want ErrTooLarge", err)
	}
}

func TestRoundTrip(t *testing.T) {
	limit := maxSize(t)
	s := startServer(t)
	for _, size := range []int{0, 1, 64, 4 << 10, 1 << 20} {
		if size > limit {
			_, err := Dial(s.Path, size)
			if !errors.Is(err, ErrTooLarge) {
				t.Errorf("Dial(%d) over MaxSize %d: %v, want ErrTooLarge", size, limit, err)
			}
			t.Logf("%d bytes: over MaxSize here, Dial fails with ErrTooLarge", size)
			continue
		}
		c := dial(t, s, size, DefaultDepth)
		for i := range 3 {
			for _, n := range []int{size, size / 2} {
				want := peertest.Payload(n, uint64(i))
				calls := 0
				if err := c.RoundTrip(want, peertest.Expect(t, want, &calls)); err != nil {
					t.Fatalf("%d bytes on a %d-byte client: %v", n, size, err)
				}
				if calls != 1 {
					t.Fatalf("%d bytes: got called %d times", n, calls)
				}
			}
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.ConnEnded(t); err != nil {
			t.Errorf("%d bytes: connection ended with %v", size, err)
		}
	}
}

func TestFIFOOrder(t *testing.T) {
	limit := maxSize(t)
	size := min(limit, 4<<10)
	s := startServer(t)
	c := dial(t, s, size, DefaultDepth)
	defer c.Close()
	var stored [][]byte
	for i, n := range []int{5, 0, size, 64, 100, 1, size - 1} {
		p := peertest.Payload(n, uint64(10+i))
		if err := c.send(p, prioStore); err != nil {
			t.Fatal(err)
		}
		if err := c.receive(prioAck, nil); err != nil {
			t.Fatal(err)
		}
		stored = append(stored, p)
	}
	var got [][]byte
	collect := func(b []byte) { got = append(got, bytes.Clone(b)) }
	half := len(stored) / 2
	for range half {
		if err := c.send(nil, prioRetrieve); err != nil {
			t.Fatal(err)
		}
		if err := c.receive(prioData, collect); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.pipe(len(stored)-half, nil, prioRetrieve, prioData, collect); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(stored) {
		t.Fatalf("retrieved %d payloads, stored %d", len(got), len(stored))
	}
	for i := range stored {
		if !bytes.Equal(got[i], stored[i]) {
			t.Errorf("retrieve %d: got %d bytes, want the %d bytes stored %d-th", i, len(got[i]), len(stored[i]), i)
		}
	}
	if err := c.RoundTrip(nil, func([]byte) {}); err != nil {
		t.Fatal(err)
	}
	if err := c.send(nil, prioRetrieve); err != nil {
		t.Fatal(err)
	}
	if err := c.receive(prioData, collect); err == nil {
		t.Error("retrieve from an empty FIFO succeeded")
	}
}

func TestPipeline(t *testing.T) {
	limit := maxSize(t)
	l := getLimits()
	s := startServer(t)
	for _, qdepth := range []int{8, 2} {
		for _, size := range []int{0, 64, min(limit, 4<<10), limit} {
			c := dial(t, s, size, qdepth)
			if want := min(qdepth, l.msgMax); c.QueueDepth() != want {
				t.Errorf("QueueDepth() = %d for depth %d, want %d", c.QueueDepth(), qdepth, want)
			}
			for _, depth := range []int{1, 8, 25} {
				want := peertest.Payload(size, uint64(depth))
				calls := 0
				if err := c.Pipeline(want, depth, peertest.Expect(t, want, &calls)); err != nil {
					t.Fatalf("%d bytes, queue depth %d, depth %d: %v", size, c.QueueDepth(), depth, err)
				}
				if calls != depth {
					t.Fatalf("%d bytes, depth %d: got called %d times", size, depth, calls)
				}
			}
			if err := c.send(nil, prioRetrieve); err != nil {
				t.Fatal(err)
			}
			if err := c.receive(prioData, nil); err == nil {
				t.Error("FIFO not empty after pipelines")
			}
			c.Close()
			if err := s.ConnEnded(t); err != nil {
				t.Errorf("connection ended with %v", err)
			}
		}
	}
}

// TestNamesGone checks that no queue name outlives the handshake, whether
// Dial succeeds or the peer refuses.
func TestNamesGone(t *testing.T) {
	maxSize(t)
	s := startServer(t)
	c := dial(t, s, 64, 4)
	names := c.names
	if !strings.HasPrefix(names[0], namePrefix) || !strings.HasSuffix(names[0], "-req") || !strings.HasSuffix(names[1], "-rsp") {
		t.Errorf("queue names %q", names)
	}
	checkNoNames(t, names[:]...)
	if err := c.RoundTrip([]byte("x"), func([]byte) {}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	s.ConnEnded(t)
	checkNoNames(t, names[:]...)

	// A peer that refuses the queues: the client removes them.
	path := filepath.Join(t.TempDir(), "refuse.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ln)
	refused := make(chan error, 1)
	go func() {
		fd, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if err != nil {
			refused <- err
			return
		}
		defer unix.Close(fd)
		if _, err := readString(fd); err != nil {
			refused <- err
			return
		}
		refused <- writeString(fd, "no thanks")
	}()
	if _, err := DialDepth(path, 64, 4); err == nil || !strings.Contains(err.Error(), "no thanks") {
		t.Errorf("Dial to a refusing peer: %v", err)
	}
	if err := <-refused; err != nil {
		t.Fatal(err)
	}
	base := baseName(seq.Load())
	checkNoNames(t, reqName(base), rspName(base))

	// Nobody listening: nothing is created.
	if _, err := Dial(filepath.Join(t.TempDir(), "nobody"), 64); err == nil {
		t.Error("Dial with nobody listening succeeded")
	}
	checkNoNames(t)
}

// TestFdsReturnToBaseline checks that neither side keeps a descriptor
// once a client closes, payloads still stored included, and that Serve
// closes its listener.
func TestFdsReturnToBaseline(t *testing.T) {
	limit := maxSize(t)
	before := peertest.CountFDs(t)
	s := startServer(t)
	base := peertest.CountFDs(t)
	if base != before+1 {
		t.Fatalf("listening took %d descriptors, want 1", base-before)
	}
	for round := range 2 {
		c := dial(t, s, limit, DefaultDepth)
		p := peertest.Payload(limit, 3)
		calls := 0
		if err := c.RoundTrip(p, peertest.Expect(t, p, &calls)); err != nil {
			t.Fatal(err)
		}
		if err := c.Pipeline(p, 8, peertest.Expect(t, p, &calls)); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := c.send(p, prioStore); err != nil {
				t.Fatal(err)
			}
			if err := c.receive(prioAck, nil); err != nil {
				t.Fatal(err)
			}
		}
		if n := peertest.CountFDs(t); n != base+6 {
			t.Errorf("round %d: %d descriptors with a client connected, want %d (3 per side)", round, n, base+6)
		}
		s.CloseClient(t, c, base, round)
	}
	s.Stop(t)
	if n := peertest.CountFDs(t); n != before {
		t.Errorf("%d descriptors after Serve returned, want %d", n, before)
	}
}

// TestServeStopsWithBlockedWorker floods a peer the way only a broken
// client could, so that the peer's worker blocks sending to a full
// response queue, and checks that cancelling Serve still ends it and
// frees everything, and that the client learns the peer is gone.
func TestServeStopsWithBlockedWorker(t *testing.T) {
	maxSize(t)
	before := peertest.CountFDs(t)
	s := startServer(t)
	c := dial(t, s, 64, 2)
	m := c.QueueDepth()
	for range 2 * m {
		if err := c.send([]byte("flood"), prioStore); err != nil {
			t.Fatal(err)
		}
	}
	// The peer has acknowledged m stores, filling the response queue,
	// and holds one more whose acknowledgement it cannot send.
	waitFor(t, "the peer to block on a full response queue", func() bool {
		return curmsgs(t, c.rsp) == m && curmsgs(t, c.req) == m-1
	})
	s.Stop(t)
	if err := s.ConnEnded(t); err != nil {
		t.Errorf("connection ended with %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.RoundTrip([]byte("x"), func([]byte) {}) }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("RoundTrip succeeded after the peer stopped")
		}
	case <-time.After(waitLimit):
		t.Fatal("RoundTrip blocked after the peer stopped")
	}
	c.Close()
	if n := peertest.CountFDs(t); n != before {
		t.Errorf("%d descriptors after everything closed, want %d", n, before)
	}
}

// fakePeer accepts one client, opens its queues and acknowledges the
// handshake, but never serves them; closing the returned descriptor is
// the peer dying.
func fakePeer(t *testing.T) (path string, ctl <-chan int) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "fake.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan int, 1)
	go func() {
		defer unix.Close(ln)
		fd, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if err != nil {
			t.Error(err)
			close(ch)
			return
		}
		base, err := readString(fd)
		if err == nil {
			var w *worker
			if w, err = openPair(base); err == nil {
				w.close()
				err = writeString(fd, "")
			}
		}
		if err != nil {
			t.Error(err)
		}
		ch <- fd
	}()
	return path, ch
}

// TestClientWakesWhenPeerDies checks that a client blocked receiving, or
// sending to a full request queue, returns when the peer goes away.
func TestClientWakesWhenPeerDies(t *testing.T) {
	maxSize(t)
	for _, blocked := range []string{"receiving", "sending"} {
		t.Run(blocked, func(t *testing.T) {
			before := peertest.CountFDs(t)
			path, ctl := fakePeer(t)
			c, err := DialDepth(path, 64, 2)
			if err != nil {
				t.Fatal(err)
			}
			fd, ok := <-ctl
			if !ok {
				t.FailNow()
			}
			m := c.QueueDepth()
			done := make(chan error, 1)
			queued := 1
			if blocked == "receiving" {
				go func() { done <- c.RoundTrip([]byte("x"), func([]byte) {}) }()
			} else {
				queued = m
				go func() {
					for range m + 1 {
						if err := c.send([]byte("x"), prioStore); err != nil {
							done <- err
							return
						}
					}
					done <- nil
				}()
			}
			waitFor(t, fmt.Sprintf("%d requests queued", queued), func() bool { return curmsgs(t, c.req) == queued })
			select {
			case err := <-done:
				t.Fatalf("client returned (%v) while the peer was alive", err)
			default:
			}
			unix.Close(fd)
			select {
			case err := <-done:
				if !errors.Is(err, errPeerGone) {
					t.Errorf("client returned %v, want errPeerGone", err)
				}
			case <-time.After(waitLimit):
				t.Fatal("client stayed blocked after the peer died")
			}
			if err := c.RoundTrip(nil, func([]byte) {}); !errors.Is(err, errPeerGone) {
				t.Errorf("RoundTrip after the peer died: %v, want errPeerGone", err)
			}
			c.Close()
			if n := peertest.CountFDs(t); n != before {
				t.Errorf("%d descriptors after everything closed, want %d", n, before)
			}
		})
	}
}

// TestProtocolError checks that the peer drops a client that sends a
// request it does not know, and that the client then learns it.
func TestProtocolError(t *testing.T) {
	maxSize(t)
	s := startServer(t)
	c := dial(t, s, 64, 2)
	defer c.Close()
	// The peer may drop the connection before send returns.
	if err := c.send(nil, 7); err != nil && !errors.Is(err, errPeerGone) {
		t.Fatal(err)
	}
	if err := s.ConnEnded(t); !errors.Is(err, errProtocol) {
		t.Errorf("peer ended the connection with %v, want a protocol error", err)
	}
	waitFor(t, "the client to notice", c.dead.Load)
	if err := c.RoundTrip(nil, func([]byte) {}); !errors.Is(err, errPeerGone) {
		t.Errorf("RoundTrip: %v, want errPeerGone", err)
	}
}

func BenchmarkRoundTrip(b *testing.B) {
	limit := maxSize(b)
	for _, size := range []int{64, 4 << 10, limit} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			s := startServer(b)
			c := dial(b, s, size, DefaultDepth)
			defer c.Close()
			p := peertest.Payload(size, 1)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if err := c.RoundTrip(p, func([]byte) {}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestForeignNames checks that the peer refuses to open, and so to
// unlink, queues whose names this package does not make.
func TestForeignNames(t *testing.T) {
	maxSize(t)
	s := startServer(t)
	foreign := "/not-machq-" + fmt.Sprint(os.Getpid())
	a := mqAttr{Maxmsg: 1, Msgsize: 1}
	for _, name := range []string{reqName(foreign), rspName(foreign)} {
		fd, err := mqOpen(name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, &a)
		if err != nil {
			t.Fatal(err)
		}
		defer mqUnlink(name)
		defer unix.Close(fd)
	}
	ctl, err := rawsock.Dial(s.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ctl)
	if err := writeString(ctl, foreign); err != nil {
		t.Fatal(err)
	}
	msg, err := readString(ctl)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, namePrefix) {
		t.Errorf("peer replied %q, want a refusal naming %s", msg, namePrefix)
	}
	if err := s.ConnEnded(t); !errors.Is(err, errProtocol) {
		t.Errorf("connection ended with %v, want a protocol error", err)
	}
	if !nameExists(t, reqName(foreign)) || !nameExists(t, rspName(foreign)) {
		t.Error("the peer removed queues it does not own")
	}
}

// TestComputeLimits covers the limits this machine may not have, such as
// CAP_SYS_RESOURCE or a small RLIMIT_MSGQUEUE.
func TestComputeLimits(t *testing.T) {
	const inf = unix.RLIM_INFINITY
	for _, tc := range []struct {
		rlimit     uint64
		msgsizeMax int
		msgMax     int
		privileged bool
		maxSize    int
		why        string
		msgMaxOut  int
	}{
		{inf, 8192, 10, false, 8192, "fs.mqueue.msgsize_max 8 KiB", 10},
		{819200, 8192, 10, false, 8192, "fs.mqueue.msgsize_max 8 KiB", 10},
		{inf, 1 << 20, 10, false, 1 << 20, "fs.mqueue.msgsize_max 1 MiB", 10},
		{inf, 8192, 10, true, 16 << 20, "HARD_MSGSIZEMAX 16 MiB", 65536},
		{819200, 8192, 10, true, 409600 - msgOverhead, "RLIMIT_MSGQUEUE 800 KiB", 65536},
		{100, 8192, 10, false, 0, "RLIMIT_MSGQUEUE 100 bytes", 10},
	} {
		l := computeLimits(tc.rlimit, tc.msgsizeMax, tc.msgMax, tc.privileged)
		if l.maxSize != tc.maxSize || !strings.HasPrefix(l.why, tc.why) || l.msgMax != tc.msgMaxOut {
			t.Errorf("computeLimits(%d, %d, %d, %v) = %d, %q, msgMax %d; want %d, %q..., %d",
				tc.rlimit, tc.msgsizeMax, tc.msgMax, tc.privileged, l.maxSize, l.why, l.msgMax, tc.maxSize, tc.why, tc.msgMaxOut)
		}
	}

	for _, tc := range []struct {
		l              limits
		msgsize, depth int
		want           int
	}{
		{limits{rlimit: inf, msgMax: 65536}, 1 << 20, 16, 16},
		{limits{rlimit: inf, msgMax: 10}, 64, 16, 10},
		{limits{rlimit: inf, msgMax: 10}, 64, 0, 1},
		{limits{rlimit: 819200, msgMax: 65536}, 8192, 100, 409600 / (8192 + msgOverhead)},
		{limits{rlimit: 819200, msgMax: 65536}, 409600 - msgOverhead, 16, 1},
		{limits{rlimit: 1000, msgMax: 65536}, 8192, 16, 1},
	} {
		if got := tc.l.queueDepth(tc.msgsize, tc.depth); got != tc.want {
			t.Errorf("queueDepth(%d, %d) with %+v = %d, want %d", tc.msgsize, tc.depth, tc.l, got, tc.want)
		}
	}
}
