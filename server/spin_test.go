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
