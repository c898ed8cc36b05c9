package server_test

import (
	"errors"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/internal/wiretest"
	"github.com/machq/machq/server"
)

// sealedSparse returns a sealed memfd of size bytes of which no page was
// ever touched.
func sealedSparse(t *testing.T, size int64) int {
	t.Helper()
	fd, err := page.Create("sparse")
	if err != nil {
		t.Fatal(err)
	}
	if err := page.Truncate(fd, size); err != nil {
		t.Fatal(err)
	}
	if err := page.Seal(fd); err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestHostileDescriptors sends descriptors of the wrong kind, in the
// wrong number, and sealed pages that lie about their size or claim more
// memory than the limits allow. Each request fails alone with a clear
// error, every descriptor is closed, no goroutine is left behind, and
// another client's data is intact.
func TestHostileDescriptors(t *testing.T) {
	srv, path := startServer(t, server.Config{Limits: server.Limits{MaxStoredBytes: 1 << 30}})
	other := dial(t, path)
	ctx := testCtx(t)
	if _, err := other.Send(ctx, "others", []byte("keep me")); err != nil {
		t.Fatal(err)
	}
	raw := wiretest.DialHello(t, path)
	baseFDs := openFDs(t)
	baseGoroutines := runtime.NumGoroutine()

	dir := t.TempDir()
	cases := []struct {
		name string
		fds  func() []int
		size uint64
		code wire.Code
		msg  string
	}{
		{"socket", func() []int {
			p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			unix.Close(p[1])
			return p[:1]
		}, 10, wire.CodeBadPage, "socket"},
		{"directory", func() []int {
			fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return []int{fd}
		}, 10, wire.CodeBadPage, "directory"},
		{"O_PATH descriptor of a sealed memfd", func() []int {
			fd := memfd(t, []byte("0123456789"), int(page.RequiredSeals))
			defer unix.Close(fd)
			p, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_PATH|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			return []int{p}
		}, 10, wire.CodeBadPage, ""},
		{"empty memfd declared as 10 bytes", func() []int { return []int{memfd(t, nil, int(page.RequiredSeals))} }, 10, wire.CodeBadPage, "size differs"},
		{"sparse 1 TiB page", func() []int { return []int{sealedSparse(t, 1<<40)} }, 1 << 40, wire.CodeTooLarge, "exceeds"},
		{"sparse 2 GiB page over the byte limit", func() []int { return []int{sealedSparse(t, 2<<30)} }, 2 << 30, wire.CodeLimit, "--max-stored-bytes"},
	}
	for i, tc := range cases {
		fds := tc.fds()
		frame := wire.AppendStore(nil, uint64(100+i), wire.Store{Size: tc.size, Queue: []byte("bad")}, nil, true)
		raw.Write(frame, fds...)
		for _, fd := range fds {
			unix.Close(fd)
		}
		msg := raw.ExpectError(tc.code)
		if tc.msg != "" && !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: error %q does not mention %q", tc.name, msg, tc.msg)
		}
	}

	// More descriptors than a frame may declare (one) break the framing:
	// the offender's connection is closed with MALFORMED, every
	// descriptor it sent is closed, and nobody else is disturbed.
	for _, n := range []int{3, wire.MaxFDsPerWrite} {
		bad := wiretest.DialHello(t, path)
		fds := make([]int, n)
		for i := range fds {
			fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			fds[i] = fd
		}
		frame := wire.AppendStore(nil, 1, wire.Store{Size: 10, Queue: []byte("bad")}, nil, true)
		frame[6] = byte(n) // the header's descriptor count
		bad.Write(frame, fds...)
		for _, fd := range fds {
			unix.Close(fd)
		}
		if msg := bad.ExpectError(wire.CodeMalformed); !strings.Contains(msg, "descriptors") {
			t.Errorf("%d descriptors: error %q does not say what was wrong", n, msg)
		}
		if _, err := bad.ReadErr(); err == nil {
			t.Errorf("%d descriptors: the connection stayed open", n)
		}
		bad.UC.Close()
	}
	// A descriptor sent with a request that takes none is closed, and the
	// request still served.
	efd, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
	frame := wire.AppendStat(nil, 500)
	frame[6] = 1
	raw.Write(frame, efd)
	unix.Close(efd)
	if f := raw.Read(); f.Op != wire.OpStats {
		t.Fatalf("STAT with a descriptor: got %s", f.Op)
	}

	waitFDsReleased(t, "every descriptor closed", baseFDs)
	waitFor(t, "no goroutine left behind", func() bool { return runtime.NumGoroutine() <= baseGoroutines })
	if st := srv.Stats(); st.Messages != 1 {
		t.Errorf("server holds %d messages, want only the other client's 1", st.Messages)
	}
	expectMessage(t, ctx, other, "others", "keep me", "other client's data")
}

