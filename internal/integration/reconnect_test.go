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
	var acks struct{ ok, unknown, closed, stale int }
	ackedOK := map[int]bool{} // messages whose Ack succeeded
	owed := map[int]bool{}    // messages whose Ack failed on the last server, not yet received again
	final := atomic.Int64{}   // the last server's generation, once started
	final.Store(-1)

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
			g := gen.Load()
			mu.Lock()
			received[i]++
			if ackedOK[i] {
				t.Errorf("message %d delivered again after its Ack succeeded", i)
			}
			mu.Unlock()
			// Every Ack succeeds, fails because the connection it was
			// taken on is gone (its message went back to its queue, or
			// was lost with a server that stopped), is refused as stale,
			// or reports its outcome unknown: never anything else.
			err = dl.Ack(ctx)
			dl.Close()
			mu.Lock()
			switch {
			case err == nil:
				acks.ok++
				ackedOK[i] = true
			case errors.Is(err, machq.ErrUnknownOutcome):
				acks.unknown++
			case errors.Is(err, machq.ErrClosed):
				acks.closed++
				if g == gen.Load() && g == final.Load() {
					// On the last server nothing is lost: the message
					// must come again.
					owed[i] = true
				}
			case errors.Is(err, machq.ErrStale):
				acks.stale++
			default:
				t.Errorf("ack of message %d: %v; want success, ErrClosed, ErrStale or ErrUnknownOutcome", i, err)
			}
			if received[i] > 1 {
				delete(owed, i)
			}
			mu.Unlock()
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
	final.Store(gen.Load())
	target := sent.Load() + 200
	waitFor(t, "the producer to send on the last server", func() bool { return sent.Load() >= target })
	stop.Store(true)
	last := final.Load()
	// Every message stored into the last server, its Send begun and
	// ended there, reaches the consumer; every one whose Ack failed there
	// comes again.
	waitFor(t, "the consumer to receive every message of the last server", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for i, o := range outcomes {
			if o.ok && o.gen == last && received[i] == 0 {
				return false
			}
		}
		return len(owed) == 0
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
	if acks.ok == 0 {
		t.Errorf("no Ack succeeded")
	}
	t.Logf("%d sends, %d reported unknown, %d messages received, dials %d/%d", len(outcomes), unknown, len(received), producer.Dials(), consumer.Dials())
	t.Logf("acks: %d succeeded, %d failed with the connection, %d stale, %d unknown", acks.ok, acks.closed, acks.stale, acks.unknown)
}

// TestIntegrationReconnectWaitingReserve: a ReserveWait of a Reconnecting
// client waiting when machqd stops (SIGTERM) or dies (SIGKILL) waits
// again on the restarted server and completes with a message stored
// there after the restart, which it acknowledges. A plain RetrieveWait
// waiting does the same after SIGTERM, since the stopping server refused
// it unexecuted (SHUTTING_DOWN); after SIGKILL it says its outcome is
// unknown instead (it may have taken a message now lost), and takes
// nothing from the new server.
func TestIntegrationReconnectWaitingReserve(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			refused := sig == syscall.SIGTERM // the wait was answered SHUTTING_DOWN
			socket := filepath.Join(t.TempDir(), "machq.sock")
			d := startDaemon(t, socket, "--log-level", "warn")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			r, err := machq.DialReconnecting(ctx, socket)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			plain, err := machq.DialReconnecting(ctx, socket)
			if err != nil {
				t.Fatal(err)
			}
			defer plain.Close()
			type answer struct {
				dl  *machq.Delivery
				err error
			}
			reserved := make(chan answer, 1)
			go func() {
				dl, err := r.ReserveWait(ctx, "later", &machq.AckOptions{Lease: -1})
				reserved <- answer{dl, err}
			}()
			type retrieval struct {
				m   *machq.Message
				err error
			}
			retrieved := make(chan retrieval, 1)
			go func() {
				m, err := plain.RetrieveWait(ctx, "plain")
				retrieved <- retrieval{m, err}
			}()
			waitFor(t, "both to wait on the first server", func() bool {
				return queueStats(d, "later").Waiting == 1 && queueStats(d, "plain").Waiting == 1
			})

			d.cmd.Process.Signal(sig)
			<-d.exited
			d = startDaemon(t, socket, "--log-level", "warn")
			waitFor(t, "the ReserveWait to wait on the new server", func() bool {
				return queueStats(d, "later").Waiting == 1
			})
			select {
			case a := <-reserved:
				t.Fatalf("the ReserveWait ended across the restart instead of waiting again: %v", a.err)
			default:
			}
			if refused {
				waitFor(t, "the RetrieveWait to wait on the new server", func() bool {
					return queueStats(d, "plain").Waiting == 1
				})
			} else {
				select {
				case rt := <-retrieved:
					if rt.m != nil || !errors.Is(rt.err, machq.ErrUnknownOutcome) || !errors.Is(rt.err, machq.ErrClosed) {
						t.Fatalf("RetrieveWait waiting across SIGKILL: %v; want ErrUnknownOutcome", rt.err)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("RetrieveWait waiting across SIGKILL neither ended nor said its outcome is unknown")
				}
				if q := queueStats(d, "plain"); q.Waiting != 0 {
					t.Fatalf("a RetrieveWait of unknown outcome was sent again: %+v", q)
				}
			}

			store(t, socket, "plain", []byte("plain after the restart"))
			store(t, socket, "later", []byte("after the restart"))
			select {
			case a := <-reserved:
				if a.err != nil {
					t.Fatalf("ReserveWait: %v", a.err)
				}
				defer a.dl.Close()
				if string(a.dl.Bytes()) != "after the restart" || a.dl.Deliveries() != 1 {
					t.Fatalf("ReserveWait got %q, delivery %d", a.dl.Bytes(), a.dl.Deliveries())
				}
				if err := a.dl.Ack(ctx); err != nil {
					t.Fatalf("ack on the new server: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the ReserveWait waiting across the restart did not receive the message stored after it")
			}
			if q := counts(t, d, "later"); q.Acked != 1 || q.Delivered != 1 || q.Messages != 0 {
				t.Fatalf("after the ack: %+v", q)
			}
			if refused {
				select {
				case rt := <-retrieved:
					if rt.err != nil || string(rt.m.Bytes()) != "plain after the restart" {
						t.Fatalf("RetrieveWait waiting across SIGTERM: %v", rt.err)
					}
					rt.m.Close()
				case <-time.After(30 * time.Second):
					t.Fatal("the RetrieveWait waiting across SIGTERM did not receive the message stored after the restart")
				}
				if q := counts(t, d, "plain"); q.Messages != 0 || q.Delivered != 1 {
					t.Fatalf("plain after the RetrieveWait: %+v", q)
				}
			} else if q := queueStats(d, "plain"); q.Messages != 1 || q.Delivered != 0 {
				t.Fatalf("the message stored after the restart was taken by the lost RetrieveWait: %+v", q)
			}
			if r.Dials() != 2 || refused && plain.Dials() != 2 {
				t.Errorf("dials: %d and %d; want each client to have dialled the new server", r.Dials(), plain.Dials())
			}
		})
	}
}
