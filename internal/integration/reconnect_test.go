package integration_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/machq/machq"
)

// TestIntegrationReconnectAcrossRestarts: a producer and a consumer using
// Reconnecting clients while machqd is killed with SIGKILL and restarted,
// then stopped with SIGTERM and restarted. Every Send either succeeds,
// fails, or is reported unknown (ErrUnknownOutcome); nothing the consumer
// receives was reported failed; and every message stored once the last
// server is up reaches the consumer. (Messages stored into a server that
// then dies are lost with it: nothing is durable yet.)
func TestIntegrationReconnectAcrossRestarts(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "machq.sock")
	d := startDaemon(t, socket, "--log-level", "warn")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	producer, err := machq.DialReconnecting(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	consumer, err := machq.DialReconnecting(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()

	var gen atomic.Int64 // which server: bumped once a restarted one answers
	type outcome struct {
		ok, unknown bool
		gen         int64 // the server generation the send began and ended in, if the same; else -1
	}
	var mu sync.Mutex
	outcomes := map[int]outcome{}
	received := map[int]int{}
	var stop atomic.Bool
	var sent atomic.Int64

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // producer
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			g := gen.Load()
			sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
			_, err := producer.Send(sctx, "jobs", []byte(fmt.Sprint("m-", i)))
			scancel()
			o := outcome{ok: err == nil, unknown: errors.Is(err, machq.ErrUnknownOutcome), gen: -1}
			if g == gen.Load() {
				o.gen = g
			}
			if err != nil && !o.unknown {
				t.Errorf("send %d failed without saying its outcome is unknown: %v", i, err)
			}
			mu.Lock()
			outcomes[i] = o
			mu.Unlock()
			sent.Add(1)
			time.Sleep(time.Millisecond) // pacing, not synchronisation
		}
	}()
	done := make(chan struct{})
	go func() { // consumer
		defer wg.Done()
		for {
			rctx, rcancel := context.WithTimeout(ctx, 200*time.Millisecond)
			dl, err := consumer.ReserveWait(rctx, "jobs", nil)
			rcancel()
			if err != nil {
				select {
				case <-done:
					return
				default:
					continue
				}
			}
			i, perr := strconv.Atoi(strings.TrimPrefix(string(dl.Bytes()), "m-"))
			if perr != nil {
				t.Errorf("unexpected payload %q", dl.Bytes())
			}
			mu.Lock()
			received[i]++
			mu.Unlock()
			dl.Ack(ctx) // an ack whose outcome is lost is fine: the message may come again
			dl.Close()
		}
	}()

	restart := func(how syscall.Signal) {
		target := sent.Load() + 100
		waitFor(t, "the producer to get going", func() bool { return sent.Load() >= target })
		d.cmd.Process.Signal(how)
		<-d.exited
		d = startDaemon(t, socket, "--log-level", "warn")
		gen.Add(1)
	}
	restart(syscall.SIGKILL)
	restart(syscall.SIGTERM)
	target := sent.Load() + 200
	waitFor(t, "the producer to send on the last server", func() bool { return sent.Load() >= target })
	stop.Store(true)
	final := gen.Load()
	// Every message stored into the last server, its Send begun and
	// ended there, reaches the consumer.
	waitFor(t, "the consumer to receive every message of the last server", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for i, o := range outcomes {
			if o.ok && o.gen == final && received[i] == 0 {
				return false
			}
		}
		return true
	})
	close(done)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	unknown := 0
	for i := range received {
		o, ok := outcomes[i]
		if !ok || !o.ok && !o.unknown {
			t.Errorf("message %d was received but its send was not reported stored or unknown", i)
		}
	}
	for _, o := range outcomes {
		if o.unknown {
			unknown++
		}
	}
	if producer.Dials() < 3 || consumer.Dials() < 3 {
		t.Errorf("dials: producer %d, consumer %d; want 3 each (two restarts)", producer.Dials(), consumer.Dials())
	}
	t.Logf("%d sends, %d reported unknown, %d messages received, dials %d/%d", len(outcomes), unknown, len(received), producer.Dials(), consumer.Dials())
}
