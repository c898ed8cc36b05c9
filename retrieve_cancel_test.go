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
	stop := make(chan struct{})
	var wg sync.WaitGroup
	consumers := giveUpLoops(t, path, clients, perClient, 0, 4, 0, stop, &wg, func(ctx context.Context, c *machq.Client, r *rand.Rand, op int) {
		switch op {
		case 0:
			m, err := c.Retrieve(ctx, "s")
			if m != nil {
				record(m)
			}
			unexpectedErr(t, "Retrieve", ctx, err)
		case 1, 2:
			m, err := c.RetrieveWait(ctx, "s")
			if m != nil {
				record(m)
			}
			unexpectedErr(t, "RetrieveWait", ctx, err)
		case 3:
			ms, err := c.RetrieveBatch(ctx, "s", 1+r.IntN(8))
			for _, m := range ms {
				record(m)
			}
			unexpectedErr(t, "RetrieveBatch", ctx, err)
		}
	})
	producer := cancelDial(t, path)
	for i := range messages {
		if _, err := producer.Send(context.Background(), "s", numbered(i)); err != nil {
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

// TestCancelledReservesLoseNothing is TestCancelledRetrievesLoseNothing
// in ack mode: many goroutines on a few clients reserve (waiting, without
// waiting, and in batches) with contexts that end at random moments, by
// deadline or by cancel, while a producer stores numbered messages. A
// delivery handed over just as its caller gave up stays pending with the
// client and comes out of a later reserve, so every message must be
// delivered exactly once (never redelivered: no delivery went astray)
// and acknowledged exactly once, and the server must end with nothing
// pending and its counters agreeing.
func TestCancelledReservesLoseNothing(t *testing.T) {
	const messages, clients, perClient, window = 5000, 4, 8, 64
	path := inProcessServer(t)
	var mu sync.Mutex
	delivered := make(map[uint64]int)
	acked := make(map[uint64]int)
	progress := make(chan struct{}, 1)
	ackedCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	handle := func(d *machq.Delivery) {
		i := binary.LittleEndian.Uint64(d.Bytes())
		n := d.Deliveries()
		mu.Lock()
		delivered[i]++
		mu.Unlock()
		if n != 1 {
			t.Errorf("message %d came with deliveries %d: an earlier delivery went astray", i, n)
		}
		err := d.Ack(context.Background())
		d.Close()
		if err != nil || d.Outcome() != machq.Acked {
			t.Errorf("ACK of message %d: %v (%s)", i, err, d.Outcome())
			return
		}
		mu.Lock()
		acked[i]++
		mu.Unlock()
		select {
		case progress <- struct{}{}:
		default:
		}
	}

	// The queue is owned, so that it is never removed while idle and
	// STATS keeps its counters in view; the consumers are its owner's.
	producer := cancelDial(t, path, machq.WithOwnedQueues())
	if err := producer.Configure(context.Background(), "s", machq.QueueConfig{}); err != nil {
		t.Fatalf("creating the owned queue: %v", err)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	// Reserves without a wait (ops 0 and 1) are answered at once: they
	// give up within their round trip.
	consumers := giveUpLoops(t, path, clients, perClient, 100, 8, 2, stop, &wg, func(ctx context.Context, c *machq.Client, r *rand.Rand, op int) {
		switch op {
		case 0:
			dl, err := c.Reserve(ctx, "s", nil)
			if dl != nil {
				handle(dl)
			}
			unexpectedErr(t, "Reserve", ctx, err)
		case 1:
			ds, err := c.ReserveBatch(ctx, "s", 1+r.IntN(8), nil)
			for _, dl := range ds {
				handle(dl)
			}
			unexpectedErr(t, "ReserveBatch", ctx, err)
		default:
			dl, err := c.ReserveWait(ctx, "s", nil)
			if dl != nil {
				handle(dl)
			}
			unexpectedErr(t, "ReserveWait", ctx, err)
		}
	})
	// The producer stores in bursts of random length and waits, after
	// each, until the consumers have caught up: so that messages arrive
	// both while reserves wait and give up (the queue often empty) and
	// while reserves without a wait find them in line and give up before
	// their answer comes.
	abort := func(format string, args ...any) {
		t.Helper()
		close(stop)
		wg.Wait()
		t.Fatalf(format, args...)
	}
	pr := rand.New(rand.NewPCG(7, 7))
	for i := 0; i < messages; {
		for burst := 1 + pr.IntN(window); burst > 0 && i < messages; burst-- {
			if _, err := producer.Send(context.Background(), "s", numbered(i)); err != nil {
				abort("store %d: %v", i, err)
			}
			i++
		}
		target := i - pr.IntN(window)
		deadline := time.After(30 * time.Second)
		for ackedCount() < target {
			select {
			case <-progress:
			case <-deadline:
				abort("after %d stores, only %d messages acknowledged in 30s", i, ackedCount())
			}
		}
	}
	close(stop)
	wg.Wait()
	// What gave-up reserves left pending with their clients comes out of
	// the next reserves on the same clients.
	deadline := time.Now().Add(30 * time.Second)
	for ackedCount() < messages && time.Now().Before(deadline) {
		for _, c := range consumers {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			if d, _ := c.ReserveWait(ctx, "s", nil); d != nil {
				handle(d)
			}
			cancel()
		}
	}
	mu.Lock()
	var missing, twice, ackedTwice []uint64
	for i := range uint64(messages) {
		switch n := delivered[i]; {
		case n == 0:
			missing = append(missing, i)
		case n > 1:
			twice = append(twice, i)
		}
		if acked[i] > 1 {
			ackedTwice = append(ackedTwice, i)
		}
	}
	unackedCount := messages - len(acked)
	mu.Unlock()
	if len(missing) > 0 || len(twice) > 0 || len(ackedTwice) > 0 || unackedCount != 0 {
		t.Fatalf("%d messages lost (first %v), %d delivered twice (first %v), %d acknowledged twice, %d not acknowledged",
			len(missing), missing[:min(10, len(missing))], len(twice), twice[:min(10, len(twice))], len(ackedTwice), unackedCount)
	}
	st, err := producer.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var q *machq.QueueStats
	for i := range st.Queues {
		if st.Queues[i].Name == "s" {
			q = &st.Queues[i]
		}
	}
	if q == nil {
		t.Fatal("STATS lists no queue s")
	}
	if q.Messages != 0 || q.Pending != 0 || q.Delayed != 0 || q.Delivered != messages || q.Redelivered != 0 || q.Acked != messages || q.Nacked != 0 || q.DeadLettered != 0 {
		t.Fatalf("queue s after every message was acknowledged once: %+v", *q)
	}
	if st.Messages != 0 || st.Pending.Messages != 0 || st.Unsent.Messages != 0 {
		t.Fatalf("the server still holds %d messages (%d pending, %d unsent)", st.Messages, st.Pending.Messages, st.Unsent.Messages)
	}
}

// cancelDial connects a client to path, closed when the test ends.
func cancelDial(t *testing.T, path string, opts ...machq.Option) *machq.Client {
	t.Helper()
	c, err := machq.Dial(context.Background(), path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// giveUpLoops starts perClient goroutines on each of clients new clients
// of path, which call step with their client, a context that ends at a
// random moment (by its deadline, or one time in four by a cancel) and
// their own random source, until stop is closed; wg counts them. op is
// drawn first, from [0, ops): step's choice, which it receives and which
// shortens the context to a thirtieth for op below short (a request
// answered at once given up within its round trip). It returns the
// clients.
func giveUpLoops(t *testing.T, path string, clients, perClient int, seed uint64, ops, short int, stop <-chan struct{}, wg *sync.WaitGroup,
	step func(ctx context.Context, c *machq.Client, r *rand.Rand, op int)) []*machq.Client {
	consumers := make([]*machq.Client, clients)
	for ci := range consumers {
		c := cancelDial(t, path)
		consumers[ci] = c
		for g := range perClient {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(ci), uint64(g)+seed))
				for {
					select {
					case <-stop:
						return
					default:
					}
					op := r.IntN(ops)
					d := time.Duration(r.IntN(3000)) * time.Microsecond
					if op < short {
						d /= 30
					}
					ctx, cancel := context.WithTimeout(context.Background(), d)
					if r.IntN(4) == 0 { // ended by cancel, not by a deadline
						cancel()
						ctx, cancel = context.WithCancel(context.Background())
						time.AfterFunc(d, cancel)
					}
					step(ctx, c, r, op)
					cancel()
				}
			})
		}
	}
	return consumers
}

// unexpectedErr reports err unless it is ErrEmpty or the end of ctx,
// which a request given up at a random moment may meet.
func unexpectedErr(t *testing.T, what string, ctx context.Context, err error) {
	if err != nil && !errors.Is(err, machq.ErrEmpty) && ctx.Err() == nil {
		t.Errorf("%s: %v", what, err)
	}
}

// numbered returns the payload of message i: its number, in a page for
// every 97th.
func numbered(i int) []byte {
	b := make([]byte, 8)
	if i%97 == 0 {
		b = make([]byte, 70<<10)
	}
	binary.LittleEndian.PutUint64(b, uint64(i))
	return b
}
