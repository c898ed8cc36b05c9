package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/clienttest"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/internal/wiretest"
	"github.com/machq/machq/server"
)

// testLogger writes the server's logs to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// startServer runs a server in-process on a socket in a temporary
// directory and returns it with its socket path. It is shut down when the
// test ends.
func startServer(t testing.TB, cfg server.Config) (*server.Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	srv, path, done := serve(t, cfg)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, server.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return srv, path
}

// serve starts a server on a socket in a temporary directory and returns
// it, the socket path, and the channel that receives Serve's result. The
// caller stops it.
func serve(t testing.TB, cfg server.Config) (*server.Server, string, <-chan error) {
	t.Helper()
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	return srv, path, done
}

func dial(t testing.TB, path string, opts ...machq.Option) *machq.Client {
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

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds, failing the test after 10s. Call it
// from the test's goroutine only; elsewhere use eventually.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !eventually(cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// eventually polls cond until it holds or 10s pass, and reports which.
func eventually(cond func() bool) bool {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestRoundTripSizes(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	for _, size := range []int{0, 1, 4095, 4096, 4097, 1 << 20, 64 << 20} {
		for _, q := range []string{"", "sizes"} {
			data := randomBytes(t, size)
			if _, err := c.Send(ctx, q, data); err != nil {
				t.Fatalf("send %d bytes to %q: %v", size, q, err)
			}
			m, err := c.Retrieve(ctx, q)
			if err != nil {
				t.Fatalf("retrieve %d bytes from %q: %v", size, q, err)
			}
			if !bytes.Equal(m.Bytes(), data) {
				t.Errorf("%d bytes via %q: payload differs", size, q)
			}
			if want := size > machq.DefaultInlineThreshold; m.OutOfLine() != want {
				t.Errorf("%d bytes: out of line = %v, want %v", size, m.OutOfLine(), want)
			}
			if alg, d := m.Digest(); alg != machq.DigestSHA256 || len(d) != 32 {
				t.Errorf("%d bytes: digest %v/%d bytes, want sha256/32", size, alg, len(d))
			}
			m.Close()
		}
	}
}

func TestPageAndFileSends(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)

	p, err := machq.NewPage(3 << 20)
	if err != nil {
		t.Fatal(err)
	}
	want := randomBytes(t, 3<<20)
	copy(p.Bytes(), want)
	if _, err := c.SendPage(ctx, "pages", p); err != nil {
		t.Fatal(err)
	}
	if p.Bytes() != nil {
		t.Error("page still mapped after SendPage")
	}
	if _, err := c.SendPage(ctx, "pages", p); !errors.Is(err, machq.ErrPageUsed) {
		t.Errorf("second SendPage: %v, want ErrPageUsed", err)
	}

	f, err := os.Create(filepath.Join(t.TempDir(), "payload"))
	if err != nil {
		t.Fatal(err)
	}
	fileData := randomBytes(t, 5<<20+3)
	f.Write(fileData)
	f.Seek(0, 0)
	n, _, err := c.SendFile(ctx, "pages", f)
	if err != nil || n != int64(len(fileData)) {
		t.Fatalf("SendFile = %d, %v; want %d", n, err, len(fileData))
	}

	for i, w := range [][]byte{want, fileData} {
		m, err := c.Retrieve(ctx, "pages")
		if err != nil {
			t.Fatal(err)
		}
		if !m.OutOfLine() || !bytes.Equal(m.Bytes(), w) {
			t.Errorf("message %d: out of line %v, payload equal %v", i, m.OutOfLine(), bytes.Equal(m.Bytes(), w))
		}
		out, err := os.Create(filepath.Join(t.TempDir(), "out"))
		if err != nil {
			t.Fatal(err)
		}
		if n, err := m.WriteTo(out); err != nil || n != int64(len(w)) {
			t.Errorf("WriteTo = %d, %v", n, err)
		}
		got, _ := os.ReadFile(out.Name())
		if !bytes.Equal(got, w) {
			t.Errorf("message %d: WriteTo wrote different bytes", i)
		}
		out.Close()
		m.Close()
	}
}

func TestPrivateQueuesAreIsolated(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	a, b := dial(t, path), dial(t, path)
	ctx := testCtx(t)
	if _, err := a.Send(ctx, "", []byte("for a only")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Retrieve(ctx, ""); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("b retrieved from its private queue: %v, want ErrEmpty", err)
	}
	expectMessage(t, ctx, a, "", "for a only", "a retrieve")

	// Closing a frees what it stored privately.
	a.Send(ctx, "", randomBytes(t, 100<<10))
	if st := srv.Stats(); st.Messages != 1 {
		t.Fatalf("stats: %d messages, want 1", st.Messages)
	}
	a.Close()
	waitFor(t, "private queue freed", func() bool { st := srv.Stats(); return st.Messages == 0 && st.Clients == 1 })
}

func TestNamedQueueFIFOAcrossClients(t *testing.T) {
	_, path := startServer(t, server.Config{})
	ctx := testCtx(t)
	const producers, each = 4, 200
	var wg sync.WaitGroup
	for p := range producers {
		c := dial(t, path)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				size := 8
				if i%50 == 0 {
					size = 70 << 10 // some out of line
				}
				msg := make([]byte, size)
				msg[0], msg[1], msg[2] = byte(p), byte(i>>8), byte(i)
				if _, err := c.Send(ctx, "fifo", msg); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	consumer := dial(t, path)
	next := make([]int, producers)
	var lastSeq uint64
	for range producers * each {
		m, err := consumer.Retrieve(ctx, "fifo")
		if err != nil {
			t.Fatal(err)
		}
		b := m.Bytes()
		p, i := int(b[0]), int(b[1])<<8|int(b[2])
		if i != next[p] {
			t.Fatalf("producer %d: got message %d, want %d", p, i, next[p])
		}
		if m.Seq <= lastSeq {
			t.Fatalf("seq %d after %d", m.Seq, lastSeq)
		}
		next[p]++
		lastSeq = m.Seq
		m.Close()
	}
	if _, err := consumer.Retrieve(ctx, "fifo"); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("after draining: %v, want ErrEmpty", err)
	}
}

func TestConcurrentUseOfOneClient(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := "g" + string(rune('a'+g))
			for i := range 100 {
				data := []byte{byte(g), byte(i)}
				if i%10 == 0 {
					data = append(data, make([]byte, 80<<10)...)
				}
				if _, err := c.Send(ctx, q, data); err != nil {
					t.Error(err)
					return
				}
				m, err := c.Retrieve(ctx, q)
				if err != nil {
					t.Error(err)
					return
				}
				if b := m.Bytes(); b[0] != byte(g) || b[1] != byte(i) {
					t.Errorf("goroutine %d got %v at %d", g, b[:2], i)
				}
				m.Close()
			}
		}()
	}
	// The private queue is shared by the goroutines but verified in order.
	for i := range 50 {
		if _, err := c.Send(ctx, "", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		m, err := c.Retrieve(ctx, "")
		if err != nil {
			t.Fatalf("private %d: %v", i, err)
		}
		if m.Bytes()[0] != byte(i) {
			t.Fatalf("private %d: got %d", i, m.Bytes()[0])
		}
		m.Close()
	}
	wg.Wait()
}

