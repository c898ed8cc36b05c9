package server_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/asuser"
	"github.com/machq/machq/server"
)

// dialAs connects to path with the effective user and group ids uid and
// gid, as another local user would. The kernel records the credentials
// of the connecting thread (SO_PEERCRED), so only that thread takes the
// ids, and it ends with the goroutine. It needs root.
func dialAs(t *testing.T, path string, uid, gid int, opts ...machq.Option) (*machq.Client, error) {
	t.Helper()
	var c *machq.Client
	err := asuser.Do(uid, gid, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		c, err = machq.Dial(ctx, path, opts...)
		return err
	})
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// serveToOthers runs a server with access in a directory other users can
// search, through ListenAndServe, which opens the socket to them.
func serveToOthers(t *testing.T, access server.Access) (*server.Server, string) {
	t.Helper()
	return serveToOthersWith(t, server.Config{Access: access})
}

// serveToOthersWith is serveToOthers with a configuration of its own
// (cfg.Access says who is admitted).
func serveToOthersWith(t *testing.T, cfg server.Config) (*server.Server, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "access-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s.sock")
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe(path) }()
	t.Cleanup(func() {
		srv.Close()
		<-errc
	})
	// The file exists, with its mode, a moment before it listens (bind,
	// then listen): wait until a connection gets through too.
	waitFor(t, "the socket open to everyone and listening", func() bool {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o666 {
			return false
		}
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return srv, path
}

// TestAccessAdmitsListedUsersOnly checks --allow-uid and --allow-gid: a
// listed user, and a member of a listed group, are served; anyone else
// gets DENIED naming what to ask for, and the server goes on serving.
func TestAccessAdmitsListedUsersOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as other users")
	}
	_, path := serveToOthers(t, server.Access{AllowUIDs: []uint32{4242}, AllowGIDs: []uint32{777}})

	ctx := testCtx(t)
	allowed, err := dialAs(t, path, 4242, 4242)
	if err != nil {
		t.Fatalf("listed uid 4242: %v", err)
	}
	if _, err := allowed.Send(ctx, "", []byte("hello")); err != nil {
		t.Fatalf("listed uid 4242 storing: %v", err)
	}
	if _, err := dialAs(t, path, 4343, 777); err != nil {
		t.Fatalf("uid 4343 in listed group 777: %v", err)
	}
	_, err = dialAs(t, path, 4343, 4343)
	if !errors.Is(err, machq.ErrDenied) || !strings.Contains(err.Error(), "--allow-uid 4343") {
		t.Fatalf("unlisted uid 4343: %v; want ErrDenied saying what to ask for", err)
	}
	// The refusal harmed nobody.
	if _, err := allowed.Send(ctx, "", []byte("again")); err != nil {
		t.Fatalf("listed uid after a refusal: %v", err)
	}
}

