package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/stats"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/internal/wiretest"
	"github.com/machq/machq/server"
)

// TestGroupsEachSeeEveryMessageOnce: three groups on one queue, one of
// them with three competing consumers: each group sees every message
// once, in order within each consumer; a message is freed once every
// group has acknowledged it.
func TestGroupsEachSeeEveryMessageOnce(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	admin := dial(t, path)
	ctx := testCtx(t)
	for _, g := range []string{"audit", "billing", "search"} {
		if _, created, err := admin.CreateGroup(ctx, "events", g, false); err != nil || !created {
			t.Fatalf("create %s: %v", g, err)
		}
	}
	if _, created, err := admin.CreateGroup(ctx, "events", "audit", false); err != nil || created {
		t.Fatalf("creating audit again: created %v, %v", created, err)
	}
	const n = 60
	for i := range n {
		mustSend(t, admin, "events", []byte(fmt.Sprint("event ", i)))
	}
	if qs, _ := queueStats(srv, "events"); qs.Messages != 0 || len(qs.Groups) != 3 || qs.Groups[0].Messages != n || qs.Groups[0].Position != 1 {
		t.Fatalf("stats: %+v", qs)
	}
	// Each payload is held once; each group's view counts as a message
	// against the storer's quotas.
	var payloadBytes int64
	for i := range n {
		payloadBytes += int64(len(fmt.Sprint("event ", i)))
	}
	if st := srv.Stats(); st.Messages != 3*n || st.Bytes != payloadBytes {
		t.Fatalf("the server counts %d messages (%d bytes) for 3 groups of %d messages (%d bytes): want a view per group, the bytes once", st.Messages, st.Bytes, n, payloadBytes)
	}
	consume := func(group string, c *machq.Client, got chan<- uint64, wg *sync.WaitGroup) {
		defer wg.Done()
		var last uint64
		for {
			d, err := c.Reserve(testCtx(t), "events", &machq.AckOptions{Group: group})
			if errors.Is(err, machq.ErrEmpty) {
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			if d.Seq <= last {
				t.Errorf("group %s: seq %d after %d", group, d.Seq, last)
			}
			last = d.Seq
			got <- d.Seq
			if err := d.Ack(testCtx(t)); err != nil {
				t.Error(err)
			}
			d.Close()
		}
	}
	for k, g := range []string{"audit", "billing", "search"} {
		consumers := 1
		if g == "billing" {
			consumers = 3
		}
		got := make(chan uint64, n)
		var wg sync.WaitGroup
		for range consumers {
			wg.Add(1)
			go consume(g, dial(t, path), got, &wg)
		}
		wg.Wait()
		close(got)
		seen := map[uint64]int{}
		for s := range got {
			seen[s]++
		}
		if len(seen) != n {
			t.Fatalf("group %s saw %d distinct messages, want %d", g, len(seen), n)
		}
		for s, k := range seen {
			if k != 1 {
				t.Fatalf("group %s saw message %d %d times", g, s, k)
			}
		}
		if g != "search" {
			if st := srv.Stats(); st.Messages != int64((2-k)*n) || st.Bytes != payloadBytes {
				t.Fatalf("after group %s acknowledged all, the server counts %d messages (%d bytes), want %d views of the groups left and the bytes until the last", g, st.Messages, st.Bytes, (2-k)*n)
			}
		}
	}
	if st := srv.Stats(); st.Messages != 0 {
		t.Fatalf("every group acknowledged every message, yet the server holds %d", st.Messages)
	}
	if _, err := admin.Reserve(ctx, "events", &machq.AckOptions{Group: "nope"}); !errors.Is(err, machq.ErrNoGroup) {
		t.Fatalf("a group that does not exist: %v, want ErrNoGroup", err)
	}
}

// TestGroupFanOutPassesOnePage: one page fanned out to 8 groups is one
// descriptor in the server, and every group's consumer receives the same
// memfd.
func TestGroupFanOutPassesOnePage(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	const groups = 8
	for i := range groups {
		if _, _, err := c.CreateGroup(ctx, "wide", fmt.Sprint("g", i), false); err != nil {
			t.Fatal(err)
		}
	}
	payload := bytes.Repeat([]byte("w"), 4<<20)
	mustSend(t, c, "wide", payload)
	if st := srv.Stats(); st.Pages != 1 || st.Descriptors-int64(3*st.Clients) != 1 {
		t.Fatalf("one page for %d groups: the server holds %d pages, %d descriptors for %d clients", groups, st.Pages, st.Descriptors, st.Clients)
	}
	raw := wiretest.DialHello(t, path)
	var inode uint64
	for i := range groups {
		raw.Write(wire.AppendRetrieve(nil, uint64(i+1), wire.Retrieve{Queue: []byte("wide"), Group: []byte(fmt.Sprint("g", i)), Ack: true}))
		f := raw.Read()
		if f.Op != wire.OpMessage || len(f.FDs) != 1 {
			t.Fatalf("group %d: %s with %d descriptors", i, f.Op, len(f.FDs))
		}
		var st unix.Stat_t
		unix.Fstat(f.FDs[0], &st)
		unix.Close(f.FDs[0])
		if i == 0 {
			inode = st.Ino
		} else if st.Ino != inode {
			t.Fatalf("group %d received inode %d, group 0 inode %d: a copy", i, st.Ino, inode)
		}
	}
	raw.UC.Close() // every group's delivery goes back
	waitFor(t, "the deliveries back in their groups", func() bool {
		qs, _ := queueStats(srv, "wide")
		for _, g := range qs.Groups {
			if g.Messages != 1 {
				return false
			}
		}
		return len(qs.Groups) == groups
	})
	for i := range groups {
		d := mustReserve(t, c, "wide", &machq.AckOptions{Group: fmt.Sprint("g", i)})
		if !bytes.Equal(d.Bytes(), payload) || d.Deliveries() != 2 {
			t.Fatalf("group %d: redelivery of %d bytes, deliveries %d", i, d.Len(), d.Deliveries())
		}
		d.Ack(ctx)
		d.Close()
	}
	if st := srv.Stats(); st.Pages != 0 || st.Messages != 0 {
		t.Fatalf("after every group: %d pages, %d messages", st.Pages, st.Messages)
	}
}

func TestGroupFromOldestAndDelete(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	c, waiter := dial(t, path), dial(t, path)
	ctx := testCtx(t)
	mustSend(t, c, "q", []byte("old"))
	adopted, _, err := c.CreateGroup(ctx, "q", "late", true)
	if err != nil || adopted != 1 {
		t.Fatalf("from oldest: adopted %d, %v", adopted, err)
	}
	mustSend(t, c, "q", []byte("new"))
	d := mustReserve(t, c, "q", &machq.AckOptions{Group: "late"})
	if string(d.Bytes()) != "old" {
		t.Fatalf("the group's first message is %q", d.Bytes())
	}
	errc := make(chan error, 1)
	if _, _, err := c.CreateGroup(ctx, "q", "idle", false); err != nil {
		t.Fatal(err)
	}
	mustSend(t, c, "q", []byte("newer"))
	// idle's consumer takes newer and waits for more.
	x := mustReserve(t, waiter, "q", &machq.AckOptions{Group: "idle"})
	x.Ack(ctx)
	go func() {
		_, err := waiter.ReserveWait(testCtx(t), "q", &machq.AckOptions{Group: "idle"})
		errc <- err
	}()
	waitFor(t, "the waiter", func() bool {
		qs, _ := queueStats(srv, "q")
		return len(qs.Groups) == 2 && qs.Groups[0].Waiting == 1
	})
	p, err := c.DeleteGroup(ctx, "q", "idle")
	if err != nil || p.Freed != 0 {
		t.Fatalf("delete idle: %+v, %v", p, err)
	}
	if err := <-errc; !errors.Is(err, machq.ErrCancelled) {
		t.Fatalf("a waiter on a deleted group: %v", err)
	}
	p, err = c.DeleteGroup(ctx, "q", "late")
	if err != nil || p.Freed != 2 || p.Pending != 1 {
		t.Fatalf("delete late: %+v, %v", p, err)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatalf("ACK of a deleted group's delivery: %v", err)
	}
	waitFor(t, "nothing held", func() bool { return srv.Stats().Messages == 0 })
}

func TestGroupDeadLettersKickBackToTheGroup(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c := dial(t, path)
	ctx := testCtx(t)
	c.CreateGroup(ctx, "q", "a", false)
	c.CreateGroup(ctx, "q", "b", false)
	mustSend(t, c, "q", []byte("m"))
	d := mustReserve(t, c, "q", &machq.AckOptions{Group: "a"})
	d.Term(ctx, "a cannot")
	if n, err := c.Kick(ctx, "q", 0); err != nil || n != 1 {
		t.Fatalf("kick: %d %v", n, err)
	}
	again := mustReserve(t, c, "q", &machq.AckOptions{Group: "a"})
	if string(again.Bytes()) != "m" || again.Deliveries() != 1 {
		t.Fatalf("group a after the kick: %q %d", again.Bytes(), again.Deliveries())
	}
	b := mustReserve(t, c, "q", &machq.AckOptions{Group: "b"})
	if string(b.Bytes()) != "m" {
		t.Fatalf("group b: %q", b.Bytes())
	}
	if _, err := c.Reserve(ctx, "q", &machq.AckOptions{Group: "b"}); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("the kick gave group b a second copy: %v", err)
	}
}