func TestRetrieveWait(t *testing.T) {
	_, path := startServer(t, server.Config{})
	consumer, producer := dial(t, path), dial(t, path)
	ctx := testCtx(t)

	got := make(chan *machq.Message, 1)
	errc := make(chan error, 1)
	go func() {
		m, err := consumer.RetrieveWait(ctx, "later")
		if err != nil {
			errc <- err
			return
		}
		got <- m
	}()
	// Send only once the consumer is registered as a waiter.
	waitFor(t, "consumer waiting", func() bool {
		st, err := producer.Stat(ctx)
		return err == nil && len(st.Queues) == 1 && st.Queues[0].Waiting == 1
	})
	if _, err := producer.Send(ctx, "later", []byte("arrived")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if string(m.Bytes()) != "arrived" {
			t.Errorf("got %q", m.Bytes())
		}
		m.Close()
	case err := <-errc:
		t.Fatal(err)
	}

	// A deadline with nothing arriving is ErrEmpty and DeadlineExceeded.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := consumer.RetrieveWait(short, "later")
	if !errors.Is(err, machq.ErrEmpty) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RetrieveWait with deadline: %v, want ErrEmpty and DeadlineExceeded", err)
	}

	// Cancellation without a deadline: the server forgets the waiter, and
	// a message sent afterwards stays in the queue.
	cctx, ccancel := context.WithCancel(ctx)
	go func() {
		defer ccancel()
		if !eventually(func() bool {
			st, err := producer.Stat(ctx)
			return err == nil && len(st.Queues) == 1 && st.Queues[0].Waiting == 1
		}) {
			t.Error("timed out waiting for the second waiter")
		}
	}()
	if _, err := consumer.RetrieveWait(cctx, "later"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled RetrieveWait: %v, want context.Canceled", err)
	}
	waitFor(t, "waiter removed", func() bool {
		// Without its waiter the empty queue is idle and removed.
		st, err := producer.Stat(ctx)
		return err == nil && len(st.Queues) == 0
	})
	producer.Send(ctx, "later", []byte("kept"))
	expectMessage(t, ctx, consumer, "later", "kept", "after cancel")
}

func TestTamperedDigestIsDetected(t *testing.T) {
	_, path := startServer(t, server.Config{})
	raw := wiretest.DialHello(t, path)
	bogus := bytes.Repeat([]byte{0xAB}, 32)
	raw.Write(wire.AppendStore(nil, 1, wire.Store{Size: 5, DigestAlg: wire.DigestSHA256, Digest: bogus, Queue: []byte("t")}, []byte("hello"), false))
	if f := raw.Read(); f.Op != wire.OpStored {
		t.Fatalf("got %s", f.Op)
	}
	c := dial(t, path)
	m, err := c.Retrieve(testCtx(t), "t")
	if !errors.Is(err, machq.ErrTampered) {
		t.Fatalf("retrieve: %v, want ErrTampered", err)
	}
	var te *machq.TamperedError
	if !errors.As(err, &te) || te.Queue != "t" || m == nil || string(m.Bytes()) != "hello" {
		t.Fatalf("tampered error %v, message %v", err, m)
	}
	m.Close()
}

func memfd(t testing.TB, data []byte, seals int) int {
	t.Helper()
	fd, err := page.Create("test")
	if err != nil {
		t.Fatal(err)
	}
	if err := page.Write(fd, data); err != nil {
		t.Fatal(err)
	}
	if seals != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// openFDs maps each descriptor open in this process to what it refers
// to (the target of its /proc/self/fd link).
func openFDs(t testing.TB) map[string]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string, len(ents))
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the directory's own descriptor, gone by now
		}
		m[e.Name()] = target
	}
	return m
}

// waitFDsReleased waits until every descriptor open now was open, to the
// same file, in base: a descriptor of an earlier test closed meanwhile
// (by a finalizer, say) does not count, and what stays open is named.
func waitFDsReleased(t testing.TB, what string, base map[string]string) {
	t.Helper()
	var extra []string
	if !eventually(func() bool {
		extra = extra[:0]
		for fd, target := range openFDs(t) {
			if base[fd] != target {
				extra = append(extra, fd+" -> "+target)
			}
		}
		return len(extra) == 0
	}) {
		t.Fatalf("timed out waiting for %s: still open %v", what, extra)
	}
}

func TestBadPagesAreRefused(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	raw := wiretest.DialHello(t, path)
	other := dial(t, path)
	ctx := testCtx(t)
	if _, err := other.Send(ctx, "others", []byte("keep me")); err != nil {
		t.Fatal(err)
	}
	pipeR, pipeW, _ := os.Pipe()
	defer pipeR.Close()
	defer pipeW.Close()
	base := countFDs(t)
	data := []byte("0123456789")
	cases := []struct {
		name string
		fd   func() int
		size uint64
		code wire.Code
		msg  string
	}{
		{"unsealed memfd", func() int { return memfd(t, data, 0) }, 10, wire.CodeBadPage, "not sealed"},
		{"write seal only", func() int { return memfd(t, data, unix.F_SEAL_WRITE) }, 10, wire.CodeBadPage, "not sealed"},
		{"future write seal", func() int { return memfd(t, data, unix.F_SEAL_FUTURE_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK) }, 10, wire.CodeBadPage, "not sealed"},
		{"size mismatch", func() int { return memfd(t, data, int(page.RequiredSeals)) }, 11, wire.CodeBadPage, "size differs"},
		{"pipe", func() int { fd, _ := unix.Dup(int(pipeR.Fd())); return fd }, 10, wire.CodeBadPage, "pipe"},
		{"dev null", func() int { fd, _ := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); return fd }, 10, wire.CodeBadPage, "character device"},
		{"write-only memfd", func() int {
			fd := memfd(t, data, int(page.RequiredSeals))
			defer unix.Close(fd)
			wo, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_WRONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return wo
		}, 10, wire.CodeBadPage, "write-only"},
		{"regular file", func() int {
			fd, _ := unix.Open(filepath.Join(t.TempDir(), "f"), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
			unix.Write(fd, data)
			return fd
		}, 10, wire.CodeBadPage, "not a memfd"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fd := tc.fd()
			raw.Write(wire.AppendStore(nil, uint64(100+i), wire.Store{Size: tc.size, Queue: []byte("bad")}, nil, true), fd)
			unix.Close(fd)
			msg := raw.ExpectError(tc.code)
			if !bytes.Contains([]byte(msg), []byte(tc.msg)) {
				t.Errorf("error %q does not mention %q", msg, tc.msg)
			}
		})
	}
	// Out of line without a descriptor: refused, connection kept.
	hdr := wire.AppendStore(nil, 200, wire.Store{Size: 10, Queue: []byte("bad")}, nil, true)
	hdr[6] = 0 // declare no descriptor
	raw.Write(hdr)
	raw.ExpectError(wire.CodeBadDescriptor)

	// The connection still works, nothing was stored, and the server
	// holds no descriptor from the refused requests.
	good := memfd(t, data, int(page.RequiredSeals))
	raw.Write(wire.AppendStore(nil, 300, wire.Store{Size: 10, Queue: []byte("good")}, nil, true), good)
	unix.Close(good)
	if f := raw.Read(); f.Op != wire.OpStored {
		t.Fatalf("valid store after refusals: %s", f.Op)
	}
	for _, q := range srv.Stats().Queues {
		if q.Name == "bad" && q.Messages != 0 {
			t.Errorf("queue bad holds %d messages", q.Messages)
		}
	}
	if n := countFDs(t); n != base+1 { // +1: the good page
		t.Errorf("open fds %d, want %d", n, base+1)
	}
	expectMessage(t, ctx, other, "others", "keep me", "other client's data")
}

