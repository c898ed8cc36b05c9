package server_test

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/internal/wiretest"
	"github.com/machq/machq/server"
)

// TestClosedConnectionLogsOnce: a connection the server closes for a
// protocol violation is logged once, with why, not once more as a
// failed request.
func TestClosedConnectionLogsOnce(t *testing.T) {
	var logs lockedBuffer
	_, path := startServer(t, server.Config{
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	const conns = 5
	for range conns {
		c := wiretest.DialHello(t, path)
		// A header no frame has: the reader gives up on the stream.
		c.Write(bytes.Repeat([]byte{0xff}, wire.HeaderSize))
		c.ExpectError(wire.CodeMalformed)
		if _, err := c.ReadErr(); !errors.Is(err, io.EOF) {
			t.Fatalf("after the violation: %v, want the end of the stream", err)
		}
	}
	// The warning is written before the ERROR is sent, so every one is
	// in the log by now.
	out := logs.String()
	if n := strings.Count(out, "closing connection: protocol violation"); n != conns {
		t.Fatalf("%d connections closed, %d warnings of it, want one each:\n%s", conns, n, out)
	}
	if n := strings.Count(out, "request failed"); n != 0 {
		t.Fatalf("each closed connection was also logged as a failed request (%d):\n%s", n, out)
	}
}

// TestStrayDescriptorsLogBounded: descriptors sent with requests that
// take none are closed, and one connection sending them again and again
// gets one warning a second, which counts the ones left out.
func TestStrayDescriptorsLogBounded(t *testing.T) {
	var logs lockedBuffer
	_, path := startServer(t, server.Config{
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	c := wiretest.DialHello(t, path)
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	const requests = 100
	start := time.Now()
	for i := range requests {
		// A STAT whose header announces the descriptor it carries.
		frame := make([]byte, wire.HeaderSize)
		wire.PutHeader(frame, wire.Header{Length: wire.HeaderSize, Op: wire.OpStat, NFDs: 1, ID: uint64(i + 1)})
		c.Write(frame, fd)
		if f := c.Read(); f.Op != wire.OpStats {
			t.Fatalf("STAT %d with a stray descriptor: got %s, want STATS", i+1, f.Op)
		}
	}
	out := logs.String()
	n := strings.Count(out, "closed descriptors sent with a request that takes none")
	// One per second that the requests took, and the first.
	most := 1 + int(time.Since(start)/time.Second)
	if n < 1 || n > most {
		t.Fatalf("%d stray descriptors logged %d warnings, want 1 to %d:\n%s", requests, n, most, out)
	}
}
