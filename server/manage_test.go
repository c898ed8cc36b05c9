package server_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/internal/wiretest"
	"github.com/machq/machq/server"
)

func TestPeekTakesNothing(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	big := bytes.Repeat([]byte("b"), 300<<10)
	payloads := [][]byte{[]byte("one"), big, []byte("three")}
	for _, p := range payloads {
		mustSend(t, c, "q", p)
	}
	for i, want := range payloads {
		m, err := c.Peek(ctx, "q", i)
		if err != nil {
			t.Fatalf("peek %d: %v", i, err)
		}
		if !bytes.Equal(m.Bytes(), want) || m.OutOfLine() != (len(want) > machq.DefaultInlineThreshold) {
			t.Fatalf("peek %d: %d bytes (out of line %v)", i, m.Len(), m.OutOfLine())
		}
		m.Close()
	}
	if _, err := c.Peek(ctx, "q", 3); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("peek past the end: %v, want ErrEmpty", err)
	}
	if _, err := c.Peek(ctx, "no-such-queue", 0); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("peek of no queue: %v, want ErrEmpty", err)
	}
	if qs, _ := queueStats(srv, "q"); qs.Messages != 3 || qs.Delivered != 0 {
		t.Fatalf("after peeking: %+v", qs)
	}
	// The peeked page stays valid once the message is taken and freed.
	pm, err := c.Peek(ctx, "q", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	for range 3 {
		d := mustReserve(t, c, "q", nil)
		d.Ack(ctx)
		d.Close()
	}
	if !bytes.Equal(pm.Bytes(), big) {
		t.Fatal("a peeked page changed once its message was freed")
	}
	// The private queue peeks too, verified against this client's
	// records.
	mustSend(t, c, "", []byte("private"))
	m, err := c.Peek(ctx, "", 0)
	if err != nil || string(m.Bytes()) != "private" {
		t.Fatalf("peek of the private queue: %v", err)
	}
	m.Close()
	if r, err := c.Retrieve(ctx, ""); err != nil || string(r.Bytes()) != "private" {
		t.Fatalf("retrieve after a peek of the private queue: %v", err)
	}
}

func TestPeekShowsDeadLetters(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	mustSend(t, c, "w", []byte("bad"))
	d := mustReserve(t, c, "w", nil)
	d.Term(ctx, "unparseable")
	m, err := c.Peek(ctx, "w.dlq", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.DeadReason() != machq.DeadTerminated || m.Note() != "unparseable" || m.DiedAfter() != 1 || string(m.Bytes()) != "bad" {
		t.Fatalf("peeked dead letter: %s %q after %d: %q", m.DeadReason(), m.Note(), m.DiedAfter(), m.Bytes())
	}
}

func TestPurgeFreesPendingWhenTheyComeBack(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	for _, p := range []string{"a", "b", "c", "d"} {
		mustSend(t, c, "q", []byte(p))
	}
	kept := mustReserve(t, c, "q", nil)
	naked := mustReserve(t, c, "q", nil)
	delayed := mustReserve(t, c, "q", nil)
	delayed.Nak(ctx, time.Hour, "")
	p, err := c.Purge(ctx, "q")
	if err != nil || p.Freed != 2 || p.Pending != 2 {
		t.Fatalf("purge: %+v, %v; want 2 freed (one in line, one delayed), 2 pending", p, err)
	}
	if err := naked.Nak(ctx, 0, ""); err != nil || naked.Outcome() != machq.Dropped {
		t.Fatalf("NAK after the purge: %v, %s; want dropped", err, naked.Outcome())
	}
	if err := kept.Ack(ctx); err != nil {
		t.Fatalf("an ACK after the purge: %v", err)
	}
	if st := srv.Stats(); st.Messages != 0 {
		t.Fatalf("after the purge the server holds %d messages", st.Messages)
	}
	mustSend(t, c, "q", []byte("after"))
	if d := mustReserve(t, c, "q", nil); string(d.Bytes()) != "after" {
		t.Fatalf("a message stored after the purge: %q", d.Bytes())
	}
}

func TestDeleteRemovesQueueAndAnswersWaiters(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c, waiter := dial(t, path), dial(t, path)
	ctx := testCtx(t)
	mustSend(t, c, "doomed", []byte("x"))
	mustSend(t, c, "doomed", []byte("y"))
	held := mustReserve(t, c, "doomed", nil)
	errc := make(chan error, 1)
	go func() {
		_, err := waiter.RetrieveWait(testCtx(t), "other")
		errc <- err
	}()
	// A consumer waits on an emptied queue.
	mustSend(t, c, "empty-then", []byte("z"))
	d := mustReserve(t, c, "empty-then", nil)
	d.Ack(ctx)
	go func() {
		_, err := waiter.RetrieveWait(testCtx(t), "empty-then")
		errc <- err
	}()
	waitFor(t, "the waiter", func() bool { qs, _ := queueStats(srv, "empty-then"); return qs.Waiting == 1 })
	if _, err := c.Delete(ctx, "empty-then"); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, machq.ErrCancelled) {
		t.Fatalf("a waiter on a deleted queue: %v, want ErrCancelled", err)
	}
	p, err := c.Delete(ctx, "doomed")
	if err != nil || p.Freed != 1 || p.Pending != 1 {
		t.Fatalf("delete: %+v, %v", p, err)
	}
	if _, ok := queueStats(srv, "doomed"); ok {
		t.Fatal("the deleted queue is still listed")
	}
	if err := held.Ack(ctx); err != nil {
		t.Fatalf("ACK of a delivery of a deleted queue: %v", err)
	}
	if _, err := c.Delete(ctx, "doomed"); err != nil {
		t.Fatalf("deleting what is gone: %v", err)
	}
	if st := srv.Stats(); st.Messages != 0 {
		t.Fatalf("the server holds %d messages after the delete", st.Messages)
	}
	mustSend(t, c, "other", []byte("still served"))
	if err := <-errc; err != nil {
		t.Fatalf("a waiter on another queue: %v", err)
	}
}

// TestPeekerThatDoesNotRead: a client peeking pages without reading the
// answers has at most 64 on their way to it; further peeks are refused
// with LIMIT, and every duplicate is closed once it reads or leaves.
func TestPeekerThatDoesNotRead(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	mustSend(t, c, "pages", bytes.Repeat([]byte("p"), 200<<10))
	base := openFDs(t)
	raw := wiretest.DialHello(t, path)
	const n = 200
	var b []byte
	for i := range n {
		b = wire.AppendQueueOp(b, wire.OpPeek, uint64(i+1), wire.QueueOp{Queue: []byte("pages")})
	}
	raw.Write(b)
	waitFor(t, "the peeks answered", func() bool {
		return srv.Stats().Pages >= 1+64 // the message and the copies on their way
	})
	pages, refused := 0, 0
	for range n {
		f := raw.Read()
		if len(f.FDs) > 0 {
			pages++
			wire.CloseFDs(f.FDs)
			continue
		}
		if code, _, _ := wire.ParseError(f.Body); f.Op == wire.OpError && code == wire.CodeLimit {
			refused++
		}
	}
	if pages+refused != n || refused == 0 || pages < 64 {
		t.Fatalf("%d peeks of a page by a client not reading: %d pages, %d refused", n, pages, refused)
	}
	raw.UC.Close()
	waitFDsReleased(t, "every copy closed", base)
	if st := srv.Stats(); st.Pages != 1 {
		t.Fatalf("the server counts %d pages, want the one stored", st.Pages)
	}
}