func TestProtocolViolationsCloseOnlyTheOffender(t *testing.T) {
	_, path := startServer(t, server.Config{})
	ctx := testCtx(t)
	bystander := dial(t, path)
	bystander.Send(ctx, "safe", []byte("intact"))

	cases := []struct {
		name  string
		hello bool
		send  []byte
		code  wire.Code
	}{
		{"garbage", false, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), wire.CodeMalformed},
		{"no hello", false, wire.AppendStat(nil, 1), wire.CodeMalformed},
		{"bad version", false, wire.AppendHello(nil, 0, wire.Hello{MinVersion: 7, MaxVersion: 9}), wire.CodeVersion},
		{"oversized length", true, func() []byte {
			b := make([]byte, wire.HeaderSize)
			wire.PutHeader(b, wire.Header{Length: wire.MaxFrameSize + 1, Op: wire.OpStore})
			return b
		}(), wire.CodeMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var raw *wiretest.Conn
			if tc.hello {
				raw = wiretest.DialHello(t, path)
			} else {
				raw = wiretest.Dial(t, path)
			}
			raw.Write(tc.send)
			raw.ExpectError(tc.code)
			if _, err := raw.ReadErr(); err == nil {
				t.Fatal("connection still open after a fatal error")
			}
		})
	}
	// An unknown operation fails only that request.
	raw := wiretest.DialHello(t, path)
	b := wire.AppendStat(nil, 9)
	b[4] = 0x42
	raw.Write(b)
	raw.ExpectError(wire.CodeUnknownOp)
	raw.Write(wire.AppendRetrieve(nil, 10, wire.Retrieve{Queue: []byte("bad/name")}))
	raw.ExpectError(wire.CodeBadQueueName)
	raw.Write(wire.AppendStat(nil, 11))
	if f := raw.Read(); f.Op != wire.OpStats {
		t.Fatalf("after per-request errors: %s", f.Op)
	}

	expectMessage(t, ctx, bystander, "safe", "intact", "bystander")
}

func TestLimits(t *testing.T) {
	_, path := startServer(t, server.Config{MaxMessageSize: 1 << 20, MaxInline: 1024})
	c := dial(t, path, machq.WithInlineThreshold(1<<20))
	ctx := testCtx(t)
	if _, err := c.Send(ctx, "l", make([]byte, 1<<20+1)); !errors.Is(err, machq.ErrTooLarge) {
		t.Fatalf("oversize send: %v, want ErrTooLarge", err)
	}
	// The client caps its inline threshold at the server's.
	if _, err := c.Send(ctx, "l", make([]byte, 2048)); err != nil {
		t.Fatal(err)
	}
	m, err := c.Retrieve(ctx, "l")
	if err != nil || !m.OutOfLine() {
		t.Fatalf("2 KiB with a 1 KiB server inline limit: %v, out of line %v", err, m != nil && m.OutOfLine())
	}
	m.Close()
	if _, err := c.Send(ctx, "bad name", nil); !errors.Is(err, machq.ErrBadQueueName) {
		t.Fatalf("bad queue name: %v", err)
	}
}

func TestShutdownAnswersWaitersAndFreesPages(t *testing.T) {
	base := countFDs(t)
	srv, path, done := serve(t, server.Config{})

	ctx := testCtx(t)
	c, err := machq.Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := c.Send(ctx, "kept", make([]byte, 100<<10)); err != nil {
			t.Fatal(err)
		}
	}
	waitErr := make(chan error, 1)
	go func() {
		_, err := c.RetrieveWait(ctx, "never")
		waitErr <- err
	}()
	waitFor(t, "waiter registered", func() bool {
		for _, q := range srv.Stats().Queues {
			if q.Name == "never" && q.Waiting == 1 {
				return true
			}
		}
		return false
	})
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, server.ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	if err := <-waitErr; !errors.Is(err, machq.ErrShuttingDown) {
		t.Fatalf("waiting retrieve: %v, want ErrShuttingDown", err)
	}
	if _, err := c.Retrieve(ctx, "kept"); !errors.Is(err, machq.ErrClosed) {
		t.Fatalf("after shutdown: %v, want ErrClosed", err)
	}
	c.Close()
	if st := srv.Stats(); st.Messages != 0 || st.Clients != 0 {
		t.Fatalf("after shutdown: %+v", st)
	}
	if n := countFDs(t); n != base {
		t.Fatalf("open fds %d after shutdown, want %d", n, base)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file left behind: %v", err)
	}
}

