package wire_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/machq/machq/internal/wire"
	"golang.org/x/sys/unix"
)

// These tests pass real descriptors over real sockets. They do not run in
// parallel: some count the process's open descriptors.

// listenerPair returns a client and a server connection made with
// net.DialUnix to a listener in a temporary directory.
func listenerPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	addr := &net.UnixAddr{Name: filepath.Join(t.TempDir(), "wire.sock"), Net: "unix"}
	ln, err := net.ListenUnix("unix", addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	type accepted struct {
		c   *net.UnixConn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.AcceptUnix()
		ch <- accepted{c, err}
	}()
	client, err := net.DialUnix("unix", nil, addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	a := <-ch
	if a.err != nil {
		t.Fatalf("accept: %v", a.err)
	}
	t.Cleanup(func() { a.c.Close() })
	setDeadline(t, client)
	setDeadline(t, a.c)
	return client, a.c
}

// connPairs are the two ways the tests connect a writer to a reader.
var connPairs = []struct {
	name string
	pair func(testing.TB) (*net.UnixConn, *net.UnixConn)
}{
	{"socketpair", socketPair},
	{"listener", listenerPair},
}

// newSocketReader returns a Reader on c, which has a deadline.
func newSocketReader(t testing.TB, c *net.UnixConn) *wire.Reader {
	t.Helper()
	rd := wire.NewReader(c)
	t.Cleanup(rd.Close)
	return rd
}

func mustWrite(t testing.TB, c *net.UnixConn, b []byte, fds ...int) {
	t.Helper()
	if err := wire.Write(c, b, fds); err != nil {
		t.Fatalf("wire.Write: %v", err)
	}
}

func mustRead(t testing.TB, rd *wire.Reader) wire.Frame {
	t.Helper()
	f, err := rd.ReadFrame()
	if err != nil {
		t.Fatalf("ReadFrame: %v", err)
	}
	checkFrameShape(t, f)
	return f
}

func TestSocketFrameWithMemfd(t *testing.T) {
	for _, cp := range connPairs {
		t.Run(cp.name, func(t *testing.T) {
			w, r := cp.pair(t)
			content := []byte("the payload travels out of line")
			memfd := memfdWith(t, content)
			frame := wire.AppendStore(nil, 7, wire.Store{Size: uint64(len(content)), Queue: []byte("q")}, nil, true)
			mustWrite(t, w, frame, memfd)

			rd := newSocketReader(t, r)
			f := mustRead(t, rd)
			if f.Op != wire.OpStore || f.ID != 7 || len(f.FDs) != 1 {
				t.Fatalf("got %s id %d with %d descriptors, want STORE id 7 with 1", f.Op, f.ID, len(f.FDs))
			}
			defer wire.CloseFDs(f.FDs)
			if f.FDs[0] == memfd {
				t.Fatalf("received descriptor has the sender's number %d; it was not passed", memfd)
			}
			if flags, err := unix.FcntlInt(uintptr(f.FDs[0]), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
				t.Fatalf("received descriptor flags %#x, %v; want close-on-exec", flags, err)
			}
			if got := contentOf(t, f.FDs[0]); string(got) != string(content) {
				t.Fatalf("received memfd holds %q, want %q", got, content)
			}
			s, _, err := wire.ParseStore(f.Header, f.Body)
			if err != nil || s.Size != uint64(len(content)) {
				t.Fatalf("ParseStore = %+v, %v", s, err)
			}
		})
	}
}

func TestSocketFrameWithPipe(t *testing.T) {
	w, r := socketPair(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	mustWrite(t, w, fdFrame(1), int(pr.Fd()))

	rd := newSocketReader(t, r)
	f := mustRead(t, rd)
	if len(f.FDs) != 1 {
		t.Fatalf("frame carries %d descriptors, want 1", len(f.FDs))
	}
	got := os.NewFile(uintptr(f.FDs[0]), "received pipe")
	defer got.Close()
	if _, err := pw.Write([]byte("through the pipe")); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	b, err := io.ReadAll(got)
	if err != nil || string(b) != "through the pipe" {
		t.Fatalf("read %q, %v from the received pipe end", b, err)
	}
}

// TestSocketBatchedFDs sends many frames that each carry a descriptor, mixed
// with frames that carry none, with one WriteFrames, and checks every frame
// gets its own descriptor.
func TestSocketBatchedFDs(t *testing.T) {
	for _, n := range []int{2, 17, wire.MaxFDsPerWrite, wire.MaxFDsPerWrite + 10} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			w, r := socketPair(t)
			var buf []byte
			var fds, fdAt []int
			for i := range n {
				if i%3 == 1 {
					buf = wire.AppendStat(buf, uint64(1000+i))
				}
				page := fmt.Sprintf("page %d", i)
				fds = append(fds, memfdWith(t, []byte(page)))
				fdAt = append(fdAt, len(buf))
				buf = wire.AppendMessage(buf, uint64(i), wire.Message{Seq: uint64(i), Size: uint64(len(page))}, nil, true)
			}
			buf = wire.AppendStat(buf, 9999)
			if err := wire.WriteFrames(w, buf, fds, fdAt); err != nil {
				t.Fatalf("WriteFrames: %v", err)
			}
			w.Close()

			rd := newSocketReader(t, r)
			seen := 0
			for {
				f, err := rd.ReadFrame()
				if err != nil {
					if !errors.Is(err, io.EOF) {
						t.Fatalf("after %d descriptors: %v", seen, err)
					}
					break
				}
				checkFrameShape(t, f)
				if f.Op != wire.OpMessage {
					continue
				}
				if f.ID != uint64(seen) {
					t.Fatalf("MESSAGE %d arrived where %d was expected", f.ID, seen)
				}
				want := fmt.Sprintf("page %d", f.ID)
				if got := contentOf(t, f.FDs[0]); string(got) != want {
					t.Fatalf("MESSAGE %d carries a descriptor holding %q, want %q", f.ID, got, want)
				}
				wire.CloseFDs(f.FDs)
				seen++
			}
			if seen != n {
				t.Fatalf("got %d MESSAGE frames, want %d", seen, n)
			}
		})
	}
}

