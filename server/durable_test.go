package server_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/machq/machq"
	"github.com/machq/machq/server"
)

// TestDurableRefusals: a nearly full data directory refuses stores with
// LIMIT naming it, losing nothing; consumer groups of durable queues are
// refused; queues the pattern does not select stay in memory.
func TestDurableRefusals(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	_, path := startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir, Queues: "d-*", MinFree: 1 << 62}})
	c := dial(t, path)
	ctx := context.Background()
	_, err := c.Send(ctx, "d-jobs", []byte("x"))
	if !errors.Is(err, machq.ErrLimit) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("a store to a full data directory: %v, want LIMIT naming %s", err, dir)
	}
	if _, err := c.Send(ctx, "memory", []byte("x")); err != nil {
		t.Fatalf("a store to a queue the pattern does not select: %v", err)
	}
	_, _, err = c.CreateGroup(ctx, "d-fanout", "g", false)
	if err == nil || !strings.Contains(err.Error(), "durable") {
		t.Fatalf("a consumer group of a durable queue: %v, want a refusal saying why", err)
	}
	if _, _, err := c.CreateGroup(ctx, "memory", "g", false); err != nil {
		t.Fatalf("a consumer group of a memory queue: %v", err)
	}
}

// TestDeadLettersOfDurableQueuesAreDurable: NAME.dlq is durable exactly
// when NAME is, whatever the pattern says of the name NAME.dlq.
func TestDeadLettersOfDurableQueuesAreDurable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	_, path := startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir, Queues: "d-*"}})
	c := dial(t, path)
	ctx := context.Background()
	for _, q := range []string{"d-jobs", "memory"} {
		if _, err := c.Send(ctx, q, []byte("x")); err != nil {
			t.Fatal(err)
		}
		dv, err := c.Reserve(ctx, q, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := dv.Term(ctx, "bad"); err != nil {
			t.Fatal(err)
		}
	}
	st, err := c.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	durable := map[string]bool{}
	for _, q := range st.Queues {
		durable[q.Name] = q.Durable
	}
	// The emptied queues themselves are gone from STATS; their dead
	// letters are there.
	d, ok := durable["d-jobs.dlq"]
	m, ok2 := durable["memory.dlq"]
	if !ok || !ok2 || !d || m {
		t.Fatalf("durable queues: %v; want d-jobs.dlq durable, memory.dlq not", durable)
	}
}

// TestDurableDataDirectoryIsLocked: a second server on the same data
// directory is refused at New, saying so.
func TestDurableDataDirectoryIsLocked(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir}})
	_, err := server.New(server.Config{Durable: &server.DurableConfig{Dir: dir}})
	if err == nil || !strings.Contains(err.Error(), "another server") {
		t.Fatalf("a second server on the data directory: %v", err)
	}
}
