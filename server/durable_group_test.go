package server_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/internal/wiretest"
	"github.com/machq/machq/server"
)

// restartDurable shuts srv down and starts a server on the same data
// directory, returning it and its socket.
func restartDurable(t *testing.T, srv *server.Server, dir string) (*server.Server, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	return startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir}})
}

// groupsOf returns the consumer groups of queue in STATS, by name.
func groupsOf(t *testing.T, c *machq.Client, queue string) map[string]machq.GroupStats {
	t.Helper()
	st, err := c.Stat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]machq.GroupStats{}
	for _, q := range st.Queues {
		if q.Name == queue {
			for _, g := range q.Groups {
				out[g.Name] = g
			}
		}
	}
	return out
}

// reserveFrom takes the next message of group in ack mode, failing the
// test if there is none.
func reserveFrom(t *testing.T, c *machq.Client, queue, group string) *machq.Delivery {
	t.Helper()
	d, err := c.Reserve(context.Background(), queue, &machq.AckOptions{Group: group})
	if err != nil {
		t.Fatalf("reserve from group %s: %v", group, err)
	}
	return d
}

// TestDurableConsumerGroupsSurviveARestart: the consumer groups of a
// durable queue come back after a restart with what each had not
// acknowledged (a message pending at the stop comes back redelivered),
// adoption from the oldest included; one page fanned out to several
// groups is still one page; and what every group acknowledged never
// comes back, its payload file gone.
func TestDurableConsumerGroupsSurviveARestart(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	srv, path := startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir}})
	c := dial(t, path)
	mustSend(t, c, "fan", []byte("before the groups"))
	for _, g := range []struct {
		name   string
		oldest bool
	}{{"a", false}, {"b", true}, {"c", false}} {
		if _, _, err := c.CreateGroup(ctx, "fan", g.name, g.oldest); err != nil {
			t.Fatal(err)
		}
	}
	page := bytes.Repeat([]byte("p"), 256<<10)
	mustSend(t, c, "fan", []byte("m1"))
	mustSend(t, c, "fan", []byte("m2"))
	mustSend(t, c, "fan", page)
	// a acknowledges m1 and holds m2; b acknowledges what it adopted.
	d := reserveFrom(t, c, "fan", "a")
	if string(d.Bytes()) != "m1" {
		t.Fatalf("group a's first message: %q", d.Bytes())
	}
	must(t, d.Ack(ctx))
	d.Close()
	held := reserveFrom(t, c, "fan", "a")
	if string(held.Bytes()) != "m2" {
		t.Fatalf("group a's second message: %q", held.Bytes())
	}
	d = reserveFrom(t, c, "fan", "b")
	if string(d.Bytes()) != "before the groups" {
		t.Fatalf("group b's first message: %q, want the one it adopted", d.Bytes())
	}
	must(t, d.Ack(ctx))
	d.Close()
	c.Close()

	srv, path = restartDurable(t, srv, dir)
	c = dial(t, path)
	groups := groupsOf(t, c, "fan")
	want := map[string]int{"a": 2, "b": 3, "c": 3}
	for name, n := range want {
		if g, ok := groups[name]; !ok || g.Messages != n {
			t.Errorf("after a restart group %s: %+v (there: %v), want %d messages", name, g, ok, n)
		}
	}
	d = reserveFrom(t, c, "fan", "a")
	if string(d.Bytes()) != "m2" || !d.Redelivered() {
		t.Fatalf("group a after a restart: %q, redelivered %v; want m2, the message pending at the stop, redelivered", d.Bytes(), d.Redelivered())
	}
	must(t, d.Ack(ctx))
	d.Close()

	// The page is one memfd for the three groups.
	raw := wiretest.DialHello(t, path)
	inode := func(id uint64, group string) uint64 {
		raw.Write(wire.AppendRetrieve(nil, id, wire.Retrieve{Queue: []byte("fan"), Ack: true, Group: []byte(group)}))
		for {
			f := raw.Read()
			if f.Op != wire.OpMessage {
				t.Fatalf("group %s: got %s", group, f.Op)
			}
			m, _, err := wire.ParseMessage(f.Header, f.Body)
			if err != nil {
				t.Fatal(err)
			}
			if len(f.FDs) == 0 {
				// an inline message ahead of the page: acknowledge it
				raw.Write(wire.AppendSettle(nil, wire.OpAck, id+100, wire.Settle{Token: m.Token}))
				if f := raw.Read(); f.Op != wire.OpSettled {
					t.Fatalf("ACK answered %s", f.Op)
				}
				raw.Write(wire.AppendRetrieve(nil, id, wire.Retrieve{Queue: []byte("fan"), Ack: true, Group: []byte(group)}))
				continue
			}
			defer unix.Close(f.FDs[0])
			var st unix.Stat_t
			if err := unix.Fstat(f.FDs[0], &st); err != nil {
				t.Fatal(err)
			}
			raw.Write(wire.AppendSettle(nil, wire.OpAck, id+200, wire.Settle{Token: m.Token}))
			if f := raw.Read(); f.Op != wire.OpSettled {
				t.Fatalf("ACK answered %s", f.Op)
			}
			return st.Ino
		}
	}
	a, b := inode(1, "a"), inode(2, "b")
	if a != b {
		t.Fatalf("after a restart groups a and b got the page as inodes %d and %d: two copies", a, b)
	}
	payloads := filepath.Join(dir, "payloads")
	if n := countFiles(t, payloads); n != 1 {
		t.Fatalf("%d payload files while group c holds the page, want 1", n)
	}

	// c deletes; the next restart has groups a and b, empty, and no
	// message or payload left.
	if _, err := c.DeleteGroup(ctx, "fan", "c"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	raw.UC.Close()
	srv, path = restartDurable(t, srv, dir)
	c = dial(t, path)
	groups = groupsOf(t, c, "fan")
	if _, ok := groups["c"]; ok || len(groups) != 2 || groups["a"].Messages != 0 || groups["b"].Messages != 0 {
		t.Fatalf("after deleting c and a restart, fan's groups: %+v; want a and b, empty", groups)
	}
	waitFor(t, "the page's payload file to go", func() bool { return countFiles(t, payloads) == 0 })
	st, err := c.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 0 {
		t.Fatalf("STATS counts %d messages with every group acknowledged or gone", st.Messages)
	}
	// New stores still fan out to the recovered groups.
	mustSend(t, c, "fan", []byte("after"))
	for _, g := range []string{"a", "b"} {
		d := reserveFrom(t, c, "fan", g)
		if string(d.Bytes()) != "after" {
			t.Fatalf("group %s after two restarts: %q", g, d.Bytes())
		}
		must(t, d.Ack(ctx))
		d.Close()
	}
	if _, err := c.Reserve(ctx, "fan", &machq.AckOptions{Group: "a"}); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("group a after acknowledging everything: %v, want ErrEmpty", err)
	}
	_ = srv
}

