// Package peertest is what the tests of the benchmark's peer packages
// (floor, mqueue) share: a peer's accept loop run inside the test process,
// descriptor counting, and payloads to send and check.
package peertest

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/machq/machq/internal/bench/rawsock"
)

// WaitLimit bounds every wait for the server.
const WaitLimit = 20 * time.Second

// Server is a peer's serve loop running in the test process.
type Server struct {
	Path   string // the socket it listens on
	cancel context.CancelFunc
	done   chan error // serve's result
	conns  chan error // each connection's outcome, once it is freed
}

// Start listens on a socket called name in a temporary directory and runs
// serve on it until Stop or the end of the test. serve must call connDone
// with each connection's outcome once the connection is freed.
func Start(t testing.TB, name string, serve func(ctx context.Context, ln int, connDone func(error)) error) *Server {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	ln, err := rawsock.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Path: path, cancel: cancel, done: make(chan error, 1), conns: make(chan error, 64)}
	go func() { s.done <- serve(ctx, ln, func(err error) { s.conns <- err }) }()
	t.Cleanup(func() { s.Stop(t) })
	return s
}

// Stop cancels serve and checks that it returns nil. It is safe to call
// more than once.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.done == nil {
		return
	}
	s.cancel()
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("Serve returned %v after cancel", err)
		}
	case <-time.After(WaitLimit):
		t.Fatal("Serve did not return after cancel")
	}
	s.done = nil
}

// ConnEnded waits for the next connection to be freed and returns its
// outcome.
func (s *Server) ConnEnded(t testing.TB) error {
	t.Helper()
	select {
	case err := <-s.conns:
		return err
	case <-time.After(WaitLimit):
		t.Fatal("connection was not freed")
		return nil
	}
}

// Client is what the peers' clients have in common.
type Client interface {
	RoundTrip(p []byte, got func([]byte)) error
	Close() error
}

// CloseClient closes c, twice (the second must be harmless), checks that
// a round trip then fails, that the peer's connection ended cleanly, and
// that the test process is back to base descriptors.
func (s *Server) CloseClient(t testing.TB, c Client, base, round int) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := c.RoundTrip([]byte("x"), func([]byte) {}); err == nil {
		t.Error("RoundTrip after Close succeeded")
	}
	if err := s.ConnEnded(t); err != nil {
		t.Errorf("connection ended with %v", err)
	}
	if n := CountFDs(t); n != base {
		t.Fatalf("round %d: %d descriptors after Close, want %d", round, n, base)
	}
}

// CountFDs returns how many descriptors the test process has open.
func CountFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// Payload returns size pseudo-random bytes, different for each seed and
// size.
func Payload(size int, seed uint64) []byte {
	p := make([]byte, size)
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	s[2], s[3], s[4] = byte(size), byte(size>>8), byte(size>>16)
	rand.NewChaCha8(s).Read(p)
	return p
}

// Expect returns a got callback that checks each payload against want
// and counts the calls.
func Expect(t testing.TB, want []byte, calls *int) func([]byte) {
	return func(b []byte) {
		*calls++
		if !bytes.Equal(b, want) {
			t.Errorf("got %d bytes, want %d bytes (first difference at %d)", len(b), len(want), firstDiff(b, want))
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
