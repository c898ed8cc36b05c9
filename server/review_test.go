package server_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/server"
)

// TestAdoptingDeadLettersOfGroups: dead letters of a consumer group are
// views; a group created from the oldest on the dead-letter queue, or on
// the queue after they were kicked back with their group gone, adopts
// each once, passes the right page, and frees everything when done.
func TestAdoptingDeadLettersOfGroups(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c, other := dial(t, path), dial(t, path)
	ctx := testCtx(t)
	page := bytes.Repeat([]byte("v"), 200<<10)
	c.CreateGroup(ctx, "x", "g", false)
	mustSend(t, c, "x", page)
	d := mustReserve(t, c, "x", &machq.AckOptions{Group: "g"})
	d.Term(ctx, "no")
	d.Close()
	// A group of the dead-letter queue, from the oldest, adopts it once.
	if n, _, err := c.CreateGroup(ctx, "x.dlq", "d", true); err != nil || n != 1 {
		t.Fatalf("adopted %d, %v", n, err)
	}
	dl := mustReserve(t, c, "x.dlq", &machq.AckOptions{Group: "d"})
	if !bytes.Equal(dl.Bytes(), page) {
		t.Fatal("the adopted dead letter is not the page")
	}
	dl.Ack(ctx)
	dl.Close()
	waitFor(t, "everything freed", func() bool { st := srv.Stats(); return st.Messages == 0 && st.Pages == 0 })
	// Another client's page must never reach a consumer of these.
	mustSend(t, other, "elsewhere", bytes.Repeat([]byte("o"), 100<<10))

	// Kicked back with its group deleted, then adopted: delivered once.
	mustSend(t, c, "x", page)
	d = mustReserve(t, c, "x", &machq.AckOptions{Group: "g"})
	d.Term(ctx, "no")
	d.Close()
	c.DeleteGroup(ctx, "x", "g")
	if n, err := c.Kick(ctx, "x", 0); err != nil || n != 1 {
		t.Fatalf("kick: %d %v", n, err)
	}
	if n, _, err := c.CreateGroup(ctx, "x", "g2", true); err != nil || n != 1 {
		t.Fatalf("adopted %d, %v; want the kicked message once", n, err)
	}
	d = mustReserve(t, c, "x", &machq.AckOptions{Group: "g2"})
	if !bytes.Equal(d.Bytes(), page) {
		t.Fatal("the adopted kicked message is not the page")
	}
	d.Ack(ctx)
	d.Close()
	if _, err := c.Reserve(ctx, "x", &machq.AckOptions{Group: "g2"}); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("a second copy: %v", err)
	}
	waitFor(t, "everything of x freed", func() bool { st := srv.Stats(); return st.Messages == 1 && st.Pages == 1 })
}

// TestPurgeSparesWhatComesAfter: a message kicked back into a queue after
// it was purged is not freed for having an old number.
func TestPurgeSparesWhatComesAfter(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	mustSend(t, c, "x", []byte("m"))
	d := mustReserve(t, c, "x", nil)
	d.Term(ctx, "later")
	if _, err := c.Purge(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	c.Kick(ctx, "x", 0)
	d = mustReserve(t, c, "x", nil)
	if err := d.Nak(ctx, time.Millisecond, ""); err != nil || d.Outcome() != machq.Requeued {
		t.Fatalf("NAK of a message kicked after the purge: %v, %s; want requeued", err, d.Outcome())
	}
}

// TestWaitingStoresWokenByEveryRoom: deleting the full group, or
// cancelling the store in front, lets the waiting stores behind in.
func TestWaitingStoresWokenByEveryRoom(t *testing.T) {
	srv, path := startServer(t, server.Config{Limits: server.Limits{MaxQueueMessages: 1}})
	c := dial(t, path)
	producer := dial(t, path, machq.WithWaitForRoom())
	ctx := testCtx(t)
	c.CreateGroup(ctx, "q", "full", false)
	mustSend(t, c, "q", []byte("1"))
	c.CreateGroup(ctx, "q", "empty", false)
	done := make(chan error, 1)
	go func() { _, err := producer.Send(testCtx(t), "q", []byte("2")); done <- err }()
	waitFor(t, "the store waiting", func() bool { qs, _ := queueStats(srv, "q"); return qs.Blocked == 1 })
	if _, err := c.DeleteGroup(ctx, "q", "full"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the store waiting on the deleted full group: %v", err)
	}

	// A big store waits in front of a small one that would fit; the big
	// one is cancelled: the small one goes in.
	srv2, path2 := startServer(t, server.Config{Limits: server.Limits{MaxQueueBytes: 100}})
	c2 := dial(t, path2)
	p2 := dial(t, path2, machq.WithWaitForRoom())
	mustSend(t, c2, "b", make([]byte, 60))
	big, cancelBig := context.WithCancel(testCtx(t))
	bigDone := make(chan error, 1)
	go func() { _, err := p2.Send(big, "b", make([]byte, 50)); bigDone <- err }()
	waitFor(t, "the big store waiting", func() bool { qs, _ := queueStats(srv2, "b"); return qs.Blocked == 1 })
	smallDone := make(chan error, 1)
	go func() { _, err := p2.Send(testCtx(t), "b", make([]byte, 10)); smallDone <- err }()
	waitFor(t, "the small store waiting behind", func() bool { qs, _ := queueStats(srv2, "b"); return qs.Blocked == 2 })
	cancelBig()
	if err := <-bigDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("the cancelled store: %v", err)
	}
	if err := <-smallDone; err != nil {
		t.Fatalf("the store behind the cancelled one: %v", err)
	}
}

// TestShutdownFreesGroups: a graceful shutdown frees the consumer groups'
// lines, pages included.
func TestShutdownFreesGroups(t *testing.T) {
	srv, path, done := serve(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	c.CreateGroup(ctx, "q", "g", false)
	for range 5 {
		mustSend(t, c, "q", make([]byte, 100<<10))
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	<-done
	if st := srv.Stats(); st.Messages != 0 || st.Pages != 0 {
		t.Fatalf("after shutdown: %d messages, %d pages", st.Messages, st.Pages)
	}
}

// TestAckWaitersDoNotPassTheLimit: a message handed to a waiting ack-mode
// consumer stays the queue's, so the queue's limit bounds such handovers
// too.
func TestAckWaitersDoNotPassTheLimit(t *testing.T) {
	srv, path := startServer(t, server.Config{Limits: server.Limits{MaxQueueMessages: 1}})
	c, consumer := dial(t, path), dial(t, path)
	ctx := testCtx(t)
	got := make(chan *machq.Delivery, 2)
	for range 2 {
		go func() {
			d, err := consumer.ReserveWait(testCtx(t), "q", nil)
			if err == nil {
				got <- d
			}
		}()
	}
	waitFor(t, "two waiting", func() bool { qs, _ := queueStats(srv, "q"); return qs.Waiting == 2 })
	mustSend(t, c, "q", []byte("1"))
	d := <-got
	if _, err := c.Send(ctx, "q", []byte("2")); !errors.Is(err, machq.ErrLimit) {
		t.Fatalf("a second message into a queue of 1 whose first is pending: %v, want ErrLimit", err)
	}
	d.Ack(ctx)
	mustSend(t, c, "q", []byte("2"))
	(<-got).Ack(ctx)
}