// TestOwnedQueues checks that a named queue created with FlagOwned is its
// creator's alone: another user's stores and retrieves fail with
// FORBIDDEN and change nothing, root may use it, and an existing queue is
// not taken over by a later owned request.
func TestOwnedQueues(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as other users")
	}
	srv, path := serveToOthers(t, server.Access{AllowUIDs: []uint32{4242, 4343}})
	ctx := testCtx(t)
	owner, err := dialAs(t, path, 4242, 4242, machq.WithOwnedQueues())
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := dialAs(t, path, 4343, 4343, machq.WithOwnedQueues())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Send(ctx, "mine", []byte("secret")); err != nil {
		t.Fatal(err)
	}
	if _, err := stranger.Send(ctx, "mine", []byte("intrusion")); !errors.Is(err, machq.ErrDenied) || !strings.Contains(err.Error(), "uid 4242") {
		t.Fatalf("another user storing into an owned queue: %v; want ErrDenied naming the owner", err)
	}
	if _, err := stranger.Retrieve(ctx, "mine"); !errors.Is(err, machq.ErrDenied) {
		t.Fatalf("another user retrieving from an owned queue: %v; want ErrDenied", err)
	}
	if _, err := stranger.Send(ctx, "theirs", []byte("fine")); err != nil {
		t.Fatalf("the other user's own owned queue: %v", err)
	}
	st := srv.Stats()
	for _, q := range st.Queues {
		if q.Name == "mine" && (q.Owner == nil || *q.Owner != 4242 || q.Messages != 1) {
			t.Fatalf("queue mine: owner %v, %d messages; want 4242 and the one message", q.Owner, q.Messages)
		}
	}
	root := dial(t, path) // this test runs as root
	expectMessage(t, ctx, root, "mine", "secret", "root retrieving from an owned queue")

	// A queue made without the flag stays open to all, and an owned
	// request on it is refused: a store that insists on a queue of its
	// own never lands in one others read.
	if _, err := root.Send(ctx, "shared", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Send(ctx, "shared", []byte("y")); !errors.Is(err, machq.ErrDenied) || !strings.Contains(err.Error(), "open to every user") {
		t.Fatalf("an owned request on an existing open queue: %v; want ErrDenied saying the queue is open", err)
	}
	if _, err := owner.Retrieve(ctx, "shared"); !errors.Is(err, machq.ErrDenied) {
		t.Fatalf("an owned retrieve from an open queue: %v; want ErrDenied", err)
	}
	plain, err := dialAs(t, path, 4343, 4343)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Send(ctx, "shared", []byte("z")); err != nil {
		t.Fatalf("an open queue refused a plain store: %v", err)
	}

	// Emptied and removed, the open queue cannot be claimed while the
	// server remembers it, and the owned one keeps its owner.
	for range 2 {
		m, err := root.Retrieve(ctx, "shared")
		if err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
	for _, q := range srv.Stats().Queues { // STATS sweeps idle queues
		if q.Name == "shared" {
			t.Fatalf("idle open queue %s still listed", q.Name)
		}
		if q.Name == "mine" && (q.Owner == nil || *q.Owner != 4242) {
			t.Fatalf("idle owned queue mine lost its owner: %v", q.Owner)
		}
	}
	if _, err := stranger.Send(ctx, "shared", []byte("claim?")); !errors.Is(err, machq.ErrDenied) {
		t.Fatalf("an idle open queue the server remembers was claimed as an owned one: %v", err)
	}
	if _, err := plain.Send(ctx, "shared", []byte("still open")); err != nil {
		t.Fatalf("an idle open queue was taken over: %v", err)
	}
	if _, err := stranger.Send(ctx, "mine", []byte("intrusion")); !errors.Is(err, machq.ErrDenied) {
		t.Fatalf("an idle owned queue lost its owner: %v", err)
	}
	// Root may use an owned queue, but not insist on it as its own.
	rootOwned := dial(t, path, machq.WithOwnedQueues())
	if _, err := rootOwned.Send(ctx, "mine", []byte("root")); !errors.Is(err, machq.ErrDenied) {
		t.Fatalf("root's owned store into uid 4242's queue: %v; want ErrDenied", err)
	}

	// A RETRIEVE without a wait creates nothing, OWNED or not: it cannot
	// claim a name, nor fill the queue limit.
	if _, err := stranger.Retrieve(ctx, "unclaimed"); !errors.Is(err, machq.ErrEmpty) {
		t.Fatal(err)
	}
	if _, err := owner.Send(ctx, "unclaimed", []byte("mine now")); err != nil {
		t.Fatalf("a name a RETRIEVE touched was claimed by it: %v", err)
	}
}

// expectForbidden fails the test unless err is the server's FORBIDDEN
// answer to one request, which leaves the connection usable.
func expectForbidden(t *testing.T, what string, err error) {
	t.Helper()
	var se *machq.ServerError
	if !errors.As(err, &se) || se.Code != machq.CodeForbidden || !errors.Is(err, machq.ErrDenied) {
		t.Fatalf("%s: %v; want FORBIDDEN", what, err)
	}
}

// ownerAndStranger starts a server admitting uids 4242 and 4343, and
// returns it, its socket, a client of uid 4242 whose named queues are
// its own (WithOwnedQueues) and a client of uid 4343.
func ownerAndStranger(t *testing.T) (*server.Server, string, *machq.Client, *machq.Client) {
	t.Helper()
	srv, path := serveToOthers(t, server.Access{AllowUIDs: []uint32{4242, 4343}})
	owner, err := dialAs(t, path, 4242, 4242, machq.WithOwnedQueues())
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := dialAs(t, path, 4343, 4343)
	if err != nil {
		t.Fatal(err)
	}
	return srv, path, owner, stranger
}

// TestOwnedQueueRefusesOthersEveryOperation checks that the operations of
// protocol version 3 respect an owned queue as STORE and RETRIEVE do:
// another user's PEEK, PURGE, DELETE, GROUP (create and delete), KICK,
// CONFIG and ack-mode RETRIEVE (of the queue, through its consumer group,
// waiting or in a batch), with or without the OWNED flag, each fail with
// FORBIDDEN and change nothing. The queue's dead-letter queue Q.dlq
// belongs to the queue's owner: the owner and root may use it, the other
// user may not read it, store into it, or empty it.
func TestOwnedQueueRefusesOthersEveryOperation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as other users")
	}
	srv, path, owner, stranger := ownerAndStranger(t)
	ctx := testCtx(t)
	strangerOwned, err := dialAs(t, path, 4343, 4343, machq.WithOwnedQueues())
	if err != nil {
		t.Fatal(err)
	}

	// The owner's queue mine, created owned by its first STORE, with
	// settings of its own, a dead letter in mine.dlq and two messages in
	// line; and mine-g, created owned by its GROUP, whose group g holds
	// one message.
	mustSend(t, owner, "mine", []byte("doomed"))
	if err := owner.Configure(ctx, "mine", machq.QueueConfig{MaxDeliveries: 5, Lease: time.Minute}); err != nil {
		t.Fatal(err)
	}
	doomed := mustReserve(t, owner, "mine", nil)
	if err := doomed.Term(ctx, "owner's reason"); err != nil || doomed.Outcome() != machq.DeadLettered {
		t.Fatalf("the owner's TERM: %v, %s", err, doomed.Outcome())
	}
	mustSend(t, owner, "mine", []byte("secret-1"))
	mustSend(t, owner, "mine", []byte("secret-2"))
	if _, created, err := owner.CreateGroup(ctx, "mine-g", "g", false); err != nil || !created {
		t.Fatalf("the owner's GROUP: created %v, %v", created, err)
	}
	mustSend(t, owner, "mine-g", []byte("grouped"))

	names := []string{"mine", "mine-g", "mine.dlq"}
	snapshot := func() map[string]server.QueueStats {
		m := map[string]server.QueueStats{}
		for _, q := range srv.Stats().Queues {
			m[q.Name] = q
		}
		return m
	}
	before := snapshot()
	if len(before) != len(names) {
		t.Fatalf("queues %v, want %v", before, names)
	}
	for _, name := range names {
		q := before[name]
		if q.Owner == nil || *q.Owner != 4242 {
			t.Fatalf("queue %s: owner %v, want 4242 (the dead-letter queue takes its queue's owner)", name, q.Owner)
		}
	}
	if q := before["mine"]; q.Messages != 2 || q.MaxDeliveries != 5 || q.LeaseMillis != 60000 || q.DeadLettered != 1 {
		t.Fatalf("queue mine before: %+v", q)
	}
	if q := before["mine.dlq"]; q.Messages != 1 {
		t.Fatalf("queue mine.dlq before: %+v", q)
	}
	if q := before["mine-g"]; len(q.Groups) != 1 || q.Groups[0].Name != "g" || q.Groups[0].Messages != 1 {
		t.Fatalf("queue mine-g before: %+v", q)
	}

	closeAll := func(ds ...*machq.Delivery) {
		for _, d := range ds {
			if d != nil {
				t.Errorf("a refused request delivered seq %d of %s", d.Seq, d.Queue)
				d.Close()
			}
		}
	}
	for _, who := range []struct {
		name string
		c    *machq.Client
	}{{"uid 4343", stranger}, {"uid 4343 with --owned", strangerOwned}} {
		c := who.c
		attempts := []struct {
			what string
			do   func() error
		}{
			{"PEEK mine", func() error {
				m, err := c.Peek(ctx, "mine", 0)
				if m != nil {
					t.Errorf("PEEK showed %q", m.Bytes())
					m.Close()
				}
				return err
			}},
			{"PEEK mine.dlq", func() error {
				m, err := c.Peek(ctx, "mine.dlq", 0)
				if m != nil {
					t.Errorf("PEEK showed %q", m.Bytes())
					m.Close()
				}
				return err
			}},
			{"PURGE mine", func() error { _, err := c.Purge(ctx, "mine"); return err }},
			{"PURGE mine.dlq", func() error { _, err := c.Purge(ctx, "mine.dlq"); return err }},
			{"PURGE mine-g", func() error { _, err := c.Purge(ctx, "mine-g"); return err }},
			{"DELETE mine", func() error { _, err := c.Delete(ctx, "mine"); return err }},
			{"DELETE mine.dlq", func() error { _, err := c.Delete(ctx, "mine.dlq"); return err }},
			{"DELETE mine-g", func() error { _, err := c.Delete(ctx, "mine-g"); return err }},
			{"GROUP create on mine", func() error { _, _, err := c.CreateGroup(ctx, "mine", "spy", false); return err }},
			{"GROUP create from the oldest on mine", func() error { _, _, err := c.CreateGroup(ctx, "mine", "spy", true); return err }},
			{"GROUP create of mine-g's existing g", func() error { _, _, err := c.CreateGroup(ctx, "mine-g", "g", true); return err }},
			{"GROUP delete of mine-g's g", func() error { _, err := c.DeleteGroup(ctx, "mine-g", "g"); return err }},
			{"KICK mine", func() error { _, err := c.Kick(ctx, "mine", 0); return err }},
			{"CONFIG mine", func() error {
				return c.Configure(ctx, "mine", machq.QueueConfig{MaxDeliveries: 1, Lease: time.Millisecond})
			}},
			{"CONFIG mine.dlq", func() error { return c.Configure(ctx, "mine.dlq", machq.QueueConfig{MaxDeliveries: 1}) }},
			{"ack-mode RETRIEVE of mine", func() error { d, err := c.Reserve(ctx, "mine", nil); closeAll(d); return err }},
			{"waiting ack-mode RETRIEVE of mine", func() error {
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				d, err := c.ReserveWait(wctx, "mine", nil)
				closeAll(d)
				return err
			}},
			{"ack-mode RETRIEVE batch of mine", func() error { ds, err := c.ReserveBatch(ctx, "mine", 4, nil); closeAll(ds...); return err }},
			{"ack-mode RETRIEVE through mine-g's group g", func() error {
				d, err := c.Reserve(ctx, "mine-g", &machq.AckOptions{Group: "g"})
				closeAll(d)
				return err
			}},
			{"ack-mode RETRIEVE of mine.dlq", func() error { d, err := c.Reserve(ctx, "mine.dlq", nil); closeAll(d); return err }},
			{"plain RETRIEVE of mine.dlq", func() error {
				m, err := c.Retrieve(ctx, "mine.dlq")
				if m != nil {
					t.Errorf("RETRIEVE of mine.dlq took %q", m.Bytes())
					m.Close()
				}
				return err
			}},
			{"STORE into mine.dlq", func() error { _, err := c.Send(ctx, "mine.dlq", []byte("forged dead letter")); return err }},
		}
		for _, a := range attempts {
			expectForbidden(t, who.name+": "+a.what, a.do())
		}
	}

	// Nothing changed: the same queues, with the same contents, settings,
	// groups, owners and counters, nobody waiting.
	after := snapshot()
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("the refused requests changed the owner's queues:\nbefore %+v\nafter  %+v", before, after)
	}
	if st := srv.Stats(); st.Pending.Messages != 0 || st.Waiting != 0 {
		t.Fatalf("after the refusals: %d pending, %d waiting", st.Pending.Messages, st.Waiting)
	}

	// The owner still has everything, never delivered to anyone else.
	p, err := owner.Peek(ctx, "mine", 0)
	if err != nil {
		t.Fatalf("the owner's PEEK: %v", err)
	}
	if string(p.Bytes()) != "secret-1" || p.Deliveries() != 0 {
		t.Fatalf("the owner peeked %q, delivered %d times", p.Bytes(), p.Deliveries())
	}
	p.Close()
	for _, want := range []string{"secret-1", "secret-2"} {
		d := mustReserve(t, owner, "mine", nil)
		if string(d.Bytes()) != want || d.Deliveries() != 1 {
			t.Fatalf("the owner reserved %q (deliveries %d), want %q delivered once", d.Bytes(), d.Deliveries(), want)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	g := mustReserve(t, owner, "mine-g", &machq.AckOptions{Group: "g"})
	if string(g.Bytes()) != "grouped" || g.Deliveries() != 1 {
		t.Fatalf("the owner's group delivered %q (deliveries %d)", g.Bytes(), g.Deliveries())
	}
	if err := g.Ack(ctx); err != nil {
		t.Fatal(err)
	}

	// The dead-letter queue is the owner's, and root's: root may look
	// into it, the owner may read it and kick its letters back.
	root := dial(t, path) // this test runs as root
	rp, err := root.Peek(ctx, "mine.dlq", 0)
	if err != nil {
		t.Fatalf("root's PEEK of mine.dlq: %v", err)
	}
	if string(rp.Bytes()) != "doomed" || rp.DeadReason() != machq.DeadTerminated {
		t.Fatalf("root peeked %q (%s) in mine.dlq", rp.Bytes(), rp.DeadReason())
	}
	rp.Close()
	dl := mustReserve(t, owner, "mine.dlq", nil)
	if string(dl.Bytes()) != "doomed" || dl.DeadReason() != machq.DeadTerminated || dl.Note() != "owner's reason" || dl.DiedAfter() != 1 {
		t.Fatalf("the owner's dead letter %q: %s after %d, note %q", dl.Bytes(), dl.DeadReason(), dl.DiedAfter(), dl.Note())
	}
	if err := dl.Nak(ctx, time.Millisecond, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead letter back in mine.dlq", func() bool { q, _ := queueStats(srv, "mine.dlq"); return q.Messages == 1 })
	if n, err := owner.Kick(ctx, "mine", 0); err != nil || n != 1 {
		t.Fatalf("the owner's KICK: %d, %v", n, err)
	}
	back := mustReserve(t, owner, "mine", nil)
	if string(back.Bytes()) != "doomed" || back.DeadReason() != machq.NotDead {
		t.Fatalf("kicked back: %q (%s)", back.Bytes(), back.DeadReason())
	}
	if err := back.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestDeadLettersStayOutOfAnotherUsersQueue: a dead-letter queue Q.dlq
// that another user made first (open to all, or owned by that user) does
// not receive the dead letters of an owned queue Q: a TERM there answers
// requeued, the message stays in Q (back after the longest NAK backoff)
// for its owner, and the other user's Q.dlq holds only what that user
// put in it.
func TestDeadLettersStayOutOfAnotherUsersQueue(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as other users")
	}
	srv, path := serveToOthersWith(t, server.Config{
		Access: server.Access{AllowUIDs: []uint32{4242, 4343}},
		Ack:    server.AckConfig{NakBackoff: time.Millisecond, NakBackoffMax: 50 * time.Millisecond},
	})
	ctx := testCtx(t)
	owner, err := dialAs(t, path, 4242, 4242, machq.WithOwnedQueues())
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := dialAs(t, path, 4343, 4343)
	if err != nil {
		t.Fatal(err)
	}
	strangerOwned, err := dialAs(t, path, 4343, 4343, machq.WithOwnedQueues())
	if err != nil {
		t.Fatal(err)
	}
	mustSend(t, stranger, "open.dlq", []byte("planted"))
	mustSend(t, strangerOwned, "taken.dlq", []byte("planted"))
	for _, name := range []string{"open", "taken"} {
		mustSend(t, owner, name, []byte("private to 4242"))
		d := mustReserve(t, owner, name, nil)
		if err := d.Term(ctx, "give up"); err != nil {
			t.Fatalf("TERM in %s: %v", name, err)
		}
		if d.Outcome() != machq.Requeued {
			t.Fatalf("TERM in %s with %s.dlq another user's: outcome %s, want requeued", name, name, d.Outcome())
		}
		dq, _ := queueStats(srv, name+".dlq")
		if dq.Messages != 1 || dq.Owner != nil && *dq.Owner != 4343 {
			t.Fatalf("%s.dlq after the TERM: %+v", name, dq)
		}
		again, err := owner.ReserveWait(ctx, name, nil)
		if err != nil {
			t.Fatalf("the kept dead letter of %s: %v", name, err)
		}
		if string(again.Bytes()) != "private to 4242" || again.DeadReason() != machq.NotDead || again.Deliveries() != 2 {
			t.Fatalf("%s gave back %q (%s, deliveries %d)", name, again.Bytes(), again.DeadReason(), again.Deliveries())
		}
		if err := again.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		again.Close()
	}
	for _, c := range []*machq.Client{stranger, strangerOwned} {
		name := "open.dlq"
		if c == strangerOwned {
			name = "taken.dlq"
		}
		expectMessage(t, ctx, c, name, "planted", "the other user's own "+name)
		if m, err := c.Retrieve(ctx, name); !errors.Is(err, machq.ErrEmpty) {
			if m != nil {
				t.Errorf("%s held %q", name, m.Bytes())
				m.Close()
			}
			t.Fatalf("%s after its own message: %v; want it empty", name, err)
		}
	}
}

// TestKickOfAnotherUsersQueueWithoutDeadLetters: PROTOCOL.md section 6.12
// says a KICK of a queue owned by another uid gives FORBIDDEN, whether
// or not its dead-letter queue exists yet.
func TestKickOfAnotherUsersQueueWithoutDeadLetters(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as other users")
	}
	_, _, owner, stranger := ownerAndStranger(t)
	ctx := testCtx(t)
	mustSend(t, owner, "mine", []byte("x"))
	n, err := stranger.Kick(ctx, "mine", 0)
	if n != 0 {
		t.Fatalf("another user's KICK moved %d messages", n)
	}
	expectForbidden(t, "another user's KICK of an owned queue without dead letters", err)
}
