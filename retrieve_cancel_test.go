package machq_test

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/machq/machq"
)

// TestCancelledRetrievesLoseNothing has many goroutines on a few clients
// retrieve (plain, waiting and in batches) with contexts that end at
// random moments, some by deadline and some by cancel, while a producer
// stores numbered messages. Every message must be received exactly once:
// none dropped by a retrieve that gave up as it arrived, none twice.
func TestCancelledRetrievesLoseNothing(t *testing.T) {
	const messages, clients, perClient = 5000, 4, 8
	path := inProcessServer(t)
	dial := func() *machq.Client {
		c, err := machq.Dial(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var mu sync.Mutex
	seen := make(map[uint64]int)
	record := func(m *machq.Message) {
		i := binary.LittleEndian.Uint64(m.Bytes())
		m.Close()
		mu.Lock()
		seen[i]++
		mu.Unlock()
	}
	received := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}
	unexpected := func(what string, ctx context.Context, err error) {
		if err != nil && !errors.Is(err, machq.ErrEmpty) && ctx.Err() == nil {
			t.Errorf("%s: %v", what, err)
		}
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	consumers := make([]*machq.Client, clients)
	for ci := range consumers {
		c := dial()
		consumers[ci] = c
		for g := range perClient {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(ci), uint64(g)))
				for {
					select {
					case <-stop:
						return
					default:
					}
					d := time.Duration(r.IntN(3000)) * time.Microsecond
					ctx, cancel := context.WithTimeout(context.Background(), d)
					if r.IntN(4) == 0 { // ended by cancel, not by a deadline
						cancel()
						ctx, cancel = context.WithCancel(context.Background())
						time.AfterFunc(d, cancel)
					}
					switch r.IntN(4) {
					case 0:
						m, err := c.Retrieve(ctx, "s")
						if m != nil {
							record(m)
						}
						unexpected("Retrieve", ctx, err)
					case 1, 2:
						m, err := c.RetrieveWait(ctx, "s")
						if m != nil {
							record(m)
						}
						unexpected("RetrieveWait", ctx, err)
					case 3:
						ms, err := c.RetrieveBatch(ctx, "s", 1+r.IntN(8))
						for _, m := range ms {
							record(m)
						}
						unexpected("RetrieveBatch", ctx, err)
					}
					cancel()
				}
			}()
		}
	}
	producer := dial()
	for i := range messages {
		b := make([]byte, 8)
		if i%97 == 0 {
			b = make([]byte, 70<<10) // a page
		}
		binary.LittleEndian.PutUint64(b, uint64(i))
		if _, err := producer.Send(context.Background(), "s", b); err != nil {
			t.Fatal(err)
		}
		if i%64 == 0 {
			time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond) // pacing
		}
	}
	close(stop)
	wg.Wait()
	// What gave-up retrieves kept, or what was still on its way, comes
	// out of the next retrieves on the same clients.
	deadline := time.Now().Add(30 * time.Second)
	for received() < messages && time.Now().Before(deadline) {
		for _, c := range consumers {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			if m, _ := c.RetrieveWait(ctx, "s"); m != nil {
				record(m)
			}
			cancel()
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var missing, twice []uint64
	for i := range uint64(messages) {
		switch n := seen[i]; {
		case n == 0:
			missing = append(missing, i)
		case n > 1:
			twice = append(twice, i)
		}
	}
	if len(missing) > 0 || len(twice) > 0 {
		t.Fatalf("%d messages lost (first %v), %d received twice (first %v)", len(missing), missing[:min(10, len(missing))], len(twice), twice[:min(10, len(twice))])
	}
}