// TestSocketMixedLargeBatch writes, with one WriteFrames from another
// goroutine, a batch of inline frames of many sizes (some larger than the
// Reader's buffer and the kernel's socket buffers) interleaved with frames
// carrying descriptors, so that reads end at every kind of place: inside
// frames, on frame boundaries, next to descriptor-carrying frames.
func TestSocketMixedLargeBatch(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			w, r := socketPair(t)
			var buf []byte
			var fds, fdAt []int
			for i := range uint64(60) {
				switch rng.IntN(3) {
				case 0:
					page := fmt.Sprintf("page %d", i)
					fds = append(fds, memfdWith(t, []byte(page)))
					fdAt = append(fdAt, len(buf))
					buf = wire.AppendMessage(buf, i, wire.Message{Seq: i, Size: uint64(len(page))}, nil, true)
				case 1:
					sizes := []int{0, 1, 100, 36 << 10, 64<<10 - 40, 64 << 10, 100 << 10, wire.MaxInline}
					payload := bytes.Repeat([]byte{byte(i)}, sizes[rng.IntN(len(sizes))])
					buf = wire.AppendMessage(buf, i, wire.Message{Seq: i, Size: uint64(len(payload))}, payload, false)
				default:
					buf = wire.AppendStats(buf, i, bytes.Repeat([]byte{'s'}, rng.IntN(70000)))
				}
			}
			want := splitFrames(t, buf)
			for i := range want {
				want[i].FDs = make([]int, want[i].NFDs)
			}
			done := make(chan error, 1)
			go func() {
				err := wire.WriteFrames(w, buf, fds, fdAt)
				w.Close()
				done <- err
			}()

			rd := newSocketReader(t, r)
			got, err := readAll(t, rd, len(want))
			if !errors.Is(err, io.EOF) {
				t.Fatalf("after %d frames: %v", len(got), err)
			}
			if werr := <-done; werr != nil {
				t.Fatalf("WriteFrames: %v", werr)
			}
			sameFrames(t, got, want)
			for _, f := range got {
				if f.NFDs == 0 {
					continue
				}
				if page := contentOf(t, f.FDs[0]); string(page) != fmt.Sprintf("page %d", f.ID) {
					t.Fatalf("frame %d carries the descriptor holding %q", f.ID, page)
				}
				wire.CloseFDs(f.FDs)
			}
		})
	}
}

