package server_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/server"
)

// TestStoresWaitForRoom: with WithWaitForRoom a store into a full queue
// waits instead of failing, and is stored, first come first served, as
// soon as a message leaves; one whose context ends first stores nothing.
func TestStoresWaitForRoom(t *testing.T) {
	srv, path := startServer(t, server.Config{Limits: server.Limits{MaxQueueMessages: 1}})
	consumer := dial(t, path)
	producer := dial(t, path, machq.WithWaitForRoom())
	ctx := testCtx(t)
	mustSend(t, producer, "narrow", []byte("0"))
	if _, err := consumer.Send(ctx, "narrow", []byte("x")); !errors.Is(err, machq.ErrLimit) {
		t.Fatalf("a store without the option into a full queue: %v, want ErrLimit", err)
	}
	done := make(chan error, 2)
	go func() { _, err := producer.Send(testCtx(t), "narrow", []byte("1")); done <- err }()
	waitFor(t, "the first store waiting", func() bool { qs, _ := queueStats(srv, "narrow"); return qs.Blocked == 1 })
	go func() { _, err := producer.Send(testCtx(t), "narrow", []byte("2")); done <- err }()
	waitFor(t, "the second store waiting", func() bool { qs, _ := queueStats(srv, "narrow"); return qs.Blocked == 2 })
	// A third gives up: nothing is stored.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := producer.Send(short, "narrow", []byte("never"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a waiting store whose context ended: %v", err)
	}
	waitFor(t, "the cancelled store gone", func() bool { qs, _ := queueStats(srv, "narrow"); return qs.Blocked == 2 })
	for _, want := range []string{"0", "1", "2"} {
		m, err := consumer.RetrieveWait(ctx, "narrow")
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Bytes()) != want {
			t.Fatalf("got %q, want %q: blocked stores go in in order", m.Bytes(), want)
		}
		m.Close()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("a store that waited: %v", err)
		}
	}
	if _, err := consumer.Retrieve(ctx, "narrow"); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("the cancelled store was stored: %v", err)
	}
	if st := srv.Stats(); st.Waiting != 0 || st.Messages != 0 {
		t.Fatalf("after the waits: %d waiting, %d messages", st.Waiting, st.Messages)
	}
}

// TestWaitingStoreEndsWithItsConnection: a store waiting for room when
// its client closes stores nothing and is freed.
func TestWaitingStoreEndsWithItsConnection(t *testing.T) {
	srv, path := startServer(t, server.Config{Limits: server.Limits{MaxQueueMessages: 1}})
	c := dial(t, path)
	mustSend(t, c, "narrow", []byte("0"))
	producer := dial(t, path, machq.WithWaitForRoom())
	go producer.Send(context.Background(), "narrow", make([]byte, 300<<10))
	waitFor(t, "the store waiting", func() bool { qs, _ := queueStats(srv, "narrow"); return qs.Blocked == 1 })
	producer.Close()
	waitFor(t, "the waiting store freed", func() bool {
		st := srv.Stats()
		return st.Messages == 1 && st.Pages == 0 && st.Waiting == 0
	})
	// Deleting a queue answers its waiting stores.
	other := dial(t, path, machq.WithWaitForRoom())
	errc := make(chan error, 1)
	go func() { _, err := other.Send(testCtx(t), "narrow", []byte("blocked")); errc <- err }()
	waitFor(t, "the store waiting", func() bool { qs, _ := queueStats(srv, "narrow"); return qs.Blocked == 1 })
	if _, err := c.Delete(testCtx(t), "narrow"); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, machq.ErrCancelled) {
		t.Fatalf("a store waiting on a deleted queue: %v, want ErrCancelled", err)
	}
}

// TestAckModeTakeMakesNoRoom: a message taken in ack mode still counts
// against its queue's limits, so a store waiting for room waits for its
// acknowledgement, not for its delivery; through a consumer group too.
func TestAckModeTakeMakesNoRoom(t *testing.T) {
	srv, path := startServer(t, server.Config{Limits: server.Limits{MaxQueueMessages: 1}})
	c := dial(t, path)
	producer := dial(t, path, machq.WithWaitForRoom())
	ctx := testCtx(t)
	for _, group := range []string{"", "g"} {
		q := "plain"
		if group != "" {
			q = "grouped"
			if _, _, err := c.CreateGroup(ctx, q, group, false); err != nil {
				t.Fatal(err)
			}
		}
		mustSend(t, c, q, []byte("first"))
		done := make(chan error, 1)
		go func() { _, err := producer.Send(testCtx(t), q, []byte("second")); done <- err }()
		waitFor(t, "the store waiting", func() bool { qs, _ := queueStats(srv, q); return qs.Blocked == 1 })
		d := mustReserve(t, c, q, &machq.AckOptions{Group: group})
		select {
		case err := <-done:
			t.Fatalf("%s: a store waiting for room went in when a message was only delivered in ack mode: %v", q, err)
		case <-time.After(50 * time.Millisecond):
			// Not synchronisation: a check that nothing happens early.
		}
		if qs, _ := queueStats(srv, q); qs.Blocked != 1 {
			t.Fatalf("%s: blocked %d after an ack-mode take", q, qs.Blocked)
		}
		d.Ack(ctx)
		if err := <-done; err != nil {
			t.Fatalf("%s: the waiting store after the ack: %v", q, err)
		}
		d2 := mustReserve(t, c, q, &machq.AckOptions{Group: group})
		if string(d2.Bytes()) != "second" {
			t.Fatalf("%s: got %q", q, d2.Bytes())
		}
		d2.Ack(ctx)
	}
}
