package integration_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/machq/machq"
)

// TestDurableGroupsSurviveSIGKILL: the consumer groups of a durable
// queue, created with the CLI, come back after machqd is SIGKILLed with
// what each group had not acknowledged, a delivery pending at the kill
// redelivered, and the page fanned out to both groups intact.
func TestDurableGroupsSurviveSIGKILL(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	socket := filepath.Join(t.TempDir(), "machq.sock")
	d := startDaemon(t, socket, "--data-dir", dir)
	ctx := ctxT(t)
	for _, g := range []string{"billing", "audit"} {
		if r := runCLI(t, nil, "group", "create", "--socket", socket, "--queue", "orders", "--group", g); r.code != 0 {
			t.Fatalf("machq group create %s: exit %d: %s", g, r.code, r.stderr)
		}
	}
	c := dial(t, socket)
	for i := range 3 {
		if _, err := c.Send(ctx, "orders", []byte(fmt.Sprint("order ", i))); err != nil {
			t.Fatal(err)
		}
	}
	big := bytes.Repeat([]byte("fan-out "), 128<<10) // 1 MiB: a page
	if _, err := c.Send(ctx, "orders", big); err != nil {
		t.Fatal(err)
	}
	take := func(group string) *machq.Delivery {
		t.Helper()
		dv, err := c.Reserve(ctx, "orders", &machq.AckOptions{Group: group})
		if err != nil {
			t.Fatalf("reserve from %s: %v", group, err)
		}
		return dv
	}
	// billing acknowledges order 0 and holds order 1; audit acknowledges
	// everything but the page.
	dv := take("billing")
	if err := dv.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	held := take("billing")
	if string(held.Bytes()) != "order 1" {
		t.Fatalf("billing's second message: %q", held.Bytes())
	}
	for range 3 {
		dv := take("audit")
		if err := dv.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A durable answer after the delivery: its record is on disk too.
	if _, err := c.Send(ctx, "other", []byte("x")); err != nil {
		t.Fatal(err)
	}
	d.kill()

	startDaemon(t, socket, "--data-dir", dir)
	c = dial(t, socket)
	dv = take("billing")
	if string(dv.Bytes()) != "order 1" || !dv.Redelivered() {
		t.Fatalf("billing after the kill: %q, redelivered %v; want order 1, redelivered", dv.Bytes(), dv.Redelivered())
	}
	if err := dv.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"order 2", "page"} {
		dv := take("billing")
		if want == "page" && !bytes.Equal(dv.Bytes(), big) || want != "page" && string(dv.Bytes()) != want {
			t.Fatalf("billing after the kill: %d bytes, want %s", len(dv.Bytes()), want)
		}
		if err := dv.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	dv = take("audit")
	if !bytes.Equal(dv.Bytes(), big) {
		t.Fatalf("audit after the kill: %d bytes, want the page", len(dv.Bytes()))
	}
	if err := dv.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"billing", "audit"} {
		if _, err := c.Reserve(ctx, "orders", &machq.AckOptions{Group: g}); err == nil {
			t.Fatalf("group %s holds more than it was sent", g)
		}
	}
}

