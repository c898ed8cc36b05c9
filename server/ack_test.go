package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/internal/wiretest"
	"github.com/machq/machq/server"
)

// queueStats returns the STATS entry of the named queue; ok is false if it
// does not exist.
func queueStats(srv *server.Server, name string) (server.QueueStats, bool) {
	for _, q := range srv.Stats().Queues {
		if q.Name == name {
			return q, true
		}
	}
	return server.QueueStats{}, false
}

func mustSend(t *testing.T, c *machq.Client, queue string, data []byte) {
	t.Helper()
	if _, err := c.Send(testCtx(t), queue, data); err != nil {
		t.Fatal(err)
	}
}

func mustReserve(t *testing.T, c *machq.Client, queue string, o *machq.AckOptions) *machq.Delivery {
	t.Helper()
	d, err := c.Reserve(testCtx(t), queue, o)
	if err != nil {
		t.Fatalf("Reserve %s: %v", queue, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestAckFreesAndCounts(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	mustSend(t, c, "jobs", []byte("job 1"))
	d := mustReserve(t, c, "jobs", nil)
	if string(d.Bytes()) != "job 1" || d.Deliveries() != 1 || d.Redelivered() || d.Token() == 0 {
		t.Fatalf("delivery %q, deliveries %d, token %d", d.Bytes(), d.Deliveries(), d.Token())
	}
	qs, _ := queueStats(srv, "jobs")
	if qs.Pending != 1 || qs.Messages != 0 || qs.Delivered != 1 {
		t.Fatalf("stats while pending: %+v", qs)
	}
	if st := srv.Stats(); st.Pending.Messages != 1 || st.Messages != 1 || st.Unsent.Messages != 0 {
		t.Fatalf("server stats while pending: messages %d pending %+v unsent %+v", st.Messages, st.Pending, st.Unsent)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if d.Outcome() != machq.Acked {
		t.Fatalf("outcome %s", d.Outcome())
	}
	if err := d.Ack(ctx); !errors.Is(err, machq.ErrStale) {
		t.Fatalf("second ack: %v, want ErrStale", err)
	}
	if st := srv.Stats(); st.Messages != 0 || st.Pending.Messages != 0 {
		t.Fatalf("after the ack the server holds %d messages (%d pending)", st.Messages, st.Pending.Messages)
	}
}

func TestPendingReturnsTheInstantTheConnectionEnds(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	producer, waiter := dial(t, path), dial(t, path)
	mustSend(t, producer, "jobs", []byte("first"))
	mustSend(t, producer, "jobs", []byte("second"))

	holder := dial(t, path)
	d := mustReserve(t, holder, "jobs", &machq.AckOptions{Lease: -1})
	if string(d.Bytes()) != "first" {
		t.Fatalf("got %q", d.Bytes())
	}
	// The second message is taken by the waiter; a third waits for the
	// first to come back.
	got := make(chan *machq.Delivery, 2)
	errc := make(chan error, 2)
	for range 2 {
		go func() {
			d, err := waiter.ReserveWait(testCtx(t), "jobs", nil)
			if err != nil {
				errc <- err
				return
			}
			got <- d
		}()
	}
	second := <-got
	if string(second.Bytes()) != "second" {
		t.Fatalf("waiter got %q first", second.Bytes())
	}
	waitFor(t, "a retrieve waiting on jobs", func() bool { qs, _ := queueStats(srv, "jobs"); return qs.Waiting == 1 })
	holder.Close()
	select {
	case again := <-got:
		defer again.Close()
		if string(again.Bytes()) != "first" || again.Deliveries() != 2 || !again.Redelivered() || again.Seq != d.Seq {
			t.Fatalf("redelivered %q (seq %d, deliveries %d), want first (seq %d) delivered twice", again.Bytes(), again.Seq, again.Deliveries(), d.Seq)
		}
		if err := again.Ack(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		// Counted while the queue exists (second is still pending).
		if qs, _ := queueStats(srv, "jobs"); qs.Redelivered != 1 || qs.Acked != 1 || qs.Delivered != 3 {
			t.Fatalf("stats %+v", qs)
		}
	case err := <-errc:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("the message of a closed consumer was not redelivered")
	}
	second.Ack(testCtx(t))
	second.Close()
}

func TestNakComesBackAtItsPlaceAfterTheDelay(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	for _, p := range []string{"a", "b", "c"} {
		mustSend(t, c, "q", []byte(p))
	}
	a := mustReserve(t, c, "q", nil)
	if err := a.Nak(ctx, 300*time.Millisecond, "not yet"); err != nil || a.Outcome() != machq.Requeued {
		t.Fatalf("nak: %v, %s", err, a.Outcome())
	}
	if qs, _ := queueStats(srv, "q"); qs.Delayed != 1 || qs.Nacked != 1 {
		t.Fatalf("stats after the NAK: %+v", qs)
	}
	// Meanwhile the next one comes.
	b := mustReserve(t, c, "q", nil)
	if string(b.Bytes()) != "b" {
		t.Fatalf("during the delay got %q, want b", b.Bytes())
	}
	b.Ack(ctx)
	waitFor(t, "the NAKed message to come back", func() bool { qs, _ := queueStats(srv, "q"); return qs.Delayed == 0 })
	again := mustReserve(t, c, "q", nil)
	if string(again.Bytes()) != "a" || again.Deliveries() != 2 || again.Note() != "not yet" {
		t.Fatalf("after the delay got %q (deliveries %d, note %q), want a again", again.Bytes(), again.Deliveries(), again.Note())
	}
	again.Ack(ctx)
}

func TestNakBackoffGrows(t *testing.T) {
	srv, path := startServer(t, server.Config{Ack: server.AckConfig{NakBackoff: 20 * time.Millisecond, NakBackoffMax: time.Second, MaxDeliveries: 100}})
	c := dial(t, path)
	ctx := testCtx(t)
	mustSend(t, c, "poison", []byte("x"))
	var gaps []time.Duration
	for i := range 5 {
		d, err := c.ReserveWait(ctx, "poison", nil)
		if err != nil {
			t.Fatal(err)
		}
		if d.Deliveries() != i+1 {
			t.Fatalf("delivery %d counted %d", i+1, d.Deliveries())
		}
		start := time.Now()
		if err := d.Nak(ctx, 0, ""); err != nil {
			t.Fatal(err)
		}
		d.Close()
		waitFor(t, "the NAKed message back", func() bool { qs, _ := queueStats(srv, "poison"); return qs.Messages == 1 })
		gaps = append(gaps, time.Since(start))
	}
	// 20, 40, 80, 160, 320 ms: each at least its backoff.
	for i, g := range gaps {
		if want := 20 * time.Millisecond << i; g < want {
			t.Fatalf("NAK %d came back after %s, before its backoff of %s (all: %v)", i+1, g, want, gaps)
		}
	}
}

func TestDeadLettersAndKick(t *testing.T) {
	srv, path := startServer(t, server.Config{Ack: server.AckConfig{MaxDeliveries: 3, NakBackoff: time.Millisecond, NakBackoffMax: time.Millisecond}})
	c := dial(t, path)
	ctx := testCtx(t)
	mustSend(t, c, "work", []byte("poison"))
	mustSend(t, c, "work", []byte("bad"))
	mustSend(t, c, "work", []byte("fine"))
	for i := 1; i <= 3; i++ {
		waitFor(t, "the NAKed message back", func() bool { q, _ := queueStats(srv, "work"); return q.Delayed == 0 })
		d, err := c.ReserveWait(ctx, "work", nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(d.Bytes()) != "poison" {
			t.Fatalf("delivery %d is %q, want the poison message at its place", i, d.Bytes())
		}
		if err := d.Nak(ctx, 0, "cannot parse"); err != nil {
			t.Fatal(err)
		}
		want := machq.Requeued
		if i == 3 {
			want = machq.DeadLettered
		}
		if d.Outcome() != want {
			t.Fatalf("NAK %d: %s, want %s", i, d.Outcome(), want)
		}
		d.Close()
	}
	bad := mustReserve(t, c, "work", nil)
	if err := bad.Term(ctx, "schema v1 is gone"); err != nil || bad.Outcome() != machq.DeadLettered {
		t.Fatalf("term: %v, %s", err, bad.Outcome())
	}
	qs, _ := queueStats(srv, "work")
	dq, ok := queueStats(srv, "work.dlq")
	if qs.DeadLettered != 2 || !ok || dq.Messages != 2 || qs.Messages != 1 {
		t.Fatalf("work %+v, work.dlq %+v", qs, dq)
	}
	// The dead letters say why.
	dl := mustReserve(t, c, "work.dlq", nil)
	if string(dl.Bytes()) != "poison" || dl.DeadReason() != machq.DeadMaxDeliveries || dl.DiedAfter() != 3 || dl.Note() != "cannot parse" || dl.Deliveries() != 1 {
		t.Fatalf("dead letter %q: reason %s after %d, note %q, deliveries %d", dl.Bytes(), dl.DeadReason(), dl.DiedAfter(), dl.Note(), dl.Deliveries())
	}
	dl.Nak(ctx, time.Millisecond, "") // back in the dead-letter queue
	dl2 := mustReserve(t, c, "work.dlq", nil)
	if string(dl2.Bytes()) != "bad" || dl2.DeadReason() != machq.DeadTerminated || dl2.Note() != "schema v1 is gone" || dl2.DiedAfter() != 1 {
		t.Fatalf("terminated letter %q: %s %q after %d", dl2.Bytes(), dl2.DeadReason(), dl2.Note(), dl2.DiedAfter())
	}
	dl2.Nak(ctx, time.Millisecond, "")
	waitFor(t, "the dead letters back in work.dlq", func() bool { q, _ := queueStats(srv, "work.dlq"); return q.Messages == 2 })
	// Kick brings them back, to their places before "fine".
	n, err := c.Kick(ctx, "work", 0)
	if err != nil || n != 2 {
		t.Fatalf("kick: %d, %v", n, err)
	}
	for _, want := range []string{"poison", "bad", "fine"} {
		d := mustReserve(t, c, "work", nil)
		if string(d.Bytes()) != want || d.Deliveries() != 1 || d.DeadReason() != machq.NotDead {
			t.Fatalf("after the kick got %q (deliveries %d, %s), want %q afresh", d.Bytes(), d.Deliveries(), d.DeadReason(), want)
		}
		d.Ack(ctx)
	}
	if n, err := c.Kick(ctx, "nothing-here", 0); err != nil || n != 0 {
		t.Fatalf("kick of a queue without dead letters: %d, %v", n, err)
	}
}

func TestLeaseRunsOutAndLateAckIsStale(t *testing.T) {
	_, path := startServer(t, server.Config{})
	hung, other := dial(t, path), dial(t, path)
	ctx := testCtx(t)
	mustSend(t, other, "q", []byte("job"))
	// Long enough for the TOUCH to come first on a loaded machine.
	d := mustReserve(t, hung, "q", &machq.AckOptions{Lease: time.Second})
	if left, err := d.Touch(ctx); err != nil || left != time.Second {
		t.Fatalf("touch: %s, %v", left, err)
	}
	again, err := other.ReserveWait(ctx, "q", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if again.Seq != d.Seq || again.Deliveries() != 2 || again.Token() == d.Token() {
		t.Fatalf("redelivery seq %d deliveries %d token %d; first token %d", again.Seq, again.Deliveries(), again.Token(), d.Token())
	}
	if err := d.Ack(ctx); !errors.Is(err, machq.ErrStale) {
		t.Fatalf("late ack: %v, want ErrStale", err)
	}
	// The late ack did not settle the redelivery.
	if err := again.Ack(ctx); err != nil {
		t.Fatalf("the redelivery's own ack: %v", err)
	}
}

func TestCreditBoundsPending(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	for _, p := range []string{"1", "2"} {
		mustSend(t, c, "q", []byte(p))
	}
	one := &machq.AckOptions{Credit: 1}
	first := mustReserve(t, c, "q", one)
	if _, err := c.Reserve(ctx, "q", one); !errors.Is(err, machq.ErrLimit) {
		t.Fatalf("a second reserve past a credit of 1: %v, want ErrLimit", err)
	}
	got := make(chan *machq.Delivery, 1)
	go func() {
		d, err := c.ReserveWait(testCtx(t), "q", one)
		if err != nil {
			t.Error(err)
		}
		got <- d
	}()
	select {
	case d := <-got:
		t.Fatalf("a waiting reserve past its credit got %v", d)
	case <-time.After(100 * time.Millisecond):
		// Not a synchronisation: a check that nothing arrives early.
	}
	first.Ack(ctx)
	d := <-got
	if d == nil || string(d.Bytes()) != "2" {
		t.Fatalf("after the ack the waiting reserve got %v", d)
	}
	d.Ack(ctx)
	d.Close()
}

func TestPrivateQueueAckMode(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	mustSend(t, c, "", []byte("mine"))
	mustSend(t, c, "", []byte("next"))
	d := mustReserve(t, c, "", nil)
	if err := d.Nak(ctx, time.Millisecond, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the NAKed message back", func() bool { return srv.Stats().Pending.Messages == 0 })
	again, err := c.ReserveWait(ctx, "", nil)
	if err != nil {
		t.Fatalf("the NAKed private message, verified against its record: %v", err)
	}
	defer again.Close()
	if string(again.Bytes()) != "mine" || again.Deliveries() != 2 {
		t.Fatalf("got %q delivered %d times", again.Bytes(), again.Deliveries())
	}
	if err := again.Term(ctx, "give up"); err != nil || again.Outcome() != machq.Dropped {
		t.Fatalf("term in a private queue: %v, %s", err, again.Outcome())
	}
	m, err := c.Retrieve(ctx, "")
	if err != nil {
		t.Fatalf("a plain retrieve after ack-mode ones: %v", err)
	}
	defer m.Close()
	if string(m.Bytes()) != "next" {
		t.Fatalf("got %q", m.Bytes())
	}
}

// TestRedeliveryPassesTheSamePage checks that a page goes back and forth
// as the one sealed memfd the producer sent: no copy.
func TestRedeliveryPassesTheSamePage(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c := dial(t, path)
	payload := bytes.Repeat([]byte("p"), 256<<10)
	mustSend(t, c, "pages", payload)
	raw := wiretest.DialHello(t, path)
	inode := func(id uint64) (uint64, uint64) {
		raw.Write(wire.AppendRetrieve(nil, id, wire.Retrieve{Queue: []byte("pages"), WaitMillis: 5000, Ack: true}))
		f := raw.Read()
		if f.Op != wire.OpMessage || len(f.FDs) != 1 {
			t.Fatalf("got %s with %d descriptors", f.Op, len(f.FDs))
		}
		defer unix.Close(f.FDs[0])
		m, _, err := wire.ParseMessage(f.Header, f.Body)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(f.FDs[0], &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino, m.Token
	}
	ino1, tok := inode(1)
	raw.Write(wire.AppendSettle(nil, wire.OpNak, 2, wire.Settle{Token: tok, DelayMillis: 1}))
	if f := raw.Read(); f.Op != wire.OpSettled {
		t.Fatalf("NAK answered %s", f.Op)
	}
	ino2, _ := inode(3)
	if ino1 != ino2 {
		t.Fatalf("the redelivery passed inode %d, the first delivery %d: a copy", ino2, ino1)
	}
}

// TestAckAbuse: settling what is not one's own, or not yet received, is
// refused and changes nothing.
func TestAckAbuse(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	mustSend(t, c, "q", []byte("victim's"))
	d := mustReserve(t, c, "q", nil)

	thief := wiretest.DialHello(t, path)
	for i, op := range []wire.Op{wire.OpAck, wire.OpNak, wire.OpTerm, wire.OpTouch} {
		thief.Write(wire.AppendSettle(nil, op, uint64(10+i), wire.Settle{Token: d.Token()}))
		thief.ExpectError(wire.CodeStale)
	}
	// A token guessed before its delivery was sent: the RETRIEVE and the
	// ACK arrive in one write, so the ACK is read before the MESSAGE
	// goes out.
	mustSend(t, c, "q", []byte("second"))
	guess := d.Token() + 1
	thief.Write(append(wire.AppendRetrieve(nil, 20, wire.Retrieve{Queue: []byte("q"), Ack: true}),
		wire.AppendSettle(nil, wire.OpAck, 21, wire.Settle{Token: guess})...))
	var sawMessage, sawRefusal bool
	for range 2 {
		f := thief.Read()
		switch {
		case f.Op == wire.OpMessage && f.ID == 20:
			sawMessage = true
		case f.Op == wire.OpError && f.ID == 21:
			code, _, _ := wire.ParseError(f.Body)
			sawRefusal = code == wire.CodeBadRequest
		default:
			t.Fatalf("unexpected %s id %d", f.Op, f.ID)
		}
	}
	if !sawMessage || !sawRefusal {
		t.Fatalf("message %v, unsent-ack refused %v", sawMessage, sawRefusal)
	}
	// A malformed settle and a settle on a version-2 connection.
	thief.Write(wire.AppendSettle(nil, wire.OpAck, 30, wire.Settle{Token: 1, DelayMillis: 5}))
	thief.ExpectError(wire.CodeBadRequest)
	old := wiretest.Dial(t, path)
	old.Write(wire.AppendHello(nil, 0, wire.Hello{MinVersion: 1, MaxVersion: 2}))
	if f := old.Read(); f.Op != wire.OpWelcome {
		t.Fatal(f.Op)
	}
	old.Write(wire.AppendSettle(nil, wire.OpAck, 1, wire.Settle{Token: d.Token()}))
	old.ExpectError(wire.CodeUnknownOp)
	// A version-2 client's RETRIEVE with the ACK bit is a plain one.
	old.Write(wire.AppendRetrieve(nil, 2, wire.Retrieve{Queue: []byte("nothing"), Ack: true}))
	old.ExpectError(wire.CodeBadRequest) // the ack fields make its body too long for a plain one

	if err := d.Ack(ctx); err != nil {
		t.Fatalf("the victim's own ack after the abuse: %v", err)
	}
	thief.UC.Close()
	waitFor(t, "the thief's delivery back in the queue", func() bool { qs, _ := queueStats(srv, "q"); return qs.Messages == 1 && qs.Pending == 0 })
}

// TestShutdownReturnsPending: a graceful shutdown with deliveries pending
// returns them to their queues before freeing everything, and no
// descriptor is left behind.
func TestShutdownReturnsPending(t *testing.T) {
	srv, path, done := serve(t, server.Config{})
	c := dial(t, path)
	mustSend(t, c, "q", bytes.Repeat([]byte("x"), 200<<10))
	d := mustReserve(t, c, "q", nil)
	_ = d
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	<-done
	if st := srv.Stats(); st.Messages != 0 || st.Pages != 0 || st.Pending.Messages != 0 {
		t.Fatalf("after shutdown the server holds %d messages, %d pages, %d pending", st.Messages, st.Pages, st.Pending.Messages)
	}
}

// TestHostileAckAbuse is the catalogue case for acknowledged delivery: a
// client settles tokens it was never given (others', guessed, random), a
// delivery whose lease ran out, floods NAKs with the longest texts and
// delays, holds pages in ack mode past its credit and then dies. Every
// request fails alone or is bounded; nothing another client holds is
// touched; every descriptor and goroutine is back when it is gone.
func TestHostileAckAbuse(t *testing.T) {
	srv, path := startServer(t, server.Config{Ack: server.AckConfig{MaxPending: 8}})
	victim := dial(t, path)
	ctx := testCtx(t)
	mustSend(t, victim, "victim", []byte("keep me"))
	held := mustReserve(t, victim, "victim", nil)
	baseFDs := openFDs(t)
	baseGoroutines := runtime.NumGoroutine()

	raw := wiretest.DialHello(t, path)
	// Tokens of others, guessed and random: STALE, one by one.
	for i, tok := range []uint64{held.Token(), held.Token() + 1, 0, 1 << 63, ^uint64(0)} {
		raw.Write(wire.AppendSettle(nil, wire.OpAck, uint64(100+i), wire.Settle{Token: tok}))
		raw.ExpectError(wire.CodeStale)
	}
	// A flood of NAKs, TERMs and TOUCHes with the longest texts,
	// pipelined: each answered STALE, the connection kept.
	const flood = 2000
	long := bytes.Repeat([]byte("n"), wire.MaxNote)
	var b []byte
	for i := range flood {
		op := []wire.Op{wire.OpNak, wire.OpTerm, wire.OpTouch}[i%3]
		s := wire.Settle{Token: uint64(1<<40 + i)}
		if op != wire.OpTouch {
			s.Text = long
		}
		if op == wire.OpNak {
			s.DelayMillis = ^uint32(0)
		}
		b = wire.AppendSettle(b, op, uint64(1000+i), s)
	}
	wrote := make(chan error, 1)
	go func() { wrote <- wire.Write(raw.UC, b, nil) }() // the answers are read meanwhile
	for range flood {
		raw.ExpectError(wire.CodeStale)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	// Pages held in ack mode: the server's own limit on pending (8)
	// bounds them, whatever credit is asked for.
	page := bytes.Repeat([]byte("p"), 128<<10)
	for range 20 {
		mustSend(t, victim, "pages", page)
	}
	for i := range 20 {
		raw.Write(wire.AppendRetrieve(nil, uint64(5000+i), wire.Retrieve{Queue: []byte("pages"), Ack: true, Credit: 1 << 20}))
	}
	got, refused := 0, 0
	for range 20 {
		f := raw.Read()
		wire.CloseFDs(f.FDs)
		switch f.Op {
		case wire.OpMessage:
			got++
		case wire.OpError:
			refused++
		}
	}
	if got != 8 || refused != 12 {
		t.Fatalf("20 ack-mode retrieves past a --max-pending of 8: %d delivered, %d refused", got, refused)
	}
	if qs, _ := queueStats(srv, "pages"); qs.Pending != 8 || qs.Messages != 12 {
		t.Fatalf("pages queue %+v", qs)
	}
	// A lease that runs out, then a late settle: STALE.
	mustSend(t, victim, "leased", []byte("x"))
	other := wiretest.DialHello(t, path)
	other.Write(wire.AppendRetrieve(nil, 1, wire.Retrieve{Queue: []byte("leased"), Ack: true, LeaseMillis: 1}))
	f := other.Read()
	m, _, err := wire.ParseMessage(f.Header, f.Body)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the lease to run out", func() bool { qs, _ := queueStats(srv, "leased"); return qs.Messages == 1 })
	other.Write(wire.AppendSettle(nil, wire.OpAck, 2, wire.Settle{Token: m.Token}))
	other.ExpectError(wire.CodeStale)

	// The abuser dies holding its pages: all back, nothing leaked.
	raw.UC.Close()
	other.UC.Close()
	waitFor(t, "the abuser's deliveries back", func() bool { qs, _ := queueStats(srv, "pages"); return qs.Pending == 0 && qs.Messages == 20 })
	for range 20 {
		d := mustReserve(t, victim, "pages", nil)
		if !bytes.Equal(d.Bytes(), page) {
			t.Fatal("a page came back changed")
		}
		d.Ack(ctx)
		d.Close()
	}
	d := mustReserve(t, victim, "leased", nil)
	d.Ack(ctx)
	d.Close()
	waitFDsReleased(t, "every descriptor closed", baseFDs)
	waitFor(t, "no goroutine left behind", func() bool { return runtime.NumGoroutine() <= baseGoroutines })
	if err := held.Ack(ctx); err != nil {
		t.Fatalf("the victim's own delivery after the abuse: %v", err)
	}
	if st := srv.Stats(); st.Messages != 0 || st.Pending.Messages != 0 {
		t.Fatalf("the server still holds %d messages (%d pending)", st.Messages, st.Pending.Messages)
	}
}

// TestSendPageRefusedByALimitCanBeRetried: a page refused because its
// queue is full stays valid, sealed, for another SendPage.
func TestSendPageRefusedByALimitCanBeRetried(t *testing.T) {
	_, path := startServer(t, server.Config{Limits: server.Limits{MaxQueueMessages: 1}})
	c := dial(t, path)
	ctx := testCtx(t)
	mustSend(t, c, "full", []byte("first"))
	p, err := machq.NewPage(200 << 10)
	if err != nil {
		t.Fatal(err)
	}
	copy(p.Bytes(), bytes.Repeat([]byte("r"), 200<<10))
	if _, err := c.SendPage(ctx, "full", p); !errors.Is(err, machq.ErrLimit) {
		t.Fatalf("SendPage into a full queue: %v, want ErrLimit", err)
	}
	if p.Bytes() != nil {
		t.Fatal("the refused page is still writable: it must be sealed")
	}
	d := mustReserve(t, c, "full", nil)
	d.Ack(ctx)
	other := dial(t, path, machq.WithDigest(machq.DigestBLAKE3))
	if _, err := other.SendPage(ctx, "full", p); err != nil {
		t.Fatalf("the retry, from a client with another digest: %v", err)
	}
	if _, err := c.SendPage(ctx, "full", p); !errors.Is(err, machq.ErrPageUsed) {
		t.Fatalf("a stored page sent again: %v, want ErrPageUsed", err)
	}
	m, err := c.Retrieve(ctx, "full")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !bytes.Equal(m.Bytes(), bytes.Repeat([]byte("r"), 200<<10)) {
		t.Fatal("the retried page arrived changed")
	}
}

// TestQueueConfig: a queue's own max deliveries and default lease rule
// its ack-mode retrieves, its groups' too, and outlive an idle removal.
func TestQueueConfig(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	if err := c.Configure(ctx, "tight", machq.QueueConfig{MaxDeliveries: 2, Lease: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	mustSend(t, c, "tight", []byte("x"))
	if qs, _ := queueStats(srv, "tight"); qs.MaxDeliveries != 2 || qs.LeaseMillis != 50 {
		t.Fatalf("stats %+v", qs)
	}
	// The queue's lease returns a delivery nobody settles.
	first := mustReserve(t, c, "tight", nil)
	again, err := c.ReserveWait(ctx, "tight", nil)
	if err != nil || again.Deliveries() != 2 {
		t.Fatalf("after the queue's lease: %v, deliveries %d", err, again.Deliveries())
	}
	if err := first.Ack(ctx); !errors.Is(err, machq.ErrStale) {
		t.Fatalf("a late ack: %v", err)
	}
	// Its second delivery was its last.
	if err := again.Nak(ctx, 0, "no"); err != nil || again.Outcome() != machq.DeadLettered {
		t.Fatalf("NAK of the second delivery with max 2: %v, %s", err, again.Outcome())
	}
	again.Close()
	// A lease of the retrieve's own wins over the queue's.
	mustSend(t, c, "tight", []byte("y"))
	held := mustReserve(t, c, "tight", &machq.AckOptions{Lease: -1})
	if left, err := held.Touch(ctx); err != nil || left != 0 {
		t.Fatalf("touch of a delivery asking for no lease: %s %v", left, err)
	}
	held.Ack(ctx)
	// The settings outlive the queue's removal while idle.
	for i := range 3 {
		mustSend(t, c, fmt.Sprint("churn", i), []byte("z"))
		mustReserve(t, c, fmt.Sprint("churn", i), nil).Ack(ctx)
	}
	srv.Stats() // sweeps idle queues
	if _, ok := queueStats(srv, "tight"); ok {
		t.Fatal("the idle configured queue stayed")
	}
	mustSend(t, c, "tight", []byte("back"))
	if qs, _ := queueStats(srv, "tight"); qs.MaxDeliveries != 2 {
		t.Fatalf("after its removal the queue's settings are %+v", qs)
	}
}

// TestReserveAndAckInBatches: many deliveries taken and acknowledged in
// one write each; a batch stops short at the credit or the queue's end.
func TestReserveAndAckInBatches(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	for i := range 30 {
		mustSend(t, c, "b", []byte(fmt.Sprint(i)))
	}
	ds, err := c.ReserveBatch(ctx, "b", 20, nil)
	if err != nil || len(ds) != 20 {
		t.Fatalf("ReserveBatch of 20: %d, %v", len(ds), err)
	}
	for i, d := range ds {
		if string(d.Bytes()) != fmt.Sprint(i) {
			t.Fatalf("delivery %d is %q", i, d.Bytes())
		}
	}
	if err := c.AckBatch(ctx, ds); err != nil {
		t.Fatal(err)
	}
	if err := c.AckBatch(ctx, ds[:1]); !errors.Is(err, machq.ErrStale) {
		t.Fatalf("acking again: %v", err)
	}
	short, err := c.ReserveBatch(ctx, "b", 20, &machq.AckOptions{Credit: 4})
	if err != nil || len(short) != 4 {
		t.Fatalf("ReserveBatch past a credit of 4: %d, %v", len(short), err)
	}
	if err := c.AckBatch(ctx, short); err != nil {
		t.Fatal(err)
	}
	rest, err := c.ReserveBatch(ctx, "b", 20, nil)
	if err != nil || len(rest) != 6 {
		t.Fatalf("ReserveBatch of the last 6: %d, %v", len(rest), err)
	}
	c.AckBatch(ctx, rest)
	if _, err := c.ReserveBatch(ctx, "b", 5, nil); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("ReserveBatch of an empty queue: %v", err)
	}
	if st := srv.Stats(); st.Messages != 0 || st.Pending.Messages != 0 {
		t.Fatalf("after every ack the server holds %d messages (%d pending)", st.Messages, st.Pending.Messages)
	}
	for _, d := range append(append(ds, short...), rest...) {
		d.Close()
	}
}

// TestDeadLetterPassesTheSamePage checks that a page made a dead letter
// travels as the one sealed memfd its producer stored, never a copy: the
// delivery, the dead letter read from Q.dlq, a PEEK of it, and the
// message kicked back into Q all pass a descriptor of the stored file
// (same inode on the same device), and the server holds one page
// throughout.
func TestDeadLetterPassesTheSamePage(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	raw := wiretest.DialHello(t, path)
	payload := bytes.Repeat([]byte("d"), 256<<10)
	fd := memfd(t, payload, int(page.RequiredSeals))
	var stored unix.Stat_t
	if err := unix.Fstat(fd, &stored); err != nil {
		t.Fatal(err)
	}
	raw.Write(wire.AppendStore(nil, 1, wire.Store{Size: uint64(len(payload)), Queue: []byte("pages")}, nil, true), fd)
	unix.Close(fd) // the server's reference keeps the file, and its inode, alive
	if f := raw.Read(); f.Op != wire.OpStored {
		t.Fatalf("STORE of a page answered %s", f.Op)
	}
	same := func(what string, f wire.Frame) wire.Message {
		t.Helper()
		if f.Op != wire.OpMessage || len(f.FDs) != 1 {
			t.Fatalf("%s: got %s with %d descriptors, want a page", what, f.Op, len(f.FDs))
		}
		defer unix.Close(f.FDs[0])
		m, _, err := wire.ParseMessage(f.Header, f.Body)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(f.FDs[0], &st); err != nil {
			t.Fatal(err)
		}
		if st.Ino != stored.Ino || st.Dev != stored.Dev || st.Size != int64(len(payload)) {
			t.Fatalf("%s passed inode %d on device %d (%d bytes); the stored page is inode %d on device %d: a copy", what, st.Ino, st.Dev, st.Size, stored.Ino, stored.Dev)
		}
		return m
	}
	take := func(id uint64, queue string) wire.Message {
		t.Helper()
		raw.Write(wire.AppendRetrieve(nil, id, wire.Retrieve{Queue: []byte(queue), Ack: true}))
		return same("ack-mode RETRIEVE of "+queue, raw.Read())
	}
	settle := func(id uint64, op wire.Op, s wire.Settle) wire.Outcome {
		t.Helper()
		raw.Write(wire.AppendSettle(nil, op, id, s))
		f := raw.Read()
		if f.Op != wire.OpSettled {
			t.Fatalf("%s answered %s", op, f.Op)
		}
		res, err := wire.ParseSettled(f.Body)
		if err != nil {
			t.Fatal(err)
		}
		return res.Outcome
	}

	m := take(2, "pages")
	if out := settle(3, wire.OpTerm, wire.Settle{Token: m.Token, Text: []byte("unreadable")}); out != wire.OutcomeDeadLettered {
		t.Fatalf("TERM: outcome %s, want dead-lettered", out)
	}
	if dq, _ := queueStats(srv, "pages.dlq"); dq.Messages != 1 {
		t.Fatalf("pages.dlq after the TERM: %+v", dq)
	}
	if st := srv.Stats(); st.Pages != 1 || st.Messages != 1 {
		t.Fatalf("the dead letter is %d pages, %d messages in the server; want the one page", st.Pages, st.Messages)
	}
	raw.Write(wire.AppendQueueOp(nil, wire.OpPeek, 4, wire.QueueOp{Queue: []byte("pages.dlq")}))
	if p := same("PEEK of pages.dlq", raw.Read()); p.Dead != wire.DeadTerm || p.Token != 0 {
		t.Fatalf("PEEK of the dead letter: dead %d, token %d", p.Dead, p.Token)
	}
	dl := take(5, "pages.dlq")
	if dl.Seq != m.Seq || dl.Dead != wire.DeadTerm || dl.DiedAfter != 1 || string(dl.Note) != "unreadable" || dl.Deliveries != 1 || dl.Size != uint64(len(payload)) {
		t.Fatalf("dead letter: seq %d (was %d), dead %d after %d, note %q, deliveries %d, size %d", dl.Seq, m.Seq, dl.Dead, dl.DiedAfter, dl.Note, dl.Deliveries, dl.Size)
	}
	if out := settle(6, wire.OpNak, wire.Settle{Token: dl.Token, DelayMillis: 1}); out != wire.OutcomeRequeued {
		t.Fatalf("NAK in pages.dlq: outcome %s", out)
	}
	waitFor(t, "the dead letter back in pages.dlq", func() bool { q, _ := queueStats(srv, "pages.dlq"); return q.Messages == 1 })
	raw.Write(wire.AppendKick(nil, 7, wire.Kick{Queue: []byte("pages")}))
	f := raw.Read()
	if f.Op != wire.OpKicked {
		t.Fatalf("KICK answered %s", f.Op)
	}
	if n, err := wire.ParseKicked(f.Body); err != nil || n != 1 {
		t.Fatalf("KICK moved %d, %v", n, err)
	}
	back := take(8, "pages")
	if back.Seq != m.Seq || back.Dead != wire.DeadNone || back.Deliveries != 1 {
		t.Fatalf("kicked back: seq %d, dead %d, deliveries %d", back.Seq, back.Dead, back.Deliveries)
	}
	if out := settle(9, wire.OpAck, wire.Settle{Token: back.Token}); out != wire.OutcomeAcked {
		t.Fatalf("ACK: outcome %s", out)
	}
	waitFor(t, "the page freed", func() bool { st := srv.Stats(); return st.Pages == 0 && st.Messages == 0 })
}

// TestDeadLetterAfterConsumersVanish: a message whose consumers'
// connections end, again and again, becomes a dead letter once its
// queue's max deliveries (CONFIG) are used up, with no NAK at all: it is
// in Q.dlq marked as delivered the most times allowed, after exactly that
// many deliveries, with the reason the server records, and Q's counters
// say so. The message behind it is untouched.
func TestDeadLetterAfterConsumersVanish(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	const most = 3
	if err := c.Configure(ctx, "vanish", machq.QueueConfig{MaxDeliveries: most}); err != nil {
		t.Fatal(err)
	}
	mustSend(t, c, "vanish", []byte("fragile"))
	mustSend(t, c, "vanish", []byte("next"))
	for i := 1; i <= most; i++ {
		consumer := dial(t, path)
		d := mustReserve(t, consumer, "vanish", &machq.AckOptions{Lease: -1})
		if string(d.Bytes()) != "fragile" || d.Deliveries() != i || d.DeadReason() != machq.NotDead {
			t.Fatalf("delivery %d: %q, deliveries %d, %s", i, d.Bytes(), d.Deliveries(), d.DeadReason())
		}
		if err := consumer.Close(); err != nil {
			t.Fatal(err)
		}
		if i < most {
			waitFor(t, "the message back in its queue", func() bool {
				q, _ := queueStats(srv, "vanish")
				return q.Pending == 0 && q.Messages == 2
			})
			if _, ok := queueStats(srv, "vanish.dlq"); ok {
				t.Fatalf("after %d of %d deliveries the message is a dead letter", i, most)
			}
		}
	}
	waitFor(t, "the dead letter in vanish.dlq", func() bool { q, _ := queueStats(srv, "vanish.dlq"); return q.Messages == 1 })
	qs, _ := queueStats(srv, "vanish")
	if qs.Messages != 1 || qs.Pending != 0 || qs.Delayed != 0 || qs.DeadLettered != 1 ||
		qs.Delivered != most || qs.Redelivered != most-1 || qs.Acked != 0 || qs.Nacked != 0 {
		t.Fatalf("vanish after the dead letter: %+v", qs)
	}
	p, err := c.Peek(ctx, "vanish.dlq", 0)
	if err != nil {
		t.Fatal(err)
	}
	if string(p.Bytes()) != "fragile" || p.DeadReason() != machq.DeadMaxDeliveries || p.DiedAfter() != most || p.Deliveries() != 0 || !strings.Contains(p.Note(), "consumer gone") {
		t.Fatalf("PEEK of the dead letter: %q, %s after %d, deliveries %d, note %q", p.Bytes(), p.DeadReason(), p.DiedAfter(), p.Deliveries(), p.Note())
	}
	p.Close()
	dl := mustReserve(t, c, "vanish.dlq", nil)
	if string(dl.Bytes()) != "fragile" || dl.DeadReason() != machq.DeadMaxDeliveries || dl.DiedAfter() != most || dl.Deliveries() != 1 {
		t.Fatalf("dead letter: %q, %s after %d, deliveries %d", dl.Bytes(), dl.DeadReason(), dl.DiedAfter(), dl.Deliveries())
	}
	if err := dl.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	n := mustReserve(t, c, "vanish", nil)
	if string(n.Bytes()) != "next" || n.Deliveries() != 1 {
		t.Fatalf("the message behind: %q, deliveries %d", n.Bytes(), n.Deliveries())
	}
	if err := n.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestDeadLetterAfterLeasesRunOut: a message whose deliveries' leases
// (the queue's own, CONFIG) run out, with its consumer connected and
// silent, becomes a dead letter once its max deliveries are used up; the
// consumer's late ACKs are STALE and settle nothing. The message behind
// it is untouched.
func TestDeadLetterAfterLeasesRunOut(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	const most = 2
	if err := c.Configure(ctx, "leased", machq.QueueConfig{MaxDeliveries: most, Lease: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	mustSend(t, c, "leased", []byte("slow"))
	mustSend(t, c, "leased", []byte("next"))
	var ds []*machq.Delivery
	for i := 1; i <= most; i++ {
		waitFor(t, "the message in line", func() bool {
			q, _ := queueStats(srv, "leased")
			return q.Pending == 0 && q.Messages == 2
		})
		d := mustReserve(t, c, "leased", nil)
		if string(d.Bytes()) != "slow" || d.Deliveries() != i {
			t.Fatalf("delivery %d: %q, deliveries %d", i, d.Bytes(), d.Deliveries())
		}
		ds = append(ds, d)
	}
	waitFor(t, "the dead letter in leased.dlq", func() bool { q, _ := queueStats(srv, "leased.dlq"); return q.Messages == 1 })
	for i, d := range ds {
		if err := d.Ack(ctx); !errors.Is(err, machq.ErrStale) {
			t.Fatalf("ACK of delivery %d after its lease: %v, want ErrStale", i+1, err)
		}
	}
	qs, _ := queueStats(srv, "leased")
	if qs.Messages != 1 || qs.Pending != 0 || qs.Delayed != 0 || qs.DeadLettered != 1 ||
		qs.Delivered != most || qs.Redelivered != most-1 || qs.Acked != 0 || qs.Nacked != 0 {
		t.Fatalf("leased after the dead letter: %+v", qs)
	}
	dl := mustReserve(t, c, "leased.dlq", &machq.AckOptions{Lease: -1})
	if string(dl.Bytes()) != "slow" || dl.DeadReason() != machq.DeadMaxDeliveries || dl.DiedAfter() != most || !strings.Contains(dl.Note(), "ran out") {
		t.Fatalf("dead letter: %q, %s after %d, note %q", dl.Bytes(), dl.DeadReason(), dl.DiedAfter(), dl.Note())
	}
	if err := dl.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	n := mustReserve(t, c, "leased", &machq.AckOptions{Lease: -1})
	if string(n.Bytes()) != "next" || n.Deliveries() != 1 {
		t.Fatalf("the message behind: %q, deliveries %d", n.Bytes(), n.Deliveries())
	}
	if err := n.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if st := srv.Stats(); st.Messages != 0 || st.Pending.Messages != 0 {
		t.Fatalf("the server still holds %d messages (%d pending)", st.Messages, st.Pending.Messages)
	}
}