// TestHostileGroupsByTheThousand: a client creating consumer groups by
// the thousand meets the per-queue bound (256) and --max-groups, with a
// LIMIT naming them; a store into a queue of 256 groups still works; all
// of it goes when deleted, leaving nothing behind. Another client's
// data stored before (a message and a page in a queue, a message in a
// consumer group of its own) is intact throughout and retrievable
// afterwards.
func TestHostileGroupsByTheThousand(t *testing.T) {
	srv, path := startServer(t, server.Config{Limits: server.Limits{MaxGroups: 1000}})
	c := dial(t, path)
	ctx := testCtx(t)
	other := dial(t, path)
	otherPage := randomBytes(t, 200<<10)
	mustSend(t, other, "others", []byte("keep me"))
	mustSend(t, other, "others", otherPage)
	const otherGroups = 1 // counted against --max-groups like the attacker's
	if _, created, err := other.CreateGroup(ctx, "others-g", "keep", false); err != nil || !created {
		t.Fatalf("the other client's group: %v", err)
	}
	mustSend(t, other, "others-g", []byte("grouped"))
	otherIntact := func(when string) {
		t.Helper()
		q, _ := queueStats(srv, "others")
		g, _ := queueStats(srv, "others-g")
		if q.Messages != 2 || q.Bytes != int64(len("keep me")+len(otherPage)) || q.Pending != 0 ||
			len(g.Groups) != 1 || g.Groups[0].Name != "keep" || g.Groups[0].Messages != 1 || g.Groups[0].Pending != 0 {
			t.Fatalf("%s, the other client's queues are %+v and %+v", when, q, g)
		}
	}
	otherIntact("before the attack")
	baseFDs := openFDs(t)
	baseGoroutines := runtime.NumGoroutine()
	var limitErr error
	for i := range 300 {
		_, _, err := c.CreateGroup(ctx, "wide", fmt.Sprint("g", i), false)
		if err != nil {
			if i != queue.MaxGroups || !errors.Is(err, machq.ErrLimit) {
				t.Fatalf("group %d of one queue: %v", i, err)
			}
			limitErr = err
			break
		}
	}
	if limitErr == nil {
		t.Fatal("300 groups on one queue were all created")
	}
	mustSend(t, c, "wide", bytes.Repeat([]byte("x"), 300<<10))
	if st := srv.Stats(); st.Pages != 2 {
		t.Fatalf("one page to %d groups, and the other client's: %d pages held", queue.MaxGroups, st.Pages)
	}
	created := queue.MaxGroups
	for q := 0; created < 2000; q++ {
		_, _, err := c.CreateGroup(ctx, fmt.Sprint("q", q), "g", false)
		if err != nil {
			if !errors.Is(err, machq.ErrLimit) || !strings.Contains(err.Error(), "--max-groups") || created != 1000-otherGroups {
				t.Fatalf("after %d groups: %v", created, err)
			}
			break
		}
		created++
	}
	if created != 1000-otherGroups {
		t.Fatalf("%d groups created under --max-groups 1000, with %d of another client's", created, otherGroups)
	}
	otherIntact("at the height of the attack")
	if _, err := c.Delete(ctx, "wide"); err != nil {
		t.Fatal(err)
	}
	for q := range created - queue.MaxGroups {
		if _, err := c.DeleteGroup(ctx, fmt.Sprint("q", q), "g"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := c.CreateGroup(ctx, "again", "g", false); err != nil {
		t.Fatalf("a group once the others are gone: %v", err)
	}
	c.DeleteGroup(ctx, "again", "g")

	// The other client's data came through whole.
	otherIntact("after the attack")
	expectMessage(t, ctx, other, "others", "keep me", "the other client's message after the attack")
	m, err := other.Retrieve(ctx, "others")
	if err != nil {
		t.Fatalf("the other client's page after the attack: %v", err)
	}
	if !bytes.Equal(m.Bytes(), otherPage) {
		t.Fatal("the other client's page came back changed")
	}
	m.Close()
	d := mustReserve(t, other, "others-g", &machq.AckOptions{Group: "keep"})
	if string(d.Bytes()) != "grouped" || d.Deliveries() != 1 {
		t.Fatalf("the other client's group delivered %q (deliveries %d)", d.Bytes(), d.Deliveries())
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if _, err := other.DeleteGroup(ctx, "others-g", "keep"); err != nil {
		t.Fatal(err)
	}
	waitFDsReleased(t, "every descriptor closed", baseFDs)
	waitFor(t, "no goroutine left behind", func() bool { return runtime.NumGoroutine() <= baseGoroutines })
	if st := srv.Stats(); st.Messages != 0 || len(st.Queues) != 0 {
		t.Fatalf("the server still holds %d messages in %d queues", st.Messages, len(st.Queues))
	}
}

// groupStat returns, through a STAT request, the STATS entry of the
// consumer group group of queue.
func groupStat(t *testing.T, c *machq.Client, queue, group string) machq.GroupStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range st.Queues {
		if q.Name != queue {
			continue
		}
		for _, g := range q.Groups {
			if g.Name == group {
				return g
			}
		}
	}
	t.Fatalf("STATS lists no group %s of queue %s", group, queue)
	return machq.GroupStats{}
}

// TestGroupCountersAreExact: after a known sequence of deliveries, ACKs,
// NAKs, a TERM, a delivery held and a consumer gone, each consumer
// group's STATS (delivered, redelivered, acked, nacked, dead_lettered,
// pending, delayed, messages, position) are exactly what happened in
// that group, and a group nobody read is untouched by the other's.
func TestGroupCountersAreExact(t *testing.T) {
	_, path := startServer(t, server.Config{})
	c, holder := dial(t, path), dial(t, path)
	ctx := testCtx(t)
	for _, g := range []string{"a", "b"} {
		if _, created, err := c.CreateGroup(ctx, "events", g, false); err != nil || !created {
			t.Fatalf("create %s: %v", g, err)
		}
	}
	var seqs []uint64
	for i := 1; i <= 5; i++ {
		seq, err := c.Send(ctx, "events", []byte(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	want := func(what string, got, exp machq.GroupStats) {
		t.Helper()
		exp.Name = got.Name
		exp.Bytes = int64(exp.Messages) // every payload is one byte
		if got != exp {
			t.Fatalf("%s: group %s is\n%+v\nwant\n%+v", what, got.Name, got, exp)
		}
	}
	untouched := machq.GroupStats{Messages: 5, Position: seqs[0]}
	want("before any delivery", groupStat(t, c, "events", "a"), untouched)

	a := &machq.AckOptions{Group: "a", Lease: -1}
	reserve := func(cl *machq.Client, payload string, deliveries int) *machq.Delivery {
		t.Helper()
		d := mustReserve(t, cl, "events", a)
		if string(d.Bytes()) != payload || d.Deliveries() != deliveries {
			t.Fatalf("group a delivered %q (deliveries %d), want %q (deliveries %d)", d.Bytes(), d.Deliveries(), payload, deliveries)
		}
		return d
	}
	// 1: delivered, acked.
	if err := reserve(c, "1", 1).Ack(ctx); err != nil {
		t.Fatal(err)
	}
	// 2: delivered, NAKed, back, delivered again, acked.
	if err := reserve(c, "2", 1).Nak(ctx, time.Millisecond, "later"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the NAKed message back in group a", func() bool {
		g := groupStat(t, c, "events", "a")
		return g.Delayed == 0 && g.Messages == 4
	})
	if err := reserve(c, "2", 2).Ack(ctx); err != nil {
		t.Fatal(err)
	}
	// 3: delivered, TERMed.
	if err := reserve(c, "3", 1).Term(ctx, "bad"); err != nil {
		t.Fatal(err)
	}
	// 4: delivered to the holder, which keeps it.
	reserve(holder, "4", 1)
	// 5: delivered, NAKed for an hour.
	if err := reserve(c, "5", 1).Nak(ctx, time.Hour, ""); err != nil {
		t.Fatal(err)
	}
	want("after 6 deliveries, 2 ACKs, 2 NAKs, a TERM, one held", groupStat(t, c, "events", "a"), machq.GroupStats{
		Pending: 1, Delayed: 1,
		Counts: stats.Counts{Delivered: 6, Redelivered: 1, Acked: 2, Nacked: 2, DeadLettered: 1},
	})
	want("group b, which nobody read", groupStat(t, c, "events", "b"), untouched)

	// The holder leaves: its delivery comes back, counted as no NAK.
	holder.Close()
	waitFor(t, "the holder's delivery back in group a", func() bool { return groupStat(t, c, "events", "a").Pending == 0 })
	want("after the holder left", groupStat(t, c, "events", "a"), machq.GroupStats{
		Messages: 1, Delayed: 1, Position: seqs[3],
		Counts: stats.Counts{Delivered: 6, Redelivered: 1, Acked: 2, Nacked: 2, DeadLettered: 1},
	})
	if err := reserve(c, "4", 2).Ack(ctx); err != nil {
		t.Fatal(err)
	}
	want("after the redelivery acked", groupStat(t, c, "events", "a"), machq.GroupStats{
		Delayed: 1,
		Counts:  stats.Counts{Delivered: 7, Redelivered: 2, Acked: 3, Nacked: 2, DeadLettered: 1},
	})

	// Group b reads everything in one batch and acknowledges it; group
	// a's counts do not move.
	ds, err := c.ReserveBatch(ctx, "events", 5, &machq.AckOptions{Group: "b", Lease: -1})
	if err != nil || len(ds) != 5 {
		t.Fatalf("group b's batch: %d deliveries, %v", len(ds), err)
	}
	want("group b with 5 pending", groupStat(t, c, "events", "b"), machq.GroupStats{
		Pending: 5, Counts: stats.Counts{Delivered: 5},
	})
	if err := c.AckBatch(ctx, ds); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		d.Close()
	}
	want("group b after its ACKs", groupStat(t, c, "events", "b"), machq.GroupStats{
		Counts: stats.Counts{Delivered: 5, Acked: 5},
	})
	want("group a after group b's reading", groupStat(t, c, "events", "a"), machq.GroupStats{
		Delayed: 1,
		Counts:  stats.Counts{Delivered: 7, Redelivered: 2, Acked: 3, Nacked: 2, DeadLettered: 1},
	})
}
