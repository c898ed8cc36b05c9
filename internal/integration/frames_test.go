package integration_test

import (
	"errors"
	"io"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/internal/wiretest"
)

// TestIntegrationStalledFrames opens many connections that each send the
// start of a 1 MiB inline STORE and stop: the server's memory follows
// the bytes that arrived, not the length declared, and every such
// connection is closed once --frame-timeout has passed, with a MALFORMED
// error saying why, while another client is served meanwhile.
func TestIntegrationStalledFrames(t *testing.T) {
	d := startDaemon(t, "", "--frame-timeout", "1s", "--log-level", "warn")
	ctx := ctxT(t)
	rss0 := d.rss()
	const conns = 300
	frame := wire.AppendStore(nil, 1, wire.Store{Queue: []byte("q"), Size: wire.MaxInline}, make([]byte, wire.MaxInline), false)
	stalled := make([]*wiretest.Conn, conns)
	for i := range stalled {
		stalled[i] = wiretest.DialHello(t, d.socket)
		stalled[i].Write(frame[:4096]) // declares 1 MiB, sends 4 KiB
	}
	// A guard on the whole server: memory the runtime hands out zeroed
	// need not be resident, so the reader's growth itself is measured
	// exactly by TestReaderGrowsWithArrivedBytes (wire).
	most := int64(64 << 20)
	if raceEnabled {
		most *= 4
	}
	if grown := d.rss() - rss0; grown > most {
		t.Errorf("server memory grew by %d MiB for %d connections that sent 4 KiB each of a frame declaring 1 MiB", grown>>20, conns)
	}
	innocent := dial(t, d.socket)
	if _, err := innocent.Send(ctx, "q", []byte("served")); err != nil {
		t.Fatalf("a client sending whole frames, beside stalled ones: %v", err)
	}
	for i, c := range stalled {
		f, err := c.ReadErr()
		if err != nil {
			t.Fatalf("stalled connection %d: %v; want an ERROR", i, err)
		}
		code, msg, _ := wire.ParseError(f.Body)
		if f.Op != wire.OpError || code != wire.CodeMalformed || !strings.Contains(msg, "frame-timeout") {
			t.Fatalf("stalled connection %d got %s %s %q; want MALFORMED naming --frame-timeout", i, f.Op, code, msg)
		}
		if _, err := c.ReadErr(); !errors.Is(err, io.EOF) && !errors.Is(err, unix.ECONNRESET) {
			t.Fatalf("stalled connection %d after its error: %v; want it closed", i, err)
		}
	}
	if !strings.Contains(d.logs.String(), "stalled frame") {
		t.Errorf("no stalled frame logged:\n%s", d.logs)
	}
	// The innocent client and the one asking remain.
	waitFor(t, "the stalled connections to be gone", func() bool { return d.stats().Clients == 2 })
}

// TestIntegrationDescriptorInsideFrame sends a page with bytes in the
// middle of a frame that never ends: the connection is closed at once,
// without waiting for the frame, and the server keeps no descriptor of
// it.
func TestIntegrationDescriptorInsideFrame(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	idle := d.idleFDs()
	page := sealedSparse(t, 1<<20, "a", "b")
	c := wiretest.DialHello(t, d.socket)
	frame := wire.AppendStore(nil, 1, wire.Store{Queue: []byte("q"), Size: 1 << 19}, make([]byte, 1<<19), false)
	c.Write(frame[:1000])
	c.Write(frame[1000:2000], int(page.Fd()))
	f, err := c.ReadErr()
	if err != nil {
		t.Fatalf("%v; want an ERROR at once", err)
	}
	code, msg, _ := wire.ParseError(f.Body)
	if f.Op != wire.OpError || code != wire.CodeMalformed || !strings.Contains(msg, "inside") {
		t.Fatalf("got %s %s %q; want MALFORMED saying the descriptor came inside a frame", f.Op, code, msg)
	}
	c.UC.Close()
	waitFor(t, "the server to hold no descriptor of that connection", func() bool { return d.fds() == idle })
}

// TestIntegrationManyDescriptorsOneSendmsg sends a frame with more
// descriptors than any frame may carry: the server never installs them
// (they are dropped by the kernel) and closes the connection with an
// error saying so.
func TestIntegrationManyDescriptorsOneSendmsg(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	idle := d.idleFDs()
	page := sealedSparse(t, 1<<20, "a", "b")
	c := wiretest.DialHello(t, d.socket)
	fds := make([]int, wire.MaxFDsPerWrite)
	for i := range fds {
		fds[i] = int(page.Fd())
	}
	c.Write(wire.AppendStat(nil, 1), fds...)
	f, err := c.ReadErr()
	if err != nil {
		t.Fatalf("%v; want an ERROR", err)
	}
	if code, msg, _ := wire.ParseError(f.Body); f.Op != wire.OpError || code != wire.CodeMalformed || !strings.Contains(msg, "MSG_CTRUNC") {
		t.Fatalf("got %s %s %q; want MALFORMED about the truncated descriptors", f.Op, code, msg)
	}
	c.UC.Close()
	waitFor(t, "the server to hold no descriptor of that connection", func() bool { return d.fds() == idle })
}
