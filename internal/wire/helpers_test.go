package wire_test

import (
	"bytes"
	"net"
	"os"
	"testing"
	"time"

	"github.com/machq/machq/internal/wire"
	"golang.org/x/sys/unix"
)

// chunk is what one ReadMsgUnix call of fakeConn returns.
type chunk struct {
	data  []byte
	oob   []byte
	flags int
	err   error
}

// fakeConn is a wire.MsgReader that replays chunks. A chunk larger than the
// caller's buffer is returned in parts, its control data, flags and error
// with the first part, as the kernel does for a stream socket. After the
// last chunk it reports the end of the stream as a zero-byte read with no
// error, as recvmsg(2) does. (*net.UnixConn reports it as a *net.OpError
// wrapping io.EOF instead; see TestSocketCleanEOF.)
type fakeConn struct {
	t      testing.TB
	chunks []chunk
	calls  int
	// maxCalls, when non-zero, fails the test once ReadMsgUnix has been
	// called more often: a guard against a Reader that never returns.
	maxCalls int
	// delivered is the control data of every chunk returned so far.
	delivered [][]byte
}

func (c *fakeConn) ReadMsgUnix(b, oob []byte) (n, oobn, flags int, addr *net.UnixAddr, err error) {
	c.calls++
	if c.maxCalls > 0 && c.calls > c.maxCalls {
		c.t.Fatalf("ReadMsgUnix called %d times, more than the %d a terminating Reader needs", c.calls, c.maxCalls)
	}
	if len(c.chunks) == 0 {
		return 0, 0, 0, nil, nil
	}
	ch := &c.chunks[0]
	n = copy(b, ch.data)
	flags = ch.flags
	delivered := ch.oob
	if len(ch.oob) > len(oob) {
		// As the kernel does: install the descriptors that fit, keep the
		// rest from the receiver, drop anything else, and say so.
		delivered = nil
		if fds := rightsIn(ch.oob); len(fds) > 0 {
			if fit := (len(oob) - unix.CmsgSpace(0)) / 4; fit > 0 {
				delivered = unix.UnixRights(fds[:min(fit, len(fds))]...)
			}
		}
		flags |= unix.MSG_CTRUNC
	}
	oobn = copy(oob, delivered)
	if oobn > 0 {
		c.delivered = append(c.delivered, delivered)
	}
	err = ch.err
	ch.data = ch.data[n:]
	ch.oob, ch.flags, ch.err = nil, 0, nil
	if len(ch.data) == 0 {
		c.chunks = c.chunks[1:]
	}
	return n, oobn, flags, nil, err
}

// splitEvery cuts stream into chunks of n bytes; the last may be shorter.
func splitEvery(stream []byte, n int) []chunk {
	var cs []chunk
	for len(stream) > 0 {
		k := min(n, len(stream))
		cs = append(cs, chunk{data: stream[:k:k]})
		stream = stream[k:]
	}
	return cs
}

// splitSizes cuts stream into chunks whose sizes are taken from sizes in
// turn, starting over when sizes runs out. Sizes below 1 count as 1.
func splitSizes(stream []byte, sizes []int) []chunk {
	if len(sizes) == 0 {
		return splitEvery(stream, max(len(stream), 1))
	}
	var cs []chunk
	for i := 0; len(stream) > 0; i++ {
		k := min(max(sizes[i%len(sizes)], 1), len(stream))
		cs = append(cs, chunk{data: stream[:k:k]})
		stream = stream[k:]
	}
	return cs
}

// sendmsg is one write by a peer: whole frames and the descriptors attached
// to their first byte.
type sendmsg struct {
	data []byte
	fds  []int
}

// deliver turns a peer's writes into the chunks a receiver could see, as
// Linux delivers a stream socket: the byte stream is cut every n bytes, a
// write's descriptors arrive with the chunk that holds its first byte, and
// a chunk that brought descriptors ends, at the latest, where the write
// that sent them ends. A chunk may begin with the tail of an earlier write.
func deliver(t testing.TB, writes []sendmsg, n int) []chunk {
	t.Helper()
	var cs []chunk
	var cur chunk
	flush := func() {
		if len(cur.data) > 0 {
			cs = append(cs, cur)
		}
		cur = chunk{}
	}
	for _, w := range writes {
		if len(w.data) == 0 {
			t.Fatalf("deliver: empty write")
		}
		data := w.data
		fdsInCur := len(w.fds) > 0
		if fdsInCur {
			cur.oob = unix.UnixRights(w.fds...)
		}
		for len(data) > 0 {
			k := min(n-len(cur.data), len(data))
			cur.data = append(cur.data, data[:k]...)
			data = data[k:]
			if len(cur.data) == n {
				flush()
				fdsInCur = false
			}
		}
		if fdsInCur {
			flush()
		}
	}
	flush()
	return cs
}

// readAll reads frames until ReadFrame fails and returns them, with their
// bodies copied, and the error. It fails the test if the reader returns more
// than limit frames.
func readAll(t testing.TB, rd *wire.Reader, limit int) ([]wire.Frame, error) {
	t.Helper()
	var frames []wire.Frame
	for {
		f, err := rd.ReadFrame()
		if err != nil {
			return frames, err
		}
		if len(frames) == limit {
			t.Fatalf("reader returned more than %d frames", limit)
		}
		checkFrameShape(t, f)
		f.Body = bytes.Clone(f.Body)
		frames = append(frames, f)
	}
}

