package server_test

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/queue"
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
// of it goes when deleted, leaving nothing behind.
func TestHostileGroupsByTheThousand(t *testing.T) {
	srv, path := startServer(t, server.Config{Limits: server.Limits{MaxGroups: 1000}})
	c := dial(t, path)
	ctx := testCtx(t)
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
	if st := srv.Stats(); st.Pages != 1 {
		t.Fatalf("one page to %d groups: %d pages held", queue.MaxGroups, st.Pages)
	}
	created := queue.MaxGroups
	for q := 0; created < 2000; q++ {
		_, _, err := c.CreateGroup(ctx, fmt.Sprint("q", q), "g", false)
		if err != nil {
			if !errors.Is(err, machq.ErrLimit) || !strings.Contains(err.Error(), "--max-groups") || created != 1000 {
				t.Fatalf("after %d groups: %v", created, err)
			}
			break
		}
		created++
	}
	if created != 1000 {
		t.Fatalf("%d groups created under --max-groups 1000", created)
	}
	if _, err := c.Delete(ctx, "wide"); err != nil {
		t.Fatal(err)
	}
	for q := range 1000 - queue.MaxGroups {
		if _, err := c.DeleteGroup(ctx, fmt.Sprint("q", q), "g"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := c.CreateGroup(ctx, "again", "g", false); err != nil {
		t.Fatalf("a group once the others are gone: %v", err)
	}
	c.DeleteGroup(ctx, "again", "g")
	waitFDsReleased(t, "every descriptor closed", baseFDs)
	waitFor(t, "no goroutine left behind", func() bool { return runtime.NumGoroutine() <= baseGoroutines })
	if st := srv.Stats(); st.Messages != 0 || len(st.Queues) != 0 {
		t.Fatalf("the server still holds %d messages in %d queues", st.Messages, len(st.Queues))
	}
}
