package machq_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/wire"
)

// fakeServer accepts one connection, completes the handshake, and hands
// the connection to serve, which plays a misbehaving server.
func fakeServer(t *testing.T, serve func(uc *net.UnixConn, rd *wire.Reader)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		uc, err := l.AcceptUnix()
		if err != nil {
			return
		}
		defer uc.Close()
		rd := wire.NewReader(uc)
		defer rd.Close()
		f, err := rd.ReadFrame()
		if err != nil || f.Op != wire.OpHello {
			return
		}
		uc.Write(wire.AppendWelcome(nil, f.ID, wire.Welcome{Version: wire.Version, MaxInline: wire.MaxInline, MaxFrame: wire.MaxFrameSize, MaxMessage: 1 << 40}))
		serve(uc, rd)
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return path
}

func TestClientRejectsAWrongResponse(t *testing.T) {
	path := fakeServer(t, func(uc *net.UnixConn, rd *wire.Reader) {
		f, err := rd.ReadFrame()
		if err != nil {
			return
		}
		uc.Write(wire.AppendStored(nil, f.ID, 1)) // STORED for a RETRIEVE
		rd.ReadFrame()                            // until the client goes
	})
	c, err := machq.Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if m, err := c.Retrieve(context.Background(), "q"); !errors.Is(err, machq.ErrProtocol) || m != nil {
		t.Fatalf("Retrieve answered by STORED: %v, %v; want ErrProtocol", m, err)
	}
}

func TestClientRefusesAnUnsealedPage(t *testing.T) {
	path := fakeServer(t, func(uc *net.UnixConn, rd *wire.Reader) {
		f, err := rd.ReadFrame()
		if err != nil {
			return
		}
		fd, _ := page.Create("unsealed")
		defer unix.Close(fd)
		page.Write(fd, []byte("mutable"))
		wire.Write(uc, wire.AppendMessage(nil, f.ID, wire.Message{Seq: 1, Size: 7}, nil, true), []int{fd})
		rd.ReadFrame()
	})
	c, err := machq.Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Retrieve(context.Background(), "q"); !errors.Is(err, machq.ErrTampered) {
		t.Fatalf("unsealed page from the server: %v; want ErrTampered", err)
	}
}

func TestSendHonoursContextWhenTheServerDoesNotRead(t *testing.T) {
	stop := make(chan struct{})
	path := fakeServer(t, func(uc *net.UnixConn, rd *wire.Reader) { <-stop })
	defer close(stop)
	c, err := machq.Dial(context.Background(), path, machq.WithInlineThreshold(1<<20), machq.WithDigest(machq.DigestNone))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		for {
			// Fill the socket buffers until a write blocks.
			if _, err := c.Send(ctx, "q", make([]byte, 1<<20)); err != nil {
				errc <- err
				return
			}
		}
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Send to a server that does not read: %v; want DeadlineExceeded", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Send ignored its context")
	}
	if _, err := c.Send(context.Background(), "q", nil); !errors.Is(err, machq.ErrClosed) {
		t.Fatalf("after an abandoned write: %v; want ErrClosed", err)
	}
}

// holdRetrieves plays a server that keeps every RETRIEVE waiting until
// its CANCEL arrives, and then answers it with answer(id). cancelled, if
// not nil, hears of each CANCEL (after the answer went out).
func holdRetrieves(t *testing.T, answer func(id uint64) []byte, cancelled chan<- struct{}) string {
	return fakeServer(t, func(uc *net.UnixConn, rd *wire.Reader) {
		for {
			f, err := rd.ReadFrame()
			if err != nil {
				return
			}
			if f.Op != wire.OpCancel {
				continue // held: never answered on its own
			}
			target, err := wire.ParseCancel(f.Body)
			if err != nil {
				t.Errorf("fake server: bad CANCEL: %v", err)
				return
			}
			if b := answer(target); b != nil {
				uc.Write(b)
			}
			if cancelled != nil {
				cancelled <- struct{}{}
			}
		}
	})
}

