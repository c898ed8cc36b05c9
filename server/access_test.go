package server_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
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
	dir, err := os.MkdirTemp("", "access-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Access: access})
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
