package integration_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/machq/machq"
)

// kill SIGKILLs the daemon and waits for it to be gone.
func (d *daemon) kill() {
	d.cmd.Process.Kill()
	<-d.exited
}

// TestDurableQueuesSurviveSIGKILL stores inline and page messages in a
// durable queue, takes some, acknowledges some, holds one unsettled, and
// SIGKILLs the server: the next one started on the data directory has
// every message not taken, in order, the page intact, the unsettled one
// marked redelivered, and none of those taken.
func TestDurableQueuesSurviveSIGKILL(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	socket := filepath.Join(t.TempDir(), "machq.sock")
	d := startDaemon(t, socket, "--data-dir", dir)
	ctx := ctxT(t)
	c := dial(t, socket)
	for i := range 6 {
		if _, err := c.Send(ctx, "jobs", []byte(fmt.Sprint("job ", i))); err != nil {
			t.Fatal(err)
		}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB: a page
	f, err := os.CreateTemp(t.TempDir(), "big")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(big)
	f.Seek(0, 0)
	if _, _, err := c.SendFile(ctx, "jobs", f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// job 0 taken without ack, job 1 acknowledged, job 2 held unsettled.
	m, err := c.Retrieve(ctx, "jobs")
	if err != nil || string(m.Bytes()) != "job 0" {
		t.Fatalf("retrieve: %v", err)
	}
	m.Close()
	dv, err := c.Reserve(ctx, "jobs", nil)
	if err != nil || string(dv.Bytes()) != "job 1" {
		t.Fatalf("reserve: %v", err)
	}
	if err := dv.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	held, err := c.Reserve(ctx, "jobs", nil)
	if err != nil || string(held.Bytes()) != "job 2" {
		t.Fatalf("reserve: %v", err)
	}
	// A durable store after the delivery: once it is answered, the
	// delivery's record is on disk too.
	if _, err := c.Send(ctx, "other", []byte("x")); err != nil {
		t.Fatal(err)
	}
	d.kill()

	d = startDaemon(t, socket, "--data-dir", dir)
	if !strings.Contains(d.logs.String(), "durable queues recovered") {
		t.Errorf("no recovery report in the logs:\n%s", d.logs)
	}
	c = dial(t, socket)
	st, err := c.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Durable == nil || st.Durable.Dir != dir || st.Durable.Sync != "every-store" || st.Durable.Failed != "" {
		t.Errorf("STATS durable: %+v", st.Durable)
	}
	for _, q := range st.Queues {
		if q.Name == "jobs" && (!q.Durable || q.Messages != 5) {
			t.Errorf("STATS of jobs after the restart: %+v; want durable, 5 messages", q)
		}
	}
	again, err := c.Reserve(ctx, "jobs", nil)
	if err != nil || string(again.Bytes()) != "job 2" {
		t.Fatalf("after the restart the first message: %v", err)
	}
	if !again.Redelivered() || again.Deliveries() != 2 {
		t.Errorf("the message pending at the crash: redelivered %v, deliveries %d; want it marked, delivered twice", again.Redelivered(), again.Deliveries())
	}
	if err := again.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	for i, w := range []string{"job 3", "job 4", "job 5"} {
		m, err := c.Retrieve(ctx, "jobs")
		if err != nil {
			t.Fatalf("after the restart, message %d: %v", i, err)
		}
		if string(m.Bytes()) != w {
			t.Fatalf("after the restart, message %d is %q, want %q", i, m.Bytes(), w)
		}
		m.Close()
	}
	m, err = c.Retrieve(ctx, "jobs")
	if err != nil {
		t.Fatalf("the page after the restart: %v", err)
	}
	if !m.OutOfLine() || !bytes.Equal(m.Bytes(), big) {
		t.Fatalf("the page after the restart: out of line %v, %d bytes, equal %v", m.OutOfLine(), m.Len(), bytes.Equal(m.Bytes(), big))
	}
	m.Close()
	if _, err := c.Retrieve(ctx, "jobs"); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("jobs after the last: %v, want empty", err)
	}
	// Everything taken: the payload files are gone.
	waitFor(t, "the payload files to be deleted", func() bool {
		ents, _ := os.ReadDir(filepath.Join(dir, "payloads"))
		return len(ents) == 0
	})
	// A second server on the same data directory refuses to start.
	other := filepath.Join(t.TempDir(), "other.sock")
	out, err := exec.Command(bin.machqd, "--socket", other, "--data-dir", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another server") {
		t.Fatalf("a second server on the data directory: %v\n%s", err, out)
	}
}

// TestDurableKillLoop SIGKILLs the server at random moments while
// producers store and consumers take with acknowledgements, starting it
// again each time on the same data directory: no acknowledged store is
// lost, no acknowledged message comes back, and each producer's messages
// stay in order. MACHQ_KILL_ROUNDS sets the rounds (default 5).
func TestDurableKillLoop(t *testing.T) {
	rounds := 5
	if v, err := strconv.Atoi(os.Getenv("MACHQ_KILL_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	dir := filepath.Join(t.TempDir(), "data")
	socket := filepath.Join(t.TempDir(), "machq.sock")
	rng := rand.New(rand.NewPCG(7, 8))
	queues := []string{"ka", "kb"}
	var mu sync.Mutex
	stored := map[string]bool{} // STORED answered
	acked := map[string]bool{}  // ACK answered
	acking := map[string]bool{} // ACK sent: its answer may have been lost
	next := map[int]int{}       // per producer
	for round := range rounds {
		d := startDaemon(t, socket, "--data-dir", dir, "--log-level", "warn")
		ctx, cancel := context.WithCancel(ctxT(t))
		var wg sync.WaitGroup
		for p := range 3 {
			wg.Go(func() {
				c, err := machq.Dial(ctx, socket)
				if err != nil {
					return
				}
				defer c.Close()
				for ctx.Err() == nil {
					mu.Lock()
					n := next[p]
					next[p]++
					mu.Unlock()
					payload := fmt.Sprintf("p%d-%06d", p, n)
					if _, err := c.Send(ctx, queues[p%2], []byte(payload)); err != nil {
						return
					}
					mu.Lock()
					stored[payload] = true
					mu.Unlock()
				}
			})
		}
		for k := range 2 {
			wg.Go(func() {
				c, err := machq.Dial(ctx, socket)
				if err != nil {
					return
				}
				defer c.Close()
				for ctx.Err() == nil {
					dv, err := c.ReserveWait(ctx, queues[k], nil)
					if err != nil {
						return
					}
					payload := string(dv.Bytes())
					dv.Close()
					mu.Lock()
					acking[payload] = true
					mu.Unlock()
					if err := dv.Ack(ctx); err != nil {
						return
					}
					mu.Lock()
					acked[payload] = true
					mu.Unlock()
				}
			})
		}
		// Kill once some more stores and acks have happened.
		mu.Lock()
		s0, a0 := len(stored), len(acked)
		mu.Unlock()
		wantS, wantA := 20+rng.IntN(200), 5+rng.IntN(50)
		waitFor(t, "stores and acknowledgements before the kill", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(stored)-s0 >= wantS && len(acked)-a0 >= wantA
		})
		d.kill()
		cancel()
		wg.Wait()
		t.Logf("round %d: %d stored, %d acknowledged so far", round, len(stored), len(acked))
	}
	// Drain what is left, and check it against what the clients saw.
	startDaemon(t, socket, "--data-dir", dir, "--log-level", "warn")
	c := dial(t, socket)
	ctx := ctxT(t)
	left := map[string]bool{}
	for _, q := range queues {
		last := map[string]int{}
		for {
			m, err := c.Retrieve(ctx, q)
			if errors.Is(err, machq.ErrEmpty) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			payload := string(m.Bytes())
			m.Close()
			if acked[payload] {
				t.Errorf("%s: acknowledged message %s came back", q, payload)
			}
			if left[payload] {
				t.Errorf("%s: message %s twice", q, payload)
			}
			left[payload] = true
			prod, num, _ := strings.Cut(payload, "-")
			n, _ := strconv.Atoi(num)
			if prev, ok := last[prod]; ok && n < prev {
				t.Errorf("%s: %s after %s-%06d: out of order", q, payload, prod, prev)
			}
			last[prod] = n
		}
	}
	lost := 0
	for payload := range stored {
		if !acking[payload] && !left[payload] {
			lost++
			if lost <= 5 {
				t.Errorf("stored message %s (STORED answered) lost", payload)
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d acknowledged stores lost of %d", lost, len(stored))
	}
	t.Logf("%d rounds: %d stored, %d acknowledged, %d left", rounds, len(stored), len(acked), len(left))
}
