// Package rawsocktest runs a benchmark peer's accept loop inside a test
// process, so that the peer packages' tests can start, stop and watch it.
package rawsocktest

import (
	"context"
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
