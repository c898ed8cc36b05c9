// Package wiretest is a raw protocol client for tests: it sends frames and
// descriptors exactly as given, including malformed ones, and reads the
// server's answers.
package wiretest

import (
	"net"
	"testing"
	"time"

	"github.com/machq/machq/internal/wire"
)

// Conn is a raw connection to a machq server.
type Conn struct {
	T  testing.TB
	UC *net.UnixConn
	rd *wire.Reader
}

// Dial connects to the socket at path without a handshake.
func Dial(t testing.TB, path string) *Conn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	return &Conn{T: t, UC: c, rd: wire.NewReader(c)}
}

// DialHello connects and completes the HELLO / WELCOME handshake.
func DialHello(t testing.TB, path string) *Conn {
	t.Helper()
	c := Dial(t, path)
	c.Write(wire.AppendHello(nil, 0, wire.Hello{MinVersion: wire.Version, MaxVersion: wire.Version}))
	f := c.Read()
	if f.Op != wire.OpWelcome {
		t.Fatalf("handshake: got %s, want WELCOME", f.Op)
	}
	return c
}

// Write sends b with fds attached, failing the test on error.
func (c *Conn) Write(b []byte, fds ...int) {
	c.T.Helper()
	if err := wire.Write(c.UC, b, fds); err != nil {
		c.T.Fatalf("write: %v", err)
	}
}

// Read returns the next frame, failing the test on error or after 10s.
func (c *Conn) Read() wire.Frame {
	c.T.Helper()
	f, err := c.ReadErr()
	if err != nil {
		c.T.Fatalf("read: %v", err)
	}
	return f
}

// ReadErr returns the next frame or the error, waiting at most 10s. The
// frame's Body is copied so it stays valid.
func (c *Conn) ReadErr() (wire.Frame, error) {
	c.UC.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := c.rd.ReadFrame()
	f.Body = append([]byte(nil), f.Body...)
	return f, err
}

// ExpectError reads the next frame and checks it is an ERROR with code.
// It returns the error message.
func (c *Conn) ExpectError(code wire.Code) string {
	c.T.Helper()
	f := c.Read()
	if f.Op != wire.OpError {
		c.T.Fatalf("got %s, want ERROR %s", f.Op, code)
	}
	got, msg, err := wire.ParseError(f.Body)
	if err != nil {
		c.T.Fatal(err)
	}
	if got != code {
		c.T.Fatalf("got ERROR %s (%s), want %s", got, msg, code)
	}
	return msg
}
