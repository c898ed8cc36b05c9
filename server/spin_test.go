package server_test

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/wiretest"
	"github.com/machq/machq/server"
)

// TestSpinIsBounded: with --spin, busy clients make the server's readers
// spin, never more of them at once than SpinReaders, and every message
// still arrives whole and in order.
func TestSpinIsBounded(t *testing.T) {
	srv, path := startServer(t, server.Config{Spin: 2 * time.Millisecond, SpinReaders: 1})
	ctx := testCtx(t)
	const clients, rounds = 8, 300
	var most, seen atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			runtime.Gosched()
			n := int64(srv.Spinning())
			if n > 0 {
				seen.Add(1)
			}
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for i := range clients {
		c := dial(t, path, machq.WithDigest(machq.DigestNone), machq.WithSpin(time.Millisecond))
		wg.Go(func() {
			q := fmt.Sprintf("spin-%d", i)
			for r := range rounds {
				want := []byte(fmt.Sprintf("%d/%d", i, r))
				if _, err := c.Send(ctx, q, want); err != nil {
					t.Error(err)
					return
				}
				m, err := c.Retrieve(ctx, q)
				if err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(m.Bytes(), want) {
					t.Errorf("client %d round %d: got %q", i, r, m.Bytes())
				}
				m.Close()
			}
		})
	}
	wg.Wait()
	close(stop)
	<-sampled
	if m := most.Load(); m > 1 {
		t.Fatalf("%d readers spun at once, SpinReaders is 1", m)
	}
	if seen.Load() == 0 {
		t.Fatal("no reader was ever seen spinning")
	}
	waitFor(t, "spinning to stop", func() bool { return srv.Spinning() == 0 })
}

// TestIdleConnectionsDoNotSpin: with --spin, 300 connections that
// said HELLO and went quiet spin at most once each (their first wait),
// bounded by SpinReaders, and then park: no reader spins while they idle,
// and a busy client among them is still served.
func TestIdleConnectionsDoNotSpin(t *testing.T) {
	srv, path := startServer(t, server.Config{Spin: time.Millisecond, SpinReaders: 2})
	for range 300 {
		c := wiretest.DialHello(t, path)
		t.Cleanup(func() { c.UC.Close() })
	}
	waitFor(t, "300 connections", func() bool { return srv.Stats().Clients >= 300 })
	waitFor(t, "the idle readers parked", func() bool { return srv.Spinning() == 0 })
	for range 100 {
		if n := srv.Spinning(); n != 0 {
			t.Fatalf("%d readers spinning among idle connections", n)
		}
		runtime.Gosched()
	}
	ctx := testCtx(t)
	c := dial(t, path, machq.WithDigest(machq.DigestNone))
	for i := range 100 {
		want := []byte(fmt.Sprint(i))
		if _, err := c.Send(ctx, "busy", want); err != nil {
			t.Fatal(err)
		}
		m, err := c.Retrieve(ctx, "busy")
		if err != nil || !bytes.Equal(m.Bytes(), want) {
			t.Fatalf("round %d: %v", i, err)
		}
		m.Close()
	}
}