// TestRetrieveWaitTakesTheServersAnswer: when the context ends, the
// client cancels the wait and the server's answer decides. A message the
// server handed over just before the CANCEL is returned, not lost; any
// other failure is reported as itself, not as an expired wait.
func TestRetrieveWaitTakesTheServersAnswer(t *testing.T) {
	// The client closes before its fake server, which waits for it.
	dial := func(t *testing.T, path string) *machq.Client {
		c, err := machq.Dial(context.Background(), path, machq.WithDigest(machq.DigestNone))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	expire := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}

	t.Run("message handed over", func(t *testing.T) {
		path := holdRetrieves(t, func(id uint64) []byte {
			return wire.AppendMessage(nil, id, wire.Message{Seq: 7, Size: 4}, []byte("late"), false)
		}, nil)
		m, err := dial(t, path).RetrieveWait(expire(), "q")
		if err != nil || m == nil || string(m.Bytes()) != "late" {
			t.Fatalf("RetrieveWait = %v, %v; want the message handed over as the wait ended", m, err)
		}
		m.Close()
	})
	t.Run("cancelled", func(t *testing.T) {
		path := holdRetrieves(t, func(id uint64) []byte {
			return wire.AppendError(nil, id, wire.CodeCancelled, "retrieve cancelled by the client")
		}, nil)
		_, err := dial(t, path).RetrieveWait(expire(), "q")
		if !errors.Is(err, machq.ErrEmpty) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("RetrieveWait = %v; want ErrEmpty and DeadlineExceeded", err)
		}
	})
	t.Run("server failure", func(t *testing.T) {
		path := holdRetrieves(t, func(id uint64) []byte {
			return wire.AppendError(nil, id, wire.CodeInternal, "disk on fire")
		}, nil)
		_, err := dial(t, path).RetrieveWait(expire(), "q")
		var se *machq.ServerError
		if !errors.As(err, &se) || se.Code != machq.CodeInternal {
			t.Fatalf("RetrieveWait = %v; want the server's INTERNAL error, not an expired wait", err)
		}
	})
	t.Run("closed while the answer is awaited", func(t *testing.T) {
		cancels := make(chan struct{}, 1)
		path := holdRetrieves(t, func(uint64) []byte { return nil }, cancels)
		c := dial(t, path)
		errc := make(chan error, 1)
		go func() { _, err := c.RetrieveWait(expire(), "q"); errc <- err }()
		<-cancels // the client is awaiting the answer to its CANCEL
		c.Close()
		if err := <-errc; !errors.Is(err, machq.ErrClosed) {
			t.Fatalf("RetrieveWait = %v; want ErrClosed", err)
		}
	})
}

// TestRetrieveBatchKeepsWhatArrivesAfterItsContextEnds: answers that
// come after a RetrieveBatch's context ended are kept, and the next
// retrieve returns the message among them.
func TestRetrieveBatchKeepsWhatArrivesAfterItsContextEnds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	path := fakeServer(t, func(uc *net.UnixConn, rd *wire.Reader) {
		var ids []uint64
		for len(ids) < 2 {
			f, err := rd.ReadFrame()
			if err != nil {
				return
			}
			if f.Op == wire.OpRetrieve {
				ids = append(ids, f.ID)
			}
		}
		<-ctx.Done() // answer only once the batch's caller has given up
		var b []byte
		b = wire.AppendError(b, ids[0], wire.CodeEmpty, "queue q is empty")
		b = wire.AppendMessage(b, ids[1], wire.Message{Seq: 7, Size: 5}, []byte("hello"), false)
		uc.Write(b)
		for {
			f, err := rd.ReadFrame()
			if err != nil {
				return
			}
			if f.Op == wire.OpRetrieve {
				uc.Write(wire.AppendError(nil, f.ID, wire.CodeEmpty, "queue q is empty"))
			}
		}
	})
	c, err := machq.Dial(context.Background(), path, machq.WithDigest(machq.DigestNone))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ms, err := c.RetrieveBatch(ctx, "q", 2)
	for _, m := range ms {
		if string(m.Bytes()) == "hello" {
			return // returned by the batch itself: fine too
		}
	}
	if err == nil {
		t.Fatalf("RetrieveBatch returned %d messages and no error", len(ms))
	}
	m, err := c.Retrieve(context.Background(), "q")
	if err != nil || string(m.Bytes()) != "hello" {
		t.Fatalf("next Retrieve = %v; want the message that arrived after the batch gave up", err)
	}
	m.Close()
}

// TestVersions: the library names its build, and a client learns the
// server's from the handshake.
func TestVersions(t *testing.T) {
	if v := machq.Version(); !strings.Contains(v, "(go1.") {
		t.Errorf("Version() = %q names no Go version", v)
	}
	c, err := machq.Dial(context.Background(), inProcessServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v := c.ServerVersion(); !strings.HasPrefix(v, "machqd ") || !strings.Contains(v, "(go1.") {
		t.Errorf("ServerVersion() = %q", v)
	}
}