func TestListenAndServeRefusesLiveName(t *testing.T) {
	srv1, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "named.sock")
	done := make(chan error, 1)
	go func() { done <- srv1.ListenAndServe(path) }()
	waitFor(t, "first server listening", func() bool {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	srv2, _ := server.New(server.Config{})
	if err := srv2.ListenAndServe(path); err == nil || !bytes.Contains([]byte(err.Error()), []byte("in use")) {
		t.Fatalf("second server: %v, want name in use", err)
	}
	srv1.Close()
	if err := <-done; !errors.Is(err, server.ErrServerClosed) {
		t.Fatal(err)
	}
}

func TestLargeInlineFramesInterleavedWithPages(t *testing.T) {
	_, path := startServer(t, server.Config{})
	raw := wiretest.DialHello(t, path)
	big := randomBytes(t, 100<<10) // inline, larger than a read buffer
	small := []byte("page payload")
	for round := range 20 {
		id := uint64(round * 10)
		// Pipelined: every request written before any answer is read.
		raw.Write(wire.AppendStore(nil, id+1, wire.Store{Size: uint64(len(big)), Queue: []byte("mix")}, big, false))
		fd := memfd(t, small, int(page.RequiredSeals))
		var buf []byte
		buf = wire.AppendStore(buf, id+2, wire.Store{Size: uint64(len(small)), Queue: []byte("mix")}, nil, true)
		buf = wire.AppendRetrieve(buf, id+3, wire.Retrieve{Queue: []byte("mix")})
		buf = wire.AppendRetrieve(buf, id+4, wire.Retrieve{Queue: []byte("mix")})
		raw.Write(buf, fd) // the page's frame starts the sendmsg
		unix.Close(fd)
		for _, want := range []wire.Op{wire.OpStored, wire.OpStored} {
			if f := raw.Read(); f.Op != want {
				t.Fatalf("round %d: got %s, want %s", round, f.Op, want)
			}
		}
		f := raw.Read()
		if f.Op != wire.OpMessage || len(f.FDs) != 0 || !bytes.HasSuffix(f.Body, big) {
			t.Fatalf("round %d: first MESSAGE: %s with %d fds", round, f.Op, len(f.FDs))
		}
		f = raw.Read()
		if f.Op != wire.OpMessage || len(f.FDs) != 1 {
			t.Fatalf("round %d: second MESSAGE: %s with %d fds", round, f.Op, len(f.FDs))
		}
		got := make([]byte, len(small))
		if _, err := page.ReadAt(f.FDs[0], got, 0); err != nil || !bytes.Equal(got, small) {
			t.Fatalf("round %d: page content %q, %v", round, got, err)
		}
		unix.Close(f.FDs[0])
	}
}

func TestDescriptorsNotAtTheirFrameAreFatal(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	base := openFDs(t)
	cases := []struct {
		name  string
		build func() ([]byte, int)
	}{
		{"two pages in one sendmsg", func() ([]byte, int) {
			var b []byte
			b = wire.AppendStore(b, 1, wire.Store{Size: 3, Queue: []byte("q")}, nil, true)
			b = wire.AppendStore(b, 2, wire.Store{Size: 3, Queue: []byte("q")}, nil, true)
			return b, 2
		}},
		{"descriptor with a frame that declares none", func() ([]byte, int) {
			return wire.AppendStat(nil, 1), 1
		}},
		{"253 descriptors with one frame", func() ([]byte, int) {
			return wire.AppendStore(nil, 1, wire.Store{Size: 3, Queue: []byte("q")}, nil, true), wire.MaxFDsPerWrite
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := wiretest.DialHello(t, path)
			b, n := tc.build()
			var fds []int
			for range n {
				fds = append(fds, memfd(t, []byte("abc"), int(page.RequiredSeals)))
			}
			raw.Write(b, fds...)
			wire.CloseFDs(fds)
			f, err := raw.ReadErr()
			for err == nil && f.Op != wire.OpError { // answers to frames before the violation
				f, err = raw.ReadErr()
			}
			if err != nil {
				t.Fatalf("no ERROR before the connection closed: %v", err)
			}
			if code, msg, _ := wire.ParseError(f.Body); code != wire.CodeMalformed || !strings.Contains(msg, "descriptor") {
				t.Fatalf("got %s %q, want MALFORMED about descriptors", code, msg)
			}
			if _, err := raw.ReadErr(); err == nil {
				t.Fatal("connection still open")
			}
			raw.UC.Close()
			waitFDsReleased(t, "server to close the descriptors", base)
		})
	}
	if st := srv.Stats(); st.Messages != 0 {
		t.Fatalf("stored %d messages from violating frames", st.Messages)
	}
}

func TestStatsFitInOneFrame(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	// 5000 queues with 255-byte names describe themselves in more than
	// one frame can hold.
	const n = 5000
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				name := fmt.Sprintf("%06d%s", i, strings.Repeat("q", 249))
				if _, err := c.Send(ctx, name, nil); err != nil {
					t.Errorf("send to %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st, err := c.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Queues) == 0 || len(st.Queues)+st.QueuesOmitted != n {
		t.Fatalf("stats list %d queues and omit %d; want %d in all", len(st.Queues), st.QueuesOmitted, n)
	}
}

func TestSendFileChoosesInlineOrPage(t *testing.T) {
	srv, path := startServer(t, server.Config{MaxMessageSize: 8 << 20})
	c := dial(t, path, machq.WithInlineThreshold(4096))
	ctx := testCtx(t)
	// Pages in queues: a retrieved page counts until its consumer has
	// read it, which this test does not wait for.
	pages := func() int64 { st := srv.Stats(); return st.Pages - st.Unsent.Pages }

	file := func(data []byte, offset int64) *os.File {
		f, err := os.Create(filepath.Join(t.TempDir(), "f"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		return f
	}
	pipe := func(data []byte) *os.File {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		go func() { w.Write(data); w.Close() }()
		return r
	}
	small := randomBytes(t, 4096)
	large := randomBytes(t, 3<<20+5)
	for _, tc := range []struct {
		name    string
		f       func() *os.File
		want    []byte
		outline bool
	}{
		{"small file", func() *os.File { return file(small, 0) }, small, false},
		{"small rest of a large file", func() *os.File { return file(large, int64(len(large))-100) }, large[len(large)-100:], false},
		{"empty file", func() *os.File { return file(nil, 0) }, nil, false},
		{"large file", func() *os.File { return file(large, 7) }, large[7:], true},
		{"small stream", func() *os.File { return pipe(small) }, small, false},
		{"empty stream", func() *os.File { return pipe(nil) }, nil, false},
		{"stream just past inline", func() *os.File { return pipe(large[:4097]) }, large[:4097], true},
		{"large stream", func() *os.File { return pipe(large) }, large, true},
		// /proc files report a size of 0 whatever they hold.
		{"file whose size says nothing", func() *os.File {
			f, err := os.Open("/proc/self/maps")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return f
		}, nil, false},
		{"small sealed memfd", func() *os.File { return sealedMemfd(t, small) }, small, false},
		{"large sealed memfd", func() *os.File { return sealedMemfd(t, large) }, large, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := pages()
			n, _, err := c.SendFile(ctx, "", tc.f())
			if tc.want == nil && tc.name != "empty file" && tc.name != "empty stream" {
				// Content unknown in advance: compare with what came back.
				if err != nil || n == 0 {
					t.Fatalf("SendFile = %d, %v; want the file's content", n, err)
				}
			} else if err != nil || n != int64(len(tc.want)) {
				t.Fatalf("SendFile = %d, %v; want %d", n, err, len(tc.want))
			}
			outline := tc.outline
			if tc.want == nil && n > 0 {
				outline = n > 4096
			}
			if stored := pages() - before; stored != map[bool]int64{false: 0, true: 1}[outline] {
				t.Errorf("SendFile of %d bytes stored %d pages; inline threshold 4096", len(tc.want), stored)
			}
			m, err := c.Retrieve(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if tc.want == nil && n > 0 {
				if m.Len() != n || !bytes.Contains(m.Bytes(), []byte("[stack]")) {
					t.Errorf("retrieved %d bytes of /proc/self/maps (sent %d): %.40q", m.Len(), n, m.Bytes())
				}
				return
			}
			if m.OutOfLine() != tc.outline || !bytes.Equal(m.Bytes(), tc.want) {
				t.Errorf("retrieved out of line %v, equal %v", m.OutOfLine(), bytes.Equal(m.Bytes(), tc.want))
			}
		})
	}

	// Past the maximum: a file is refused before any copy, a stream
	// once it passes the maximum; nothing is stored either way.
	big, err := os.Create(filepath.Join(t.TempDir(), "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	if err := big.Truncate(1 << 40); err != nil { // sparse: copying it would take hours
		t.Fatal(err)
	}
	if _, _, err := c.SendFile(ctx, "", big); !errors.Is(err, machq.ErrTooLarge) {
		t.Errorf("SendFile of a 1 TiB file: %v, want ErrTooLarge", err)
	}
	if _, _, err := c.SendFile(ctx, "", pipe(make([]byte, 8<<20+1))); !errors.Is(err, machq.ErrTooLarge) {
		t.Errorf("SendFile of a stream past the maximum: %v, want ErrTooLarge", err)
	}
	if st := srv.Stats(); st.Messages != 0 {
		t.Errorf("%d messages stored after refused sends", st.Messages)
	}
}

// sealedMemfd returns a memfd holding data, sealed as a page must be.
func sealedMemfd(t *testing.T, data []byte) *os.File {
	fd, err := unix.MemfdCreate("machq-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "memfd")
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestRetrieveWaitDeadlineLosesNothing: consumers that each wait a
// moment for a message and then close (as `machq retrieve --wait` does)
// run while messages arrive at random moments, so that waits run out as
// messages are handed over. Every message must reach a consumer: one
// handed over as its consumer's deadline passed is returned, not dropped
// with the connection.
func TestRetrieveWaitDeadlineLosesNothing(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	ctx := testCtx(t)
	const n = 300
	var got atomic.Int64
	stop := make(chan struct{})
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := machq.Dial(ctx, path)
			if err != nil {
				t.Error(err)
				return
			}
			wctx, cancel := context.WithTimeout(ctx, 2*time.Millisecond)
			if m, err := c.RetrieveWait(wctx, "edge"); m != nil {
				if err != nil {
					t.Error(err)
				}
				got.Add(1)
				m.Close()
			}
			cancel()
			c.Close()
		}
	}()
	p := dial(t, path)
	for i := range n {
		if _, err := p.Send(ctx, "edge", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(i%5) * 300 * time.Microsecond) // pacing, so that some waits run out
	}
	waitFor(t, "the consumers to take every message", func() bool { return srv.Stats().Messages == 0 })
	close(stop)
	<-consumed
	if got.Load() != n {
		t.Errorf("sent %d, consumers received %d: %d lost as a wait ran out", n, got.Load(), n-got.Load())
	}
}

func TestListenWithoutServe(t *testing.T) {
	srv, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "s.sock")
	if _, err := srv.Listen(path); err != nil {
		t.Fatal(err)
	}
	// A second server cannot take the path while the first holds it.
	other, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Listen(path); err == nil {
		t.Fatal("a second server checked in at a held path")
	}
	srv.Close()
	for _, p := range []string{path, path + ".lock"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after Close of a server that never served it: %v", p, err)
		}
	}
	l, err := other.Listen(path)
	if err != nil {
		t.Fatalf("the path was not given up: %v", err)
	}
	go other.Serve(l)
	other.Close()
}

// TestQueueLimitAfterRefusedStores: stores refused by a queue's limit
// leave the queues they created idle; at --max-queues those must make
// room at once, not after the next STATS.
func TestQueueLimitAfterRefusedStores(t *testing.T) {
	_, path := startServer(t, server.Config{Limits: server.Limits{MaxQueues: 2, MaxQueueBytes: 10}})
	c := dial(t, path)
	ctx := testCtx(t)
	for _, q := range []string{"a", "b"} {
		if _, err := c.Send(ctx, q, make([]byte, 100)); !errors.Is(err, machq.ErrLimit) {
			t.Fatalf("oversized store: %v", err)
		}
	}
	if _, err := c.Send(ctx, "c", []byte("x")); err != nil {
		t.Fatalf("store to a new queue while the others are idle: %v", err)
	}
}

func TestListenAfterClose(t *testing.T) {
	srv, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	path := filepath.Join(t.TempDir(), "s.sock")
	if _, err := srv.Listen(path); !errors.Is(err, server.ErrServerClosed) {
		t.Fatalf("Listen after Close: %v, want ErrServerClosed", err)
	}
	other, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Listen(path); err != nil {
		t.Fatalf("the path was left held: %v", err)
	}
}

func TestIdleQueuesAreRemoved(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	// Retrieving from names nobody uses creates nothing.
	for i := range 1000 {
		if _, err := c.Retrieve(ctx, fmt.Sprint("typo-", i)); !errors.Is(err, machq.ErrEmpty) {
			t.Fatalf("retrieve from an unused name: %v, want ErrEmpty", err)
		}
	}
	if st := srv.Stats(); len(st.Queues) != 0 {
		t.Fatalf("%d queues listed after retrieves from unused names", len(st.Queues))
	}
	// A queue emptied by its consumer goes too, and comes back on use
	// with sequence numbers still increasing.
	var seqs []uint64
	for range 2 {
		if _, err := c.Send(ctx, "jobs", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if n := len(srv.Stats().Queues); n != 1 {
			t.Fatalf("%d queues listed holding one message, want 1", n)
		}
		m, err := c.Retrieve(ctx, "jobs")
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, m.Seq)
		m.Close()
		if n := len(srv.Stats().Queues); n != 0 {
			t.Fatalf("an emptied queue is still listed (%d queues)", n)
		}
	}
	if seqs[1] <= seqs[0] {
		t.Errorf("sequence numbers %v: a recreated queue must continue above its old numbers", seqs)
	}
}

func TestQueueLimit(t *testing.T) {
	_, path := startServer(t, server.Config{Limits: server.Limits{MaxQueues: 3}})
	c := dial(t, path)
	ctx := testCtx(t)
	for _, q := range []string{"a", "b", "c"} {
		if _, err := c.Send(ctx, q, []byte(q)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Send(ctx, "d", []byte("d"))
	if !errors.Is(err, machq.ErrLimit) || !strings.Contains(err.Error(), "max-queues") {
		t.Fatalf("send creating a fourth queue: %v, want ErrLimit naming --max-queues", err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := c.RetrieveWait(wctx, "e"); !errors.Is(err, machq.ErrLimit) {
		t.Fatalf("waiting retrieve creating a fourth queue: %v, want ErrLimit", err)
	}
	// Not creating anything is not refused: an unused name is just empty.
	if _, err := c.Retrieve(ctx, "f"); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("retrieve from an unused name at the limit: %v, want ErrEmpty", err)
	}
	// The existing queues still work, and an emptied one makes room.
	expectMessage(t, ctx, c, "a", "a", "retrieve from an existing queue at the limit")
	if _, err := c.Send(ctx, "d", []byte("d")); err != nil {
		t.Fatalf("send after a queue emptied: %v", err)
	}
}

func TestCloseFailsPendingCalls(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	errc := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := c.RetrieveWait(ctx, "nothing-comes")
			errc <- err
		}()
	}
	waitFor(t, "three waiters", func() bool {
		st, err := c.Stat(ctx)
		return err == nil && len(st.Queues) == 1 && st.Queues[0].Waiting == 3
	})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-errc; !errors.Is(err, machq.ErrClosed) {
			t.Fatalf("pending RetrieveWait after Close: %v, want ErrClosed", err)
		}
	}
	if _, err := c.Send(ctx, "", nil); !errors.Is(err, machq.ErrClosed) {
		t.Fatalf("Send after Close: %v, want ErrClosed", err)
	}
}

func TestStoredPrecedesDeliveryToAPrivateWaiter(t *testing.T) {
	_, path := startServer(t, server.Config{})
	raw := wiretest.DialHello(t, path)
	var b []byte
	b = wire.AppendRetrieve(b, 1, wire.Retrieve{WaitMillis: wire.WaitForever})
	b = wire.AppendStore(b, 2, wire.Store{Size: 1}, []byte("a"), false)
	raw.Write(b)
	// The client must learn that its store succeeded (and its sequence
	// number) before it receives the message: it verifies private
	// messages against the digests of acknowledged stores.
	if f := raw.Read(); f.Op != wire.OpStored || f.ID != 2 {
		t.Fatalf("first answer: %s for %d, want STORED for 2", f.Op, f.ID)
	}
	if f := raw.Read(); f.Op != wire.OpMessage || f.ID != 1 {
		t.Fatalf("second answer: %s for %d, want MESSAGE for 1", f.Op, f.ID)
	}

	// And the library verifies such messages without complaint.
	c := dial(t, path)
	ctx := testCtx(t)
	got := make(chan error, 1)
	go func() {
		m, err := c.RetrieveWait(ctx, "")
		if err == nil {
			if string(m.Bytes()) != "a" {
				err = fmt.Errorf("got %q", m.Bytes())
			}
			m.Close()
		}
		got <- err
	}()
	for _, p := range []string{"a", "b"} {
		if _, err := c.Send(ctx, "", []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-got; err != nil {
		t.Fatalf("waiting private retrieve: %v", err)
	}
	m, err := c.Retrieve(ctx, "")
	if err != nil {
		t.Fatalf("next private retrieve: %v", err)
	}
	m.Close()
}

func TestSecondHelloWithDescriptorLeaksNothing(t *testing.T) {
	_, path := startServer(t, server.Config{})
	base := openFDs(t)
	for range 10 {
		raw := wiretest.DialHello(t, path)
		b := wire.AppendHello(nil, 0, wire.Hello{MinVersion: 1, MaxVersion: 1})
		b[6] = 1 // declares a descriptor
		fd := memfd(t, []byte("x"), 0)
		raw.Write(b, fd)
		unix.Close(fd)
		raw.ExpectError(wire.CodeMalformed)
		raw.UC.Close()
	}
	waitFDsReleased(t, "descriptors released", base)
}

func TestShutdownWithAClientThatDoesNotRead(t *testing.T) {
	srv, path, done := serve(t, server.Config{DrainTimeout: 200 * time.Millisecond})
	raw := wiretest.DialHello(t, path)
	// Pipeline requests whose answers are never read, until the server
	// stops reading them.
	raw.UC.SetWriteDeadline(time.Now().Add(2 * time.Second))
	stat := wire.AppendStat(nil, 1)
	batch := bytes.Repeat(stat, 4096)
	for {
		if _, err := raw.UC.Write(batch); err != nil {
			break // the server applies backpressure
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v after %v", err, time.Since(start))
	}
	<-done
}

// TestReadingPassesBetweenCallers checks that responses reach every
// caller whoever happens to be reading the socket: a caller blocked in a
// long RetrieveWait reads for the others, and when it gives up, a waiting
// caller takes over.
func TestReadingPassesBetweenCallers(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)

	waitCtx, stopWaiting := context.WithCancel(ctx)
	defer stopWaiting()
	waitErr := make(chan error, 1)
	go func() {
		_, err := c.RetrieveWait(waitCtx, "never")
		waitErr <- err
	}()
	observer := dial(t, path)
	waitFor(t, "the long wait registered", func() bool {
		st, err := observer.Stat(ctx)
		return err == nil && len(st.Queues) == 1 && st.Queues[0].Waiting == 1
	})

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			q := fmt.Sprintf("q%d", g)
			for i := range 200 {
				if i == 100 && g == 0 {
					stopWaiting() // the long waiter leaves mid-stream
				}
				if _, err := c.Send(ctx, q, []byte{byte(g), byte(i)}); err != nil {
					t.Error(err)
					return
				}
				m, err := c.Retrieve(ctx, q)
				if err != nil {
					t.Error(err)
					return
				}
				if b := m.Bytes(); len(b) != 2 || b[0] != byte(g) || b[1] != byte(i) {
					t.Errorf("goroutine %d, message %d: got %v", g, i, b)
				}
				m.Close()
			}
		})
	}
	wg.Wait()
	if err := <-waitErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("long wait ended with %v, want context.Canceled", err)
	}
}

// TestGivenUpRetrievesKeepFIFO stores messages while retrieves with very
// short deadlines give up around them: every message is still received
// exactly once, in order, whether it was handed to a caller that gave up
// (and kept for the next retrieve) or not.
func TestGivenUpRetrievesKeepFIFO(t *testing.T) {
	_, path := startServer(t, server.Config{})
	consumer, producer := dial(t, path), dial(t, path)
	ctx := testCtx(t)
	const n = 300
	produced := make(chan struct{})
	// The consumer may take the last message before its STORED reaches
	// the producer: the test ends only once the producer has its answers.
	defer func() { <-produced }()
	go func() {
		defer close(produced)
		for i := range n {
			if _, err := producer.Send(ctx, "fifo", []byte(strconv.Itoa(i))); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	next := 0
	for attempt := 0; next < n && ctx.Err() == nil; attempt++ {
		// Deadlines from already past to a generous one, in turn.
		wait := time.Duration(attempt%7) * 50 * time.Microsecond
		if attempt%7 == 6 {
			wait = 5 * time.Second
		}
		short, cancel := context.WithTimeout(ctx, wait)
		m, err := consumer.RetrieveWait(short, "fifo")
		cancel()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("retrieve %d: %v", next, err)
			}
			continue
		}
		if got := string(m.Bytes()); got != strconv.Itoa(next) {
			t.Fatalf("got message %s, want %d", got, next)
		}
		m.Close()
		next++
	}
	if next != n {
		t.Fatalf("received %d of %d messages", next, n)
	}
}

// TestBatches stores and retrieves in batches, inline and out of line,
// in the private queue and a named one, and checks FIFO order, partial
// batches and an empty queue.
func TestBatches(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	for _, q := range []string{"", "batched"} {
		var payloads [][]byte
		for i := range 40 {
			p := []byte(fmt.Sprintf("message %d", i))
			if i%9 == 0 {
				p = append(p, make([]byte, 100<<10)...) // out of line
			}
			payloads = append(payloads, p)
		}
		if err := c.SendBatch(ctx, q, payloads[:25]); err != nil {
			t.Fatalf("queue %q: SendBatch: %v", q, err)
		}
		if _, err := c.Send(ctx, q, payloads[25]); err != nil {
			t.Fatal(err)
		}
		if err := c.SendBatch(ctx, q, payloads[26:]); err != nil {
			t.Fatal(err)
		}
		next := 0
		check := func(msgs []*machq.Message) {
			t.Helper()
			for _, m := range msgs {
				if !bytes.Equal(m.Bytes(), payloads[next]) {
					t.Fatalf("queue %q: message %d: got %.20q", q, next, m.Bytes())
				}
				m.Close()
				next++
			}
		}
		msgs, err := c.RetrieveBatch(ctx, q, 16)
		if err != nil || len(msgs) != 16 {
			t.Fatalf("queue %q: RetrieveBatch(16): %d messages, %v", q, len(msgs), err)
		}
		check(msgs)
		m, err := c.Retrieve(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		check([]*machq.Message{m})
		msgs, err = c.RetrieveBatch(ctx, q, 100) // more than are left
		if err != nil || len(msgs) != 23 {
			t.Fatalf("queue %q: RetrieveBatch(100) with 23 left: %d messages, %v", q, len(msgs), err)
		}
		check(msgs)
		if msgs, err := c.RetrieveBatch(ctx, q, 5); !errors.Is(err, machq.ErrEmpty) || len(msgs) != 0 {
			t.Fatalf("queue %q: RetrieveBatch of an empty queue: %d messages, %v; want ErrEmpty", q, len(msgs), err)
		}
	}
	if err := c.SendBatch(ctx, "bad name", [][]byte{{1}}); !errors.Is(err, machq.ErrBadQueueName) {
		t.Fatalf("SendBatch to a bad name: %v", err)
	}
	if _, err := c.RetrieveBatch(ctx, "", 0); err == nil {
		t.Fatal("RetrieveBatch of 0 messages succeeded")
	}
}

// TestSendBatchReportsEachFailure checks that a batch with a payload over
// the server's limit stores the others and names the one that failed.
func TestSendBatchReportsEachFailure(t *testing.T) {
	_, path := startServer(t, server.Config{MaxMessageSize: 1000, MaxInline: 2000})
	c := dial(t, path, machq.WithInlineThreshold(2000))
	ctx := testCtx(t)
	err := c.SendBatch(ctx, "q", [][]byte{[]byte("a"), make([]byte, 1500), []byte("c")})
	if !errors.Is(err, machq.ErrTooLarge) || !strings.Contains(err.Error(), "payload 1") {
		t.Fatalf("SendBatch with one oversize payload: %v; want ErrTooLarge naming payload 1", err)
	}
	msgs, err := c.RetrieveBatch(ctx, "q", 3)
	if err != nil || len(msgs) != 2 || string(msgs[0].Bytes()) != "a" || string(msgs[1].Bytes()) != "c" {
		t.Fatalf("after the partial batch: %d messages, %v", len(msgs), err)
	}
	for _, m := range msgs {
		m.Close()
	}
}

// spareMemfds counts this process's memfds named as the client's sends
// and spare pages are.
func spareMemfds(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(target, "/memfd:machq ") {
			n++
		}
	}
	return n
}

// TestSparePages sends large payloads of varying sizes, so that some go
// into a spare page prepared in the background (cut down when larger
// than needed) and some into fresh pages, and checks every payload, that
// an unused spare is freed, and that Close frees it too.
func TestSparePages(t *testing.T) {
	_, path := startServer(t, server.Config{})
	ctx := testCtx(t)
	for _, limit := range []int64{machq.DefaultSparePage, 0} {
		c := dial(t, path, machq.WithDigest(machq.DigestSHA256), machq.WithSparePage(limit))
		for i, size := range []int{300 << 10, 300 << 10, 200 << 10, 1 << 20, 100 << 10, 1 << 20} {
			data := randomBytes(t, size)
			if _, err := c.Send(ctx, "", data); err != nil {
				t.Fatalf("limit %d, send %d: %v", limit, i, err)
			}
			m, err := c.Retrieve(ctx, "")
			if err != nil {
				t.Fatalf("limit %d, retrieve %d: %v", limit, i, err)
			}
			if !bytes.Equal(m.Bytes(), data) {
				t.Fatalf("limit %d, message %d differs", limit, i)
			}
			m.Close()
		}
		if limit == 0 {
			waitFor(t, "no memfd left", func() bool { return spareMemfds(t) == 0 })
		} else {
			// Nothing is stored now: the one memfd left is the spare,
			// which is freed after a second without sends.
			waitFor(t, "the spare page ready", func() bool { return spareMemfds(t) == 1 })
			waitFor(t, "the idle spare page freed", func() bool { return spareMemfds(t) == 0 })
			if _, err := c.Send(ctx, "", make([]byte, 2<<20)); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
		// The server (in this process) frees the private queue's page as
		// soon as it sees the connection end; the spare goes with Close.
		waitFor(t, "every memfd closed after Close", func() bool { return spareMemfds(t) == 0 })
	}
	if _, err := machq.Dial(ctx, path, machq.WithSparePage(-1)); err == nil {
		t.Error("a negative spare page limit was accepted")
	}
}

// expectLimit checks that err is a LIMIT refusal naming flag.
func expectLimit(t *testing.T, what string, err error, flag string) {
	t.Helper()
	if !errors.Is(err, machq.ErrLimit) || !strings.Contains(err.Error(), "--"+flag) {
		t.Fatalf("%s: %v; want ErrLimit naming --%s", what, err, flag)
	}
}

// TestStoreQuotas fills the private queue, a named queue and the server
// to their limits: each request over a limit fails alone with a LIMIT
// error naming the limit, nothing stored is lost, the refused page is
// closed, and the connection goes on.
func TestStoreQuotas(t *testing.T) {
	srv, path := startServer(t, server.Config{Limits: server.Limits{
		MaxPrivateMessages: 3,
		MaxQueueBytes:      1000,
		MaxStoredMessages:  6,
	}})
	c := dial(t, path, machq.WithInlineThreshold(64<<10))
	ctx := testCtx(t)

	for i := range 3 {
		if _, err := c.Send(ctx, "", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	expectLimit(t, "fourth private message", errOf(c.Send(ctx, "", []byte{3})), "max-private-messages")
	for i := range 3 {
		m, err := c.Retrieve(ctx, "")
		if err != nil || m.Bytes()[0] != byte(i) {
			t.Fatalf("private message %d after the refusal: %v", i, err)
		}
		m.Close()
	}
	if _, err := c.Send(ctx, "", []byte{9}); err != nil {
		t.Fatalf("private queue drained, yet: %v", err)
	}

	if _, err := c.Send(ctx, "q", make([]byte, 600)); err != nil {
		t.Fatal(err)
	}
	expectLimit(t, "600 more bytes in a 1000-byte queue", errOf(c.Send(ctx, "q", make([]byte, 600))), "max-queue-bytes")
	base := openFDs(t)
	expectLimit(t, "a 100 KiB page in a 1000-byte queue", errOf(c.Send(ctx, "q", make([]byte, 100<<10))), "max-queue-bytes")
	waitFDsReleased(t, "the refused page closed", base)
	if _, err := c.Send(ctx, "q", make([]byte, 400)); err != nil {
		t.Fatalf("400 bytes filling the queue exactly: %v", err)
	}

	// 1 private + 2 in q: three more reach the total of 6.
	other := dial(t, path)
	for i := range 3 {
		if _, err := other.Send(ctx, "other", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	expectLimit(t, "a seventh message on the server", errOf(other.Send(ctx, "other", []byte{3})), "max-stored-messages")
	if st := srv.Stats(); st.Messages != 6 {
		t.Fatalf("server holds %d messages, want 6", st.Messages)
	}
}

// TestWaitingAndConnectionLimits checks the limit on waiting retrieves
// per connection and the connection limits: the refused client gets a
// LIMIT error naming the limit, and a slot freed is usable again.
func TestWaitingAndConnectionLimits(t *testing.T) {
	_, path := startServer(t, server.Config{Limits: server.Limits{MaxWaiting: 2, MaxConnections: 3, MaxConnectionsPerUID: 2}})
	ctx := testCtx(t)
	c := dial(t, path)
	waitCtx, stopWaiting := context.WithCancel(ctx)
	defer stopWaiting()
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { c.RetrieveWait(waitCtx, "w") })
	}
	observer := dial(t, path)
	waitFor(t, "two retrieves waiting", func() bool {
		st, err := observer.Stat(ctx)
		return err == nil && len(st.Queues) == 1 && st.Queues[0].Waiting == 2
	})
	_, err := c.RetrieveWait(ctx, "w")
	expectLimit(t, "a third waiting retrieve", err, "max-waiting")
	stopWaiting()
	wg.Wait()

	// Two connections are open (c, observer): the same uid may not open a
	// third.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = machq.Dial(dctx, path)
	expectLimit(t, "a third connection of one uid", err, "max-connections-per-uid")
	observer.Close()
	waitFor(t, "a connection slot freed", func() bool {
		d, err := machq.Dial(dctx, path)
		if err == nil {
			d.Close()
		}
		return err == nil
	})
}

// TestConnectionLimit checks the limit on connections in all.
func TestConnectionLimit(t *testing.T) {
	_, path := startServer(t, server.Config{Limits: server.Limits{MaxConnections: 1}})
	ctx := testCtx(t)
	first := dial(t, path)
	_, err := machq.Dial(ctx, path)
	expectLimit(t, "a second connection", err, "max-connections")
	if _, err := first.Send(ctx, "", []byte("still served")); err != nil {
		t.Fatalf("the first connection after the refusal: %v", err)
	}
}

// TestPageLimit checks the limit on stored pages, the open descriptors a
// server must budget for: inline payloads pass, the page over the limit
// is refused and closed.
func TestPageLimit(t *testing.T) {
	_, path := startServer(t, server.Config{Limits: server.Limits{MaxStoredPages: 2}})
	c := dial(t, path, machq.WithInlineThreshold(0), machq.WithSparePage(0))
	ctx := testCtx(t)
	for i := range 2 {
		if _, err := c.Send(ctx, "p", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	base := openFDs(t)
	expectLimit(t, "a third page", errOf(c.Send(ctx, "p", []byte{2})), "max-stored-pages")
	waitFDsReleased(t, "the refused page closed", base)
	if err := c.SendBatch(ctx, "p", [][]byte{nil}); err != nil { // empty: no page
		t.Fatalf("an empty payload with the pages at their limit: %v", err)
	}
	m, err := c.Retrieve(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if _, err := c.Send(ctx, "p", []byte{3}); err != nil {
		t.Fatalf("a page after one was retrieved: %v", err)
	}
}

// expectMessage is clienttest.ExpectMessage.
var expectMessage = clienttest.ExpectMessage

// errOf returns a store's error, dropping its sequence number.
func errOf(_ uint64, err error) error { return err }