// countFiles returns the number of files in dir.
func countFiles(t *testing.T, dir string) int {
	t.Helper()
	names, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(names)
}

// must fails the test on err.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestDurableGroupDeadLettersPurgeAndDelete: a group's dead letter, kicked
// back to its group, a purge and a deletion of a queue with groups all
// hold across restarts, and a page dead-lettered from a group keeps the
// payload file the other group's view names (no copy).
func TestDurableGroupDeadLettersPurgeAndDelete(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	payloads := filepath.Join(dir, "payloads")
	srv, path := startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir}})
	c := dial(t, path)
	for _, g := range []string{"a", "b"} {
		if _, _, err := c.CreateGroup(ctx, "g2", g, false); err != nil {
			t.Fatal(err)
		}
	}
	page := bytes.Repeat([]byte("q"), 200<<10)
	mustSend(t, c, "g2", page)
	mustSend(t, c, "g2", []byte("x"))
	d := reserveFrom(t, c, "g2", "a")
	if !bytes.Equal(d.Bytes(), page) {
		t.Fatal("group a's first message is not the page")
	}
	must(t, d.Term(ctx, "poison"))
	d.Close()
	if n := countFiles(t, payloads); n != 1 {
		t.Fatalf("%d payload files after a group's view of a page was dead-lettered, want the 1 both name", n)
	}
	c.Close()

	srv, path = restartDurable(t, srv, dir)
	c = dial(t, path)
	m, err := c.Peek(ctx, "g2.dlq", 0)
	if err != nil {
		t.Fatalf("the dead letter after a restart: %v", err)
	}
	if !bytes.Equal(m.Bytes(), page) || m.DeadReason() != machq.DeadTerminated || m.Note() != "poison" {
		t.Fatalf("the dead letter after a restart: %d bytes, reason %v, note %q; want the page, terminated, \"poison\"", len(m.Bytes()), m.DeadReason(), m.Note())
	}
	m.Close()
	groups := groupsOf(t, c, "g2")
	if groups["a"].Messages != 1 || groups["b"].Messages != 2 {
		t.Fatalf("after a restart: %+v; want a holding x, b the page and x", groups)
	}
	if n, err := c.Kick(ctx, "g2", 0); err != nil || n != 1 {
		t.Fatalf("kick: %d, %v", n, err)
	}
	c.Close()

	srv, path = restartDurable(t, srv, dir)
	c = dial(t, path)
	groups = groupsOf(t, c, "g2")
	if groups["a"].Messages != 2 || groups["b"].Messages != 2 {
		t.Fatalf("after the kick and a restart: %+v; want the page back in a, and b unchanged", groups)
	}
	d = reserveFrom(t, c, "g2", "a")
	if !bytes.Equal(d.Bytes(), page) {
		t.Fatal("the kicked page is not first in group a again")
	}
	d.Close() // pending; a purge frees it once it comes back
	if _, err := c.Purge(ctx, "g2"); err != nil {
		t.Fatal(err)
	}
	c.Close()

	srv, path = restartDurable(t, srv, dir)
	c = dial(t, path)
	groups = groupsOf(t, c, "g2")
	if len(groups) != 2 || groups["a"].Messages != 0 || groups["b"].Messages != 0 {
		t.Fatalf("after a purge and a restart: %+v; want both groups, empty", groups)
	}
	waitFor(t, "the purged page's payload file to go", func() bool { return countFiles(t, payloads) == 0 })
	mustSend(t, c, "g2", []byte("y"))
	if _, err := c.Delete(ctx, "g2"); err != nil {
		t.Fatal(err)
	}
	c.Close()

	_, path = restartDurable(t, srv, dir)
	c = dial(t, path)
	if groups := groupsOf(t, c, "g2"); len(groups) != 0 {
		t.Fatalf("a deleted queue's groups came back: %+v", groups)
	}
	if _, err := c.Reserve(ctx, "g2", &machq.AckOptions{Group: "a"}); !errors.Is(err, machq.ErrNoGroup) {
		t.Fatalf("reserve through a deleted queue's group: %v, want ErrNoGroup", err)
	}
}