// checkFrameShape checks the invariants every frame ReadFrame returns must
// hold, whatever the bytes.
func checkFrameShape(t testing.TB, f wire.Frame) {
	t.Helper()
	if f.Length < wire.HeaderSize || f.Length > wire.MaxFrameSize {
		t.Fatalf("frame length %d outside [%d, %d]", f.Length, wire.HeaderSize, wire.MaxFrameSize)
	}
	if len(f.Body) != int(f.Length)-wire.HeaderSize {
		t.Fatalf("frame body is %d bytes, header says %d", len(f.Body), int(f.Length)-wire.HeaderSize)
	}
	if len(f.FDs) != int(f.NFDs) {
		t.Fatalf("frame carries %d descriptors, header declares %d", len(f.FDs), f.NFDs)
	}
}

// splitFrames cuts a stream of well-formed frames into the frames.
func splitFrames(t testing.TB, stream []byte) []wire.Frame {
	t.Helper()
	var frames []wire.Frame
	for len(stream) > 0 {
		h, err := wire.ParseHeader(stream)
		if err != nil {
			t.Fatalf("splitFrames: %v", err)
		}
		frames = append(frames, wire.Frame{Header: h, Body: stream[wire.HeaderSize:h.Length]})
		stream = stream[h.Length:]
	}
	return frames
}

// sameFrames fails the test unless got and want hold the same headers and
// bodies. Descriptors are compared by count only; tests that pass real
// descriptors check them separately.
func sameFrames(t testing.TB, got, want []wire.Frame) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Header != want[i].Header {
			t.Fatalf("frame %d: header %+v, want %+v", i, got[i].Header, want[i].Header)
		}
		if !bytes.Equal(got[i].Body, want[i].Body) {
			t.Fatalf("frame %d (%s): body differs (%d bytes, want %d)", i, want[i].Op, len(got[i].Body), len(want[i].Body))
		}
		if len(got[i].FDs) != len(want[i].FDs) {
			t.Fatalf("frame %d: %d descriptors, want %d", i, len(got[i].FDs), len(want[i].FDs))
		}
	}
}

// sampleFrames returns one encoded frame of every operation that carries
// no descriptor, with varied ids, flags and body sizes.
func sampleFrames() [][]byte {
	digest := bytes.Repeat([]byte{0xd1}, 32)
	return [][]byte{
		wire.AppendHello(nil, 0, wire.Hello{MinVersion: 1, MaxVersion: 3}),
		wire.AppendWelcome(nil, 0, wire.Welcome{Version: 1, MaxInline: wire.MaxInline, MaxFrame: wire.MaxFrameSize, MaxMessage: 1 << 40, ServerPID: 4242}),
		wire.AppendStore(nil, 1, wire.Store{Size: 5, DigestAlg: wire.DigestSHA256, Digest: digest, Queue: []byte("jobs")}, []byte("hello"), false),
		wire.AppendStore(nil, 2, wire.Store{}, nil, false),
		wire.AppendStored(nil, 1, 77),
		wire.AppendRetrieve(nil, 3, wire.Retrieve{WaitMillis: wire.WaitForever, Queue: []byte("jobs")}),
		wire.AppendRetrieve(nil, 4, wire.Retrieve{}),
		wire.AppendMessage(nil, 3, wire.Message{Seq: 77, Size: 5, DigestAlg: wire.DigestSHA256, Digest: digest}, []byte("hello"), false),
		wire.AppendCancel(nil, 5, 3),
		wire.AppendStat(nil, 6),
		wire.AppendStats(nil, 6, []byte(`{"queues":1,"messages":0}`)),
		wire.AppendError(nil, 4, wire.CodeEmpty, "queue is empty"),
		wire.AppendError(nil, 1<<63, wire.CodeInternal, ""),
	}
}

// sampleStream is sampleFrames concatenated.
func sampleStream() []byte {
	return bytes.Join(sampleFrames(), nil)
}

// socketPair returns the two ends of a connected AF_UNIX stream socket pair.
// Both are closed when the test ends.
func socketPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatalf("FileConn: %v", err)
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			t.Fatalf("FileConn returned %T, want *net.UnixConn", c)
		}
		t.Cleanup(func() { uc.Close() })
		setDeadline(t, uc)
		return uc
	}
	return conn(fds[0]), conn(fds[1])
}

// setDeadline makes c's reads and writes fail, rather than hang, if a test
// goes wrong.
func setDeadline(t testing.TB, c *net.UnixConn) {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatalf("set deadline: %v", err)
	}
}

// memfdWith returns a memfd holding content. It is closed when the test
// ends.
func memfdWith(t testing.TB, content []byte) int {
	t.Helper()
	fd, err := unix.MemfdCreate("wire-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.Pwrite(fd, content, 0); err != nil {
		t.Fatalf("pwrite: %v", err)
	}
	return fd
}

// dupFD returns a duplicate of fd that the test hands to a Reader, which
// takes ownership of it.
func dupFD(t testing.TB, fd int) int {
	t.Helper()
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("dup: %v", err)
	}
	return d
}

// contentOf returns the whole content of the file open as fd.
func contentOf(t testing.TB, fd int) []byte {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatalf("fstat %d: %v", fd, err)
	}
	b := make([]byte, st.Size)
	n, err := unix.Pread(fd, b, 0)
	if err != nil {
		t.Fatalf("pread %d: %v", fd, err)
	}
	return b[:n]
}

// isOpen reports whether fd is an open descriptor.
func isOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// openFDs counts this process's open descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("list open descriptors: %v", err)
	}
	return len(ents)
}
