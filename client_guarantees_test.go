package machq_test

// Tests for guarantees that no other test would notice breaking:
//
//   - the client's own digest FIFO for the private queue;
//   - SendPage hands over the sender's very memfd, and the server hands
//     the very descriptor it stored back;
//   - SendFile copies a regular file inside the kernel;
//   - Send fills its page with pwrite(2), without mapping it.
//
// The memory and syscall observations use per-process counters the kernel
// keeps (/proc/self/io, /proc/self/status after a reset through
// /proc/self/clear_refs). Each test first checks that those counters
// really move when the forbidden thing is done by hand, and skips when
// they do not, so that none of them can pass because a counter is dead.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/internal/wiretest"
)

// guarCtx returns a context that bounds one test.
func guarCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// guarServer runs a real server in-process and returns its socket path.
func guarServer(t *testing.T) string { return inProcessServer(t) }

func guarDial(t *testing.T, path string, opts ...machq.Option) *machq.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := machq.Dial(ctx, path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func guarRandom(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1}).Read(b)
	return b
}

// ---------------------------------------------------------------------
// 1. The private queue's digest FIFO.

// guarFakeMsg is a message held by the fake server.
type guarFakeMsg struct {
	seq    uint64
	alg    uint8
	digest []byte
	data   []byte // the payload, when the fake knows it (inline or forged)
	fd     int    // the memfd the client stored, or -1
	asPage bool   // forged: send data as a new sealed memfd
}

// guarForge returns a message that is consistent in itself (its digest is
// the SHA-256 of its payload) but is not what the client stored.
func guarForge(seq uint64, data []byte, asPage bool) *guarFakeMsg {
	sum := sha256.Sum256(data)
	return &guarFakeMsg{seq: seq, alg: wire.DigestSHA256, digest: sum[:], data: data, fd: -1, asPage: asPage}
}

// guarAnswer decides what the fake sends for the k-th RETRIEVE of the
// private queue (k from 1), given what it holds in FIFO order: the
// message to send (nil: EMPTY) and what it holds afterwards.
type guarAnswer func(k int, fifo []*guarFakeMsg) (*guarFakeMsg, []*guarFakeMsg)

// guarHonest answers as the real server does: the oldest message.
func guarHonest(k int, fifo []*guarFakeMsg) (*guarFakeMsg, []*guarFakeMsg) {
	if len(fifo) == 0 {
		return nil, nil
	}
	return fifo[0], fifo[1:]
}

// guarFakeServer plays a server that speaks the protocol the way the real
// one does for the private queue (HELLO, STORE, RETRIEVE) but answers each
// RETRIEVE as answer decides. It returns the socket path.
func guarFakeServer(t *testing.T, answer guarAnswer) string {
	t.Helper()
	return fakeServer(t, func(uc *net.UnixConn, rd *wire.Reader) {
		var fifo []*guarFakeMsg
		defer func() {
			for _, m := range fifo {
				if m.fd >= 0 {
					unix.Close(m.fd)
				}
			}
		}()
		var seq uint64
		k := 0
		for {
			f, err := rd.ReadFrame()
			if err != nil {
				return // the client went away
			}
			var reply []byte
			var fds []int
			switch f.Op {
			case wire.OpStore:
				st, inline, err := wire.ParseStore(f.Header, f.Body)
				if err != nil || len(st.Queue) != 0 || len(f.FDs) > 1 {
					wire.CloseFDs(f.FDs)
					t.Errorf("fake server: unexpected STORE (%v, queue %q, %d fds)", err, st.Queue, len(f.FDs))
					return
				}
				seq++
				m := &guarFakeMsg{seq: seq, alg: st.DigestAlg, digest: bytes.Clone(st.Digest), data: bytes.Clone(inline), fd: -1}
				if len(f.FDs) == 1 {
					m.fd, m.data = f.FDs[0], nil
				}
				fifo = append(fifo, m)
				reply = wire.AppendStored(nil, f.ID, seq)
			case wire.OpRetrieve:
				r, err := wire.ParseRetrieve(f.Body)
				if err != nil || len(r.Queue) != 0 {
					t.Errorf("fake server: unexpected RETRIEVE (%v, queue %q)", err, r.Queue)
					return
				}
				k++
				var m *guarFakeMsg
				m, fifo = answer(k, fifo)
				if m == nil {
					reply = wire.AppendError(nil, f.ID, wire.CodeEmpty, "queue (private) is empty")
					break
				}
				wm := wire.Message{Seq: m.seq, Size: uint64(len(m.data)), DigestAlg: m.alg, Digest: m.digest}
				fd := m.fd
				if fd < 0 && m.asPage {
					if fd, err = guarSealedPage(m.data); err != nil {
						t.Errorf("fake server: %v", err)
						return
					}
				}
				if fd >= 0 {
					size, err := page.Size(fd)
					if err != nil {
						t.Errorf("fake server: %v", err)
						return
					}
					wm.Size = uint64(size)
					fds = []int{fd} // closed below, once sent
				}
				reply = wire.AppendMessage(nil, f.ID, wm, m.data, fd >= 0)
			case wire.OpCancel:
				continue
			default:
				t.Errorf("fake server: unexpected %s", f.Op)
				wire.CloseFDs(f.FDs)
				return
			}
			err = wire.Write(uc, reply, fds)
			wire.CloseFDs(fds)
			if err != nil {
				return
			}
		}
	})
}