// TestDurableDeadLetterPageKeepsItsFile: a page of a durable queue
// dead-lettered and kicked back names its one payload file throughout,
// across restarts, and the file goes with the message.
func TestDurableDeadLetterPageKeepsItsFile(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	payloads := filepath.Join(dir, "payloads")
	srv, path := startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir}})
	c := dial(t, path)
	page := bytes.Repeat([]byte("d"), 300<<10)
	mustSend(t, c, "plain", page)
	d, err := c.Reserve(ctx, "plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	must(t, d.Term(ctx, "later"))
	d.Close()
	if n := countFiles(t, payloads); n != 1 {
		t.Fatalf("%d payload files after the page was dead-lettered, want its one", n)
	}
	c.Close()
	srv, path = restartDurable(t, srv, dir)
	c = dial(t, path)
	if n, err := c.Kick(ctx, "plain", 0); err != nil || n != 1 {
		t.Fatalf("kick after a restart: %d, %v", n, err)
	}
	c.Close()
	_, path = restartDurable(t, srv, dir)
	c = dial(t, path)
	if n := countFiles(t, payloads); n != 1 {
		t.Fatalf("%d payload files after the kick and a restart, want the page's one", n)
	}
	d, err = c.Reserve(ctx, "plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.Bytes(), page) {
		t.Fatal("the kicked page came back with other bytes")
	}
	must(t, d.Ack(ctx))
	d.Close()
	waitFor(t, "the acknowledged page's payload file to go", func() bool { return countFiles(t, payloads) == 0 })
}