// TestSilentClientIsDisconnected checks that a client that connects and
// sends nothing is told why and disconnected after the handshake timeout,
// while a client that said HELLO stays however long it idles.
func TestSilentClientIsDisconnected(t *testing.T) {
	_, path := startServer(t, server.Config{HandshakeTimeout: 100 * time.Millisecond})
	polite := dial(t, path)
	silent := wiretest.Dial(t, path)
	if msg := silent.ExpectError(wire.CodeMalformed); !strings.Contains(msg, "no HELLO") {
		t.Fatalf("silent client told %q", msg)
	}
	if _, err := silent.ReadErr(); err == nil {
		t.Fatal("silent client's connection stayed open")
	}
	// The polite client connected before the silent one and has idled
	// past the timeout since.
	if _, err := polite.Send(testCtx(t), "", []byte("still here")); err != nil {
		t.Fatalf("client that said HELLO, after the timeout: %v", err)
	}
}

// TestClientDyingMidRequest sends half of a STORE, with its page, and
// closes the connection: the server drops the half request, closes the
// page, and nothing of it is stored.
func TestClientDyingMidRequest(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	base := openFDs(t)
	raw := wiretest.DialHello(t, path)
	pg := memfd(t, []byte("0123456789"), int(page.RequiredSeals))
	frame := wire.AppendStore(nil, 1, wire.Store{Size: 10, Queue: []byte("half"), Digest: make([]byte, 32), DigestAlg: wire.DigestSHA256}, nil, true)
	raw.Write(frame[:len(frame)/2], pg) // the descriptor travels with the first byte
	unix.Close(pg)
	raw.UC.Close()
	waitFor(t, "the connection closed", func() bool { return srv.Stats().Clients == 0 })
	waitFDsReleased(t, "its page released", base)
	if st := srv.Stats(); st.Messages != 0 || st.Clients != 0 {
		t.Fatalf("after a client died mid-request: %d messages, %d clients", st.Messages, st.Clients)
	}
}

// TestClientThatNeverReads pipelines requests without reading a single
// answer: the server stops reading from it once its unsent answers reach
// their bound, so the client's writes block long before it has sent much,
// while another client is served as usual; when it leaves, everything it
// held is released.
func TestClientThatNeverReads(t *testing.T) {
	_, path := startServer(t, server.Config{})
	ctx := testCtx(t)
	other := dial(t, path)
	base := openFDs(t)
	greedy := wiretest.DialHello(t, path)

	var batch []byte
	for i := range 1024 {
		batch = wire.AppendStat(batch, uint64(i+1))
	}
	const most = 64 << 20 // far beyond the answers' bound and the socket buffers
	written := 0
	for written < most {
		greedy.UC.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := greedy.UC.Write(batch)
		written += n
		if err != nil {
			break // blocked: the server stopped reading
		}
	}
	if written >= most {
		t.Fatalf("wrote %d bytes of requests without reading, and the server kept reading them", written)
	}
	if _, err := other.Stat(ctx); err != nil {
		t.Fatalf("another client while one does not read: %v", err)
	}
	greedy.UC.Close()
	waitFDsReleased(t, "the greedy connection released", base)
	if _, err := other.Stat(ctx); err != nil {
		t.Fatalf("another client after the greedy one left: %v", err)
	}
	t.Logf("the server stopped reading after %d bytes of requests", written)
}

// lockedBuffer is a log destination safe for the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRefusalsDoNotFloodTheLog hammers a full queue: every request is
// refused, but the log gets one warning, not one per request.
func TestRefusalsDoNotFloodTheLog(t *testing.T) {
	var logs lockedBuffer
	_, path := startServer(t, server.Config{
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Limits: server.Limits{MaxQueueMessages: 1},
	})
	c := dial(t, path)
	ctx := testCtx(t)
	if _, err := c.Send(ctx, "full", []byte("x")); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if _, err := c.Send(ctx, "full", []byte("y")); !errors.Is(err, machq.ErrLimit) {
			t.Fatalf("store %d into a full queue: %v", i, err)
		}
	}
	if n := strings.Count(logs.String(), "request failed"); n < 1 || n > 3 {
		t.Fatalf("200 refusals logged %d warnings, want 1 to 3:\n%s", n, logs.String())
	}
}