// guarSealedPage returns a new memfd holding data, sealed as a page must be.
func guarSealedPage(data []byte) (int, error) {
	fd, err := page.Create("guar-forged")
	if err != nil {
		return -1, err
	}
	if err := page.Write(fd, data); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := page.Seal(fd); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// guarSelfConsistent fails the test unless m's payload matches the digest
// m carries: the sender's digest alone cannot tell the message is forged.
func guarSelfConsistent(t *testing.T, m *machq.Message) {
	t.Helper()
	alg, digest := m.Digest()
	if alg != machq.DigestSHA256 {
		t.Fatalf("forged message carries digest %s, want sha256", alg)
	}
	if sum := sha256.Sum256(m.Bytes()); !bytes.Equal(sum[:], digest) {
		t.Fatal("the forged message's own digest does not match its payload; the test would not isolate the client's digest FIFO")
	}
}

// guarWantForged checks that err reports message seq of the private queue
// as tampered, and that m is the forged message, returned for inspection.
func guarWantForged(t *testing.T, m *machq.Message, err error, seq uint64, forged []byte) {
	t.Helper()
	if !errors.Is(err, machq.ErrTampered) {
		t.Fatalf("a private message that differs from what this client stored was accepted: %v; want ErrTampered", err)
	}
	var te *machq.TamperedError
	if !errors.As(err, &te) || te.Seq != seq || te.Queue != "" {
		t.Fatalf("error %v; want a TamperedError for message %d of the private queue", err, seq)
	}
	if m == nil {
		t.Fatal("the tampered message was not returned for inspection")
	}
	if !bytes.Equal(m.Bytes(), forged) {
		t.Fatal("the message returned is not the one the server sent")
	}
	guarSelfConsistent(t, m)
}

func TestGuaranteePrivateDigestFIFO(t *testing.T) {
	small := [][]byte{[]byte("first"), []byte("second"), []byte("third")}
	big := guarRandom(1, 100<<10) // over the inline threshold: a page

	// store stores small[0], big, small[2] in the private queue.
	store := func(t *testing.T, c *machq.Client) {
		t.Helper()
		for _, p := range [][]byte{small[0], big, small[2]} {
			if _, err := c.Send(guarCtx(t), "", p); err != nil {
				t.Fatal(err)
			}
		}
	}
	retrieve := func(t *testing.T, c *machq.Client, want []byte) {
		t.Helper()
		m, err := c.Retrieve(guarCtx(t), "")
		if err != nil {
			t.Fatalf("Retrieve: %v", err)
		}
		defer m.Close()
		if !bytes.Equal(m.Bytes(), want) {
			t.Fatal("wrong payload")
		}
	}

	t.Run("honest fake server", func(t *testing.T) {
		// The control: the fake speaks the protocol well enough that the
		// client accepts what it stored, inline and as a page.
		c := guarDial(t, guarFakeServer(t, guarHonest))
		store(t, c)
		retrieve(t, c, small[0])
		m, err := c.Retrieve(guarCtx(t), "")
		if err != nil {
			t.Fatalf("Retrieve: %v", err)
		}
		if !m.OutOfLine() || !bytes.Equal(m.Bytes(), big) {
			t.Fatal("the page came back wrong or inline")
		}
		m.Close()
		retrieve(t, c, small[2])
		if _, err := c.Retrieve(guarCtx(t), ""); !errors.Is(err, machq.ErrEmpty) {
			t.Fatalf("Retrieve of the empty private queue: %v; want ErrEmpty", err)
		}
	})

	t.Run("inline payload replaced", func(t *testing.T) {
		forged := []byte("forged by the server")
		c := guarDial(t, guarFakeServer(t, func(k int, fifo []*guarFakeMsg) (*guarFakeMsg, []*guarFakeMsg) {
			m, rest := guarHonest(k, fifo)
			if k == 3 {
				return guarForge(m.seq, forged, false), rest
			}
			return m, rest
		}))
		store(t, c)
		retrieve(t, c, small[0])
		m, err := c.Retrieve(guarCtx(t), "")
		if err != nil {
			t.Fatal(err)
		}
		m.Close()
		m, err = c.Retrieve(guarCtx(t), "")
		if m != nil {
			defer m.Close()
		}
		guarWantForged(t, m, err, 3, forged)
	})

	t.Run("page replaced", func(t *testing.T) {
		forged := guarRandom(2, len(big))
		c := guarDial(t, guarFakeServer(t, func(k int, fifo []*guarFakeMsg) (*guarFakeMsg, []*guarFakeMsg) {
			m, rest := guarHonest(k, fifo)
			if k == 2 {
				unix.Close(m.fd)
				return guarForge(m.seq, forged, true), rest
			}
			return m, rest
		}))
		store(t, c)
		retrieve(t, c, small[0])
		m, err := c.Retrieve(guarCtx(t), "")
		if m != nil {
			defer m.Close()
			if !m.OutOfLine() {
				t.Fatal("the forged page arrived inline")
			}
		}
		guarWantForged(t, m, err, 2, forged)
		// The FIFO stays in step: the next message is verified against
		// the next digest recorded, and passes.
		retrieve(t, c, small[2])
	})

	t.Run("batch", func(t *testing.T) {
		forged := []byte("forged in a batch")
		c := guarDial(t, guarFakeServer(t, func(k int, fifo []*guarFakeMsg) (*guarFakeMsg, []*guarFakeMsg) {
			m, rest := guarHonest(k, fifo)
			if k == 1 {
				return guarForge(m.seq, forged, false), rest
			}
			return m, rest
		}))
		store(t, c)
		msgs, err := c.RetrieveBatch(guarCtx(t), "", 3)
		for _, m := range msgs {
			defer m.Close()
		}
		if len(msgs) != 3 {
			t.Fatalf("RetrieveBatch returned %d messages (%v); want 3", len(msgs), err)
		}
		guarWantForged(t, msgs[0], err, 1, forged)
		if !bytes.Equal(msgs[1].Bytes(), big) || !bytes.Equal(msgs[2].Bytes(), small[2]) {
			t.Fatal("the untouched messages of the batch came back wrong")
		}
	})

	t.Run("order swapped", func(t *testing.T) {
		// The server hands back the second message first, with its own
		// sequence number and correct digest.
		c := guarDial(t, guarFakeServer(t, func(k int, fifo []*guarFakeMsg) (*guarFakeMsg, []*guarFakeMsg) {
			if k == 1 && len(fifo) >= 2 {
				return fifo[1], append([]*guarFakeMsg{fifo[0]}, fifo[2:]...)
			}
			return guarHonest(k, fifo)
		}))
		for _, p := range small[:2] {
			if _, err := c.Send(guarCtx(t), "", p); err != nil {
				t.Fatal(err)
			}
		}
		m, err := c.Retrieve(guarCtx(t), "")
		if m != nil {
			defer m.Close()
		}
		if !errors.Is(err, machq.ErrTampered) {
			t.Fatalf("a private message handed back out of order was accepted: %v; want ErrTampered", err)
		}
	})

	t.Run("never stored", func(t *testing.T) {
		forged := []byte("nobody stored this")
		c := guarDial(t, guarFakeServer(t, func(k int, fifo []*guarFakeMsg) (*guarFakeMsg, []*guarFakeMsg) {
			return guarForge(1, forged, false), fifo
		}))
		m, err := c.Retrieve(guarCtx(t), "")
		if m != nil {
			defer m.Close()
		}
		guarWantForged(t, m, err, 1, forged)
	})
}

// TestGuaranteePrivateDigestFIFORealServer is the positive case: against
// the real server every way of storing in the private queue records a
// digest that the retrieve then matches, in FIFO order.
func TestGuaranteePrivateDigestFIFORealServer(t *testing.T) {
	for _, d := range []machq.Digest{machq.DigestSHA256, machq.DigestBLAKE3} {
		t.Run(d.String(), func(t *testing.T) {
			c := guarDial(t, guarServer(t), machq.WithDigest(d))
			ctx := guarCtx(t)
			var want [][]byte
			send := func(p []byte) {
				t.Helper()
				if _, err := c.Send(ctx, "", p); err != nil {
					t.Fatal(err)
				}
				want = append(want, p)
			}
			send([]byte("inline"))
			send(guarRandom(3, 200<<10))
			send(nil)

			pg, err := machq.NewPage(300 << 10)
			if err != nil {
				t.Fatal(err)
			}
			copy(pg.Bytes(), guarRandom(4, 300<<10))
			want = append(want, bytes.Clone(pg.Bytes()))
			if _, err := c.SendPage(ctx, "", pg); err != nil {
				t.Fatal(err)
			}

			fileData := guarRandom(5, 150<<10)
			fp := filepath.Join(t.TempDir(), "f")
			if err := os.WriteFile(fp, fileData, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(fp)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, _, err := c.SendFile(ctx, "", f); err != nil {
				t.Fatal(err)
			}
			want = append(want, fileData)

			batch := [][]byte{[]byte("b1"), guarRandom(6, 90<<10), []byte("b3")}
			if err := c.SendBatch(ctx, "", batch); err != nil {
				t.Fatal(err)
			}
			want = append(want, batch...)

			// Half one by one, the rest in a batch, and a store in between.
			half := len(want) / 2
			for i := range half {
				m, err := c.Retrieve(ctx, "")
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				if !bytes.Equal(m.Bytes(), want[i]) {
					t.Fatalf("message %d: wrong payload", i)
				}
				m.Close()
			}
			send([]byte("late"))
			msgs, err := c.RetrieveBatch(ctx, "", len(want)-half)
			for _, m := range msgs {
				defer m.Close()
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != len(want)-half {
				t.Fatalf("RetrieveBatch returned %d messages, want %d", len(msgs), len(want)-half)
			}
			for i, m := range msgs {
				if !bytes.Equal(m.Bytes(), want[half+i]) {
					t.Fatalf("message %d: wrong payload", half+i)
				}
			}
			if _, err := c.Retrieve(ctx, ""); !errors.Is(err, machq.ErrEmpty) {
				t.Fatalf("private queue after all retrieved: %v; want ErrEmpty", err)
			}
		})
	}
}

// ---------------------------------------------------------------------
// 2. SendPage hands over the sender's own memfd.

// guarMapped returns the device ("MM:mm", hex, as /proc/PID/maps spells
// it) and inode of the file whose mapping holds b's first byte, read from
// /proc/self/maps.
func guarMapped(t *testing.T, b []byte) (dev string, ino uint64) {
	t.Helper()
	if len(b) == 0 {
		t.Fatal("no mapping: empty slice")
	}
	addr := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(maps)) {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || addr < start || addr >= end {
			continue
		}
		ino, err := strconv.ParseUint(f[4], 10, 64)
		if err != nil || ino == 0 {
			t.Fatalf("the mapping at %#x is not of a file: %s", addr, line)
		}
		return f[3], ino
	}
	t.Fatalf("no mapping holds %#x", addr)
	return "", 0
}

// guarFstat returns fd's device, spelt as /proc/PID/maps spells it, and
// inode.
func guarFstat(t *testing.T, fd int) (string, uint64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%02x:%02x", unix.Major(st.Dev), unix.Minor(st.Dev)), st.Ino
}

func TestGuaranteeSendPageHandsOverTheSendersMemfd(t *testing.T) {
	path := guarServer(t)
	c := guarDial(t, path)
	ctx := guarCtx(t)
	const size = 1 << 20

	newPage := func(seed uint64) (*machq.Page, []byte, string, uint64) {
		t.Helper()
		p, err := machq.NewPage(size)
		if err != nil {
			t.Fatal(err)
		}
		data := guarRandom(seed, size)
		copy(p.Bytes(), data)
		dev, ino := guarMapped(t, p.Bytes())
		return p, data, dev, ino
	}

	// Through the library: the received Message maps the very file the
	// Page mapped. Memfd inode numbers come from a counter that is not
	// reused within a test run, so an equal inode is the same file.
	for _, q := range []string{"", "guar-page"} {
		p, data, dev, ino := newPage(10)
		if _, err := c.SendPage(ctx, q, p); err != nil {
			t.Fatal(err)
		}
		if p.Bytes() != nil {
			t.Fatal("the page is still mapped after SendPage")
		}
		m, err := c.Retrieve(ctx, q)
		if err != nil {
			t.Fatalf("queue %q: %v", q, err)
		}
		if !m.OutOfLine() || !bytes.Equal(m.Bytes(), data) {
			m.Close()
			t.Fatalf("queue %q: the page came back inline or changed", q)
		}
		gotDev, gotIno := guarMapped(t, m.Bytes())
		m.Close()
		if gotDev != dev || gotIno != ino {
			t.Errorf("queue %q: the page sent was file %s/%d, the message received maps file %s/%d: SendPage or the server copied it", q, dev, ino, gotDev, gotIno)
		}
	}

	// Raw: the descriptor the server passes back is the one stored.
	p, _, dev, ino := newPage(11)
	if _, err := c.SendPage(ctx, "guar-raw", p); err != nil {
		t.Fatal(err)
	}
	rc := wiretest.DialHello(t, path)
	rc.Write(wire.AppendRetrieve(nil, 1, wire.Retrieve{Queue: []byte("guar-raw")}))
	f := rc.Read()
	defer wire.CloseFDs(f.FDs)
	if f.Op != wire.OpMessage || len(f.FDs) != 1 {
		t.Fatalf("raw RETRIEVE: %s with %d descriptors; want MESSAGE with 1", f.Op, len(f.FDs))
	}
	if gotDev, gotIno := guarFstat(t, f.FDs[0]); gotDev != dev || gotIno != ino {
		t.Errorf("the page sent was file %s/%d, the server passed back file %s/%d", dev, ino, gotDev, gotIno)
	}
}

// ---------------------------------------------------------------------
// Counters of this process.

// guarIO returns the count of read system calls this process has made
// (syscr in /proc/self/io): read(2), pread(2), readv(2) and the like, and
// one per copy_file_range(2) or sendfile(2), however many bytes those
// move. recvmsg(2) does not count.
func guarIO(t *testing.T) (syscr int64, ok bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if v, found := strings.CutPrefix(line, "syscr:"); found {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// guarStatus returns a "kB" field of /proc/self/status in bytes.
func guarStatus(t *testing.T, field string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// guarPeak measures how far this process's resident memory rose above
// its level at the start while fn ran: it resets the peak (VmHWM) with
// /proc/self/clear_refs, runs fn, and reads the peak again. The kernel
// records the peak before every munmap, so a mapping made and unmapped
// inside fn counts. ok is false when the peak cannot be reset.
func guarPeak(t *testing.T, fn func()) (rise int64, ok bool) {
	t.Helper()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return 0, false
	}
	before := guarStatus(t, "VmHWM")
	fn()
	return guarStatus(t, "VmHWM") - before, true
}

// guarCheckPeak skips the test unless guarPeak sees size bytes of a memfd
// mapped, touched and unmapped, as a copy through a mapping would do.
func guarCheckPeak(t *testing.T, size int64) {
	t.Helper()
	rise, ok := guarPeak(t, func() {
		fd, err := page.Create("guar-probe")
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := page.Truncate(fd, size); err != nil {
			t.Fatal(err)
		}
		b, err := page.MapWritable(fd, size, false)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		page.Unmap(b)
	})
	if !ok {
		t.Skip("cannot reset the peak RSS: /proc/self/clear_refs is not writable")
	}
	if rise < size*3/4 {
		t.Skipf("peak RSS rose by only %d MiB while %d MiB were mapped and touched: it cannot be measured here", rise>>20, size>>20)
	}
}

func guarHeapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// ---------------------------------------------------------------------
// 3. SendFile copies a regular file inside the kernel.

// TestGuaranteeSendFileCopiesInTheKernel sends a 128 MiB regular file and
// watches three counters of this process while SendFile runs:
//
//   - read system calls (/proc/self/io syscr): copy_file_range(2) and
//     sendfile(2) count one per call whatever they move, and SendFile
//     makes a few; a loop through a buffer makes one per buffer-full, 128
//     with the 1 MiB buffer of the stream path;
//   - bytes allocated on the heap (runtime/metrics, cumulative, so
//     unaffected by when the GC runs): a loop through a large heap buffer,
//     or reading the file whole, allocates it;
//   - the peak resident memory: copying through mappings of the file or
//     the memfd makes them resident (the digest, which maps the memfd, is
//     off here).
//
// The read and peak counters are first checked to move when that is
// done by hand; the heap counter is the runtime's own bookkeeping.
func TestGuaranteeSendFileCopiesInTheKernel(t *testing.T) {
	const size = 128 << 20
	const block = 1 << 20
	fp := filepath.Join(t.TempDir(), "big")
	f, err := os.Create(fp)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := guarRandom(20, block)
	content := func(i int) []byte { // block i of the file
		copy(buf, fmt.Sprintf("block %08d|", i))
		return buf
	}
	for i := range size / block {
		if _, err := f.Write(content(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.Seek(0, 0); err != nil {
		t.Fatal(err)
	}

	// The read counter counts: 8 reads of a block through a buffer.
	r0, ok := guarIO(t)
	if !ok {
		t.Skip("no /proc/self/io: task I/O accounting is off")
	}
	probe := make([]byte, block)
	for i := range 8 {
		if _, err := f.ReadAt(probe, int64(i)*block); err != nil {
			t.Fatal(err)
		}
	}
	if r1, _ := guarIO(t); r1-r0 < 8 {
		t.Skipf("8 reads raised syscr by %d: task I/O accounting does not work here", r1-r0)
	}
	guarCheckPeak(t, size)

	c := guarDial(t, guarServer(t), machq.WithDigest(machq.DigestNone))
	ctx := guarCtx(t)
	debug.FreeOSMemory() // nothing left for the scavenger to return while measuring
	var n int64
	var reads int64
	var allocs uint64
	rise, _ := guarPeak(t, func() {
		// Reading /proc/self/io costs a read or two itself, counted in
		// reads; the peak's own reads of /proc/self/status are not.
		reads0, _ := guarIO(t)
		allocs0 := guarHeapAllocs()
		n, _, err = c.SendFile(ctx, "guar-file", f)
		allocs = guarHeapAllocs() - allocs0
		reads1, _ := guarIO(t)
		reads = reads1 - reads0
	})
	if err != nil || n != size {
		t.Fatalf("SendFile: %d bytes, %v; want %d", n, err, size)
	}
	t.Logf("SendFile of %d MiB: %d read syscalls, %d KiB allocated, peak RSS +%d KiB", size>>20, reads, allocs>>10, rise>>10)
	if reads > 16 {
		t.Errorf("SendFile made %d read system calls for %d MiB: it copied through a user buffer, not in the kernel", reads, size>>20)
	}
	if allocs > 4<<20 {
		t.Errorf("SendFile allocated %d MiB on the heap for a %d MiB file: it copied through a user buffer", allocs>>20, size>>20)
	}
	if rise > size/4 {
		t.Errorf("peak RSS rose by %d MiB while SendFile copied %d MiB: the bytes went through this process's memory", rise>>20, size>>20)
	}

	m, err := c.Retrieve(ctx, "guar-file")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got := m.Bytes()
	if !m.OutOfLine() || len(got) != size {
		t.Fatalf("retrieved %d bytes, out of line %v; want %d out of line", len(got), m.OutOfLine(), size)
	}
	for i := range size / block {
		if !bytes.Equal(got[i*block:(i+1)*block], content(i)) {
			t.Fatalf("block %d of the file differs in the message", i)
		}
	}
}

// ---------------------------------------------------------------------
// 4. Send fills its page with pwrite(2), not through a mapping.

// TestGuaranteeSendWritesThePageWithoutMappingIt sends a 64 MiB payload
// and checks that this process's resident memory did not peak above its
// level before by anything like the payload: pwrite(2) fills the memfd's
// pages in the kernel without mapping them into the process, while a copy
// into a mapping faults every page in (RssShmem), even if for a moment.
//
// RssShmem after Send proves nothing: a mapping must be gone before the
// page can be sealed, and with it its pages leave the RSS. The peak
// (VmHWM, reset with /proc/self/clear_refs) does not forget them: the
// kernel records it before unmapping.
func TestGuaranteeSendWritesThePageWithoutMappingIt(t *testing.T) {
	const size = 64 << 20
	guarCheckPeak(t, size)
	c := guarDial(t, guarServer(t))
	ctx := guarCtx(t)
	// The payload is resident before the peak is reset. It is copied by
	// Go code so that, under the race detector, its shadow memory is
	// resident too (the generator's assembly does not touch it, and
	// pwrite's race annotation would).
	data := make([]byte, size)
	copy(data, guarRandom(30, size))
	for _, send := range []struct {
		name string
		fn   func() error
	}{
		{"Send", func() error { _, err := c.Send(ctx, "guar-send", data); return err }},
		{"SendBatch", func() error { return c.SendBatch(ctx, "guar-send", [][]byte{data}) }},
	} {
		debug.FreeOSMemory() // nothing left for the scavenger to return while measuring
		var err error
		rise, _ := guarPeak(t, func() { err = send.fn() })
		if err != nil {
			t.Fatalf("%s: %v", send.name, err)
		}
		t.Logf("%s of %d MiB: peak RSS +%d KiB", send.name, size>>20, rise>>10)
		if rise > size/4 {
			t.Errorf("peak RSS rose by %d MiB during %s of %d MiB: the page was filled through a mapping, not with pwrite", rise>>20, send.name, size>>20)
		}
	}
	for range 2 {
		m, err := c.Retrieve(ctx, "guar-send")
		if err != nil {
			t.Fatal(err)
		}
		if !m.OutOfLine() || !bytes.Equal(m.Bytes(), data) {
			t.Fatal("the payload came back inline or changed")
		}
		m.Close()
	}
}