// TestDurableGroupsKillLoop SIGKILLs machqd at random moments while a
// producer stores into a durable queue with two consumer groups and a
// consumer of each group acknowledges (and sometimes NAKs, or holds and
// drops its connection). At the end each group is drained: every message
// whose store was answered is in each group or was acknowledged by it,
// none whose ACK was answered comes back to that group, and nothing
// never stored appears (a message whose ACK was sent and not answered
// may be in the group or not). MACHQ_KILL_ROUNDS sets the rounds (5 by
// default; scripts/test.sh runs a third of its kill loop's after the
// suite).
func TestDurableGroupsKillLoop(t *testing.T) {
	rounds := 5
	if v, err := strconv.Atoi(os.Getenv("MACHQ_KILL_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := filepath.Join(t.TempDir(), "data")
	socket := filepath.Join(t.TempDir(), "machq.sock")
	groups := []string{"g1", "g2"}
	d := startDaemon(t, socket, "--data-dir", dir)
	ctx := ctxT(t)
	setup := dial(t, socket)
	for _, g := range groups {
		if _, _, err := setup.CreateGroup(ctx, "kq", g, false); err != nil {
			t.Fatal(err)
		}
	}
	setup.Close()

	var mu sync.Mutex
	tried := map[string]bool{}                               // every store attempted
	stored := map[string]bool{}                              // stores answered
	acked := map[string]map[string]bool{"g1": {}, "g2": {}}  // ACKs answered
	acking := map[string]map[string]bool{"g1": {}, "g2": {}} // ACKs sent: in doubt if not answered
	next := 0
	payload := func(id string, page bool) []byte {
		if !page {
			return []byte(id)
		}
		return append([]byte(id+"|"), bytes.Repeat([]byte("p"), 128<<10)...)
	}
	idOf := func(b []byte) string { id, _, _ := bytes.Cut(b, []byte("|")); return string(id) }

	for round := range rounds {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		// each runs step on a connection of its own until the round
		// stops or step fails.
		each := func(step func(c *machq.Client) bool) {
			wg.Go(func() {
				c, err := machq.Dial(ctx, socket)
				if err != nil {
					return
				}
				defer c.Close()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if !step(c) {
						return
					}
				}
			})
		}
		each(func(c *machq.Client) bool {
			mu.Lock()
			next++
			id := fmt.Sprintf("m%d", next)
			page := next%8 == 0
			tried[id] = true
			mu.Unlock()
			if _, err := c.Send(ctx, "kq", payload(id, page)); err != nil {
				return false
			}
			mu.Lock()
			stored[id] = true
			mu.Unlock()
			return true
		})
		for _, g := range groups {
			r := rand.New(rand.NewPCG(rng.Uint64(), 1))
			each(func(c *machq.Client) bool {
				wait, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
				dv, err := c.ReserveWait(wait, "kq", &machq.AckOptions{Group: g, Credit: 4})
				cancel()
				if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, machq.ErrEmpty) {
					return true
				}
				if err != nil {
					return false
				}
				id := idOf(dv.Bytes())
				switch n := r.IntN(10); {
				case n < 8:
					mu.Lock()
					acking[g][id] = true
					mu.Unlock()
					if err := dv.Ack(ctx); err == nil {
						mu.Lock()
						acked[g][id] = true
						mu.Unlock()
					}
				case n < 9:
					dv.Nak(ctx, 0, "later")
				}
				// else: held until the connection ends
				dv.Close()
				return true
			})
		}
		// Kill once some more stores were answered, at a random count.
		mu.Lock()
		before := len(stored)
		mu.Unlock()
		want := 5 + rng.IntN(80)
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			n := len(stored) - before
			mu.Unlock()
			if n >= want || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		d.kill()
		close(stop)
		wg.Wait()
		d = startDaemon(t, socket, "--data-dir", dir)
		t.Logf("round %d: %d stores answered", round, len(stored))
	}

	c := dial(t, socket)
	for _, g := range groups {
		drained := map[string]bool{}
		for {
			dv, err := c.Reserve(ctx, "kq", &machq.AckOptions{Group: g})
			if errors.Is(err, machq.ErrEmpty) {
				break
			}
			if err != nil {
				t.Fatalf("draining %s: %v", g, err)
			}
			id := idOf(dv.Bytes())
			if !tried[id] {
				t.Fatalf("group %s holds %q, never stored", g, id)
			}
			if acked[g][id] {
				t.Fatalf("group %s gave back %s after its ACK was answered", g, id)
			}
			if drained[id] {
				t.Fatalf("group %s holds %s twice", g, id)
			}
			drained[id] = true
			if err := dv.Ack(ctx); err != nil {
				t.Fatal(err)
			}
			dv.Close()
		}
		for id := range stored {
			// An ACK sent and cut short by the kill may have been done.
			if !drained[id] && !acked[g][id] && !acking[g][id] {
				t.Errorf("group %s lost %s, whose store was answered", g, id)
			}
		}
		t.Logf("group %s: %d acknowledged during the kills, %d drained", g, len(acked[g]), len(drained))
	}
	if len(stored) == 0 {
		t.Fatal("no store was answered in any round")
	}
	if t.Failed() {
		st, err := c.Stat(ctx)
		if err == nil {
			for _, q := range st.Queues {
				t.Logf("queue %s: %d messages, pending %d, groups %+v", q.Name, q.Messages, q.Pending, q.Groups)
			}
		}
	}
}