// TestSocketBatchBreakingSendRule attaches the descriptors of two frames to
// one sendmsg, which the protocol forbids: the first frame declares one
// descriptor but two arrive with it. The Reader must refuse, and close both.
func TestSocketBatchBreakingSendRule(t *testing.T) {
	w, r := socketPair(t)
	memfd := memfdWith(t, []byte("x"))
	rd := newSocketReader(t, r)
	before := openFDs(t)
	mustWrite(t, w, cat(fdFrame(1), fdFrame(2)), memfd, memfd)
	_, err := rd.ReadFrame()
	if !errors.Is(err, wire.ErrStrayFDs) {
		t.Fatalf("got %v, want ErrStrayFDs", err)
	}
	if got := openFDs(t); got != before {
		t.Fatalf("%d descriptors open after the refusal, want %d as before", got, before)
	}
}

// TestSocketFDsInSeparateWrites sends frames with descriptors one write at a
// time, with nothing read in between, so several writes' bytes may arrive
// in one read.
func TestSocketFDsInSeparateWrites(t *testing.T) {
	w, r := socketPair(t)
	const n = 50
	for i := range n {
		mustWrite(t, w, wire.AppendStat(nil, uint64(100+i)))
		mustWrite(t, w, fdFrame(uint64(i)), memfdWith(t, []byte{byte(i)}))
	}
	rd := newSocketReader(t, r)
	for i := range n {
		if f := mustRead(t, rd); f.Op != wire.OpStat || f.ID != uint64(100+i) {
			t.Fatalf("got %s %d, want STAT %d", f.Op, f.ID, 100+i)
		}
		f := mustRead(t, rd)
		if f.ID != uint64(i) || len(f.FDs) != 1 {
			t.Fatalf("got %s %d with %d descriptors, want MESSAGE %d with 1", f.Op, f.ID, len(f.FDs), i)
		}
		if got := contentOf(t, f.FDs[0]); len(got) != 1 || got[0] != byte(i) {
			t.Fatalf("MESSAGE %d got the descriptor holding %v", i, got)
		}
		wire.CloseFDs(f.FDs)
	}
}

func TestSocketStrayFDsClosed(t *testing.T) {
	for _, n := range []int{1, 3, wire.MaxFDsPerWrite} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			w, r := socketPair(t)
			memfd := memfdWith(t, []byte("stray"))
			rd := newSocketReader(t, r)
			before := openFDs(t)

			fds := make([]int, n)
			for i := range fds {
				fds[i] = memfd
			}
			// A STAT declares no descriptor, but n travel with it.
			mustWrite(t, w, wire.AppendStat(nil, 1), fds...)
			if n > wire.MaxFDsPerFrame {
				// More than a frame may carry: the kernel installs only
				// what fits the reader's control buffer, drops the rest,
				// and reports the truncation, which is fatal at once.
				if _, err := rd.ReadFrame(); !errors.Is(err, wire.ErrTruncatedControl) {
					t.Fatalf("got %v, want ErrTruncatedControl", err)
				}
				if got := openFDs(t); got != before {
					t.Fatalf("%d descriptors open after %d were sent with one STAT, want %d as before", got, n, before)
				}
				return
			}
			f, err := rd.ReadFrame()
			if err != nil || f.Op != wire.OpStat || len(f.FDs) != 0 {
				t.Fatalf("first frame %+v, %v; want a STAT without descriptors", f.Header, err)
			}
			if got := openFDs(t); got != before+n {
				t.Fatalf("%d descriptors open after receiving %d, want %d", got, n, before+n)
			}
			_, err = rd.ReadFrame()
			if !errors.Is(err, wire.ErrStrayFDs) {
				t.Fatalf("got %v, want ErrStrayFDs", err)
			}
			if got := openFDs(t); got != before {
				t.Fatalf("%d descriptors open after the stray ones were rejected, want %d as before", got, before)
			}
		})
	}
}

