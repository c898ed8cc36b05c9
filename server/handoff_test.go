package server_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/server"
)

// TestHandoffAndAdoptInProcess: what one server hands over, a new one
// adopts and serves, on the same socket, with every memory-only message,
// as machqd does when execve fails and it takes its state back.
func TestHandoffAndAdoptInProcess(t *testing.T) {
	ctx := context.Background()
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	if _, err := c.Send(ctx, "kept", []byte("handed over")); err != nil {
		t.Fatal(err)
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := srv.Handoff(hctx)
	if err != nil {
		t.Fatal(err)
	}
	next, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ls, err := next.Adopt(st)
	if err != nil || len(ls) != 1 {
		t.Fatalf("Adopt: %d listeners, %v", len(ls), err)
	}
	done := make(chan error, 1)
	go func() { done <- next.Serve(ls[0]) }()
	t.Cleanup(func() {
		next.Close()
		<-done
	})
	c2 := dial(t, path)
	m, err := c2.Retrieve(ctx, "kept")
	if err != nil || string(m.Bytes()) != "handed over" {
		t.Fatalf("from the adopting server: %v", err)
	}
}

// TestHandoffFailsBeforeAnythingStops: a handoff that cannot duplicate a
// socket (out of descriptors here) fails with the server still serving
// its connections.
func TestHandoffFailsBeforeAnythingStops(t *testing.T) {
	ctx := context.Background()
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	if _, err := c.Send(ctx, "kept", []byte("still here")); err != nil {
		t.Fatal(err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	// The lowest free descriptor number: with the limit there, no new
	// descriptor can be made.
	free, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(free)
	low := lim
	low.Cur = uint64(free)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	_, herr := srv.Handoff(ctx)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if herr == nil || !errors.Is(herr, unix.EMFILE) {
		t.Fatalf("a handoff out of descriptors: %v, want EMFILE", herr)
	}
	m, err := c.Retrieve(ctx, "kept")
	if err != nil || string(m.Bytes()) != "still here" {
		t.Fatalf("after a failed handoff the connection gets %v", err)
	}
	dial(t, path).Close() // and new ones are accepted
}
