package machq_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
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
			if err := c.Send(ctx, "q", make([]byte, 1<<20)); err != nil {
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
	if err := c.Send(context.Background(), "q", nil); !errors.Is(err, machq.ErrClosed) {
		t.Fatalf("after an abandoned write: %v; want ErrClosed", err)
	}
}