func TestSocketMissingFDs(t *testing.T) {
	w, r := socketPair(t)
	rd := newSocketReader(t, r)
	before := openFDs(t)
	// The frame declares a descriptor but is written without one.
	mustWrite(t, w, wire.AppendStore(nil, 1, wire.Store{Size: 4096, Queue: []byte("q")}, nil, true))
	_, err := rd.ReadFrame()
	if !errors.Is(err, wire.ErrMissingFDs) {
		t.Fatalf("got %v, want ErrMissingFDs", err)
	}
	if got := openFDs(t); got != before {
		t.Fatalf("%d descriptors open, want %d", got, before)
	}
}

// TestSocketLargeFrames sends frames up to MaxFrameSize, more than the socket
// buffer holds, from another goroutine.
func TestSocketLargeFrames(t *testing.T) {
	w, r := socketPair(t)
	memfd := memfdWith(t, []byte("after the big ones"))
	big := []int{64<<10 + 1, 300 << 10, wire.MaxFrameSize}
	done := make(chan error, 1)
	go func() {
		for i, size := range big {
			doc := make([]byte, size-wire.HeaderSize)
			for j := range doc {
				doc[j] = byte(i + j)
			}
			if err := wire.Write(w, wire.AppendStats(nil, uint64(i), doc), nil); err != nil {
				done <- err
				return
			}
		}
		done <- wire.Write(w, fdFrame(99), []int{memfd})
	}()

	rd := newSocketReader(t, r)
	for i, size := range big {
		f := mustRead(t, rd)
		if f.ID != uint64(i) || int(f.Length) != size {
			t.Fatalf("got frame %d of %d bytes, want %d of %d", f.ID, f.Length, i, size)
		}
		for j, c := range f.Body {
			if c != byte(i+j) {
				t.Fatalf("frame %d: byte %d is %#x, want %#x", i, j, c, byte(i+j))
			}
		}
	}
	f := mustRead(t, rd)
	if f.ID != 99 || len(f.FDs) != 1 || string(contentOf(t, f.FDs[0])) != "after the big ones" {
		t.Fatalf("last frame %+v does not carry the memfd", f.Header)
	}
	wire.CloseFDs(f.FDs)
	if err := <-done; err != nil {
		t.Fatalf("writer: %v", err)
	}
}

// TestSocketCleanEOF closes the writer on a frame boundary. Over a real
// socket ReadFrame returns the connection's own error, a *net.OpError
// wrapping io.EOF, so only errors.Is is checked. A close inside a frame
// gives that same error rather than io.ErrUnexpectedEOF (fill passes
// ReadMsgUnix's io.EOF through), so that case is tested with fakeConn only.
func TestSocketCleanEOF(t *testing.T) {
	w, r := socketPair(t)
	mustWrite(t, w, sampleStream())
	w.Close()
	rd := newSocketReader(t, r)
	got, err := readAll(t, rd, 100)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("got %v, want io.EOF", err)
	}
	sameFrames(t, got, splitFrames(t, sampleStream()))
}

// TestWriteRejectsTooManyFDs checks the limit on a real socket: nothing may
// be sent.
func TestWriteRejectsTooManyFDs(t *testing.T) {
	w, r := socketPair(t)
	memfd := memfdWith(t, nil)
	fds := make([]int, wire.MaxFDsPerWrite+1)
	for i := range fds {
		fds[i] = memfd
	}
	if err := wire.Write(w, wire.AppendStat(nil, 1), fds); err == nil {
		t.Fatalf("Write with %d descriptors succeeded", len(fds))
	}
	mustWrite(t, w, wire.AppendStat(nil, 2))
	w.Close()
	rd := newSocketReader(t, r)
	got, err := readAll(t, rd, 1)
	if !errors.Is(err, io.EOF) || len(got) != 1 || got[0].ID != 2 {
		t.Fatalf("got %d frames and %v; want only STAT 2, then io.EOF", len(got), err)
	}
}
