package server_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/server"
)

// TestDurableRefusals: a nearly full data directory refuses stores with
// LIMIT naming it, losing nothing; queues the pattern does not select
// stay in memory.
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

// TestDurableSyncPolicyInStats: STATS names the sync policy; under
// lossy-interval it gives the interval and what is answered and not yet
// on disk (a store answered with a minute to its sync), and a graceful
// shutdown syncs it.
func TestDurableSyncPolicyInStats(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	srv, path := startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir, LossySyncInterval: time.Minute}})
	c := dial(t, path)
	if _, err := c.Send(ctx, "jobs", []byte("answered before its sync")); err != nil {
		t.Fatal(err)
	}
	st, err := c.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := st.Durable
	if d == nil || d.Sync != "lossy-interval" || d.SyncIntervalMillis != 60000 || d.Unsynced == nil || d.Unsynced.Records == 0 || d.Unsynced.Bytes == 0 {
		t.Fatalf("STATS durable under lossy-interval=1m after a store: %+v (unsynced %+v)", d, d.Unsynced)
	}
	raw, err := c.StatJSON(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"sync":"lossy-interval","sync_interval_ms":60000,"unsynced":{"records":`) {
		t.Fatalf("STATS: %s", raw)
	}
	c.Close()
	shutdown, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		t.Fatal(err)
	}

	// The default policy: every-store, no interval, nothing unsynced.
	_, path = startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir}})
	c = dial(t, path)
	st, err = c.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := st.Durable; d == nil || d.Sync != "every-store" || d.SyncIntervalMillis != 0 || d.Unsynced != nil {
		t.Fatalf("STATS durable by default: %+v", d)
	}
	raw, err = c.StatJSON(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "sync_interval_ms") || strings.Contains(string(raw), "unsynced") {
		t.Fatalf("STATS under every-store gives the fields of lossy-interval: %s", raw)
	}
	// The store answered under lossy-interval was synced at shutdown.
	m, err := c.Retrieve(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Bytes()) != "answered before its sync" {
		t.Fatalf("after a restart: %q", m.Bytes())
	}
}

// TestParseSync: machqd's --sync values, and the refusals saying what is
// accepted; server.New refuses an interval out of bounds.
func TestParseSync(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"every-store", 0, ""},
		{"lossy-interval=100ms", 100 * time.Millisecond, ""},
		{"lossy-interval=1m", time.Minute, ""},
		{"lossy-interval=1ms", time.Millisecond, ""},
		{"lossy-interval", 0, "lossy-interval=100ms"},
		{"lossy-interval=", 0, "lossy-interval=100ms"},
		{"lossy-interval=soon", 0, "not a duration"},
		{"lossy-interval=0s", 0, "out of bounds"},
		{"lossy-interval=-1s", 0, "out of bounds"},
		{"lossy-interval=500us", 0, "out of bounds"},
		{"lossy-interval=2m", 0, "out of bounds"},
		{"lossy-intervals=1s", 0, "unknown sync policy"},
		{"always", 0, "use every-store"},
		{"", 0, "use every-store"},
	} {
		got, err := server.ParseSync(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("ParseSync(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseSync(%q) = %v, %v; want an error saying %q", tc.in, got, err, tc.err)
		}
	}
	dir := filepath.Join(t.TempDir(), "data")
	if _, err := server.New(server.Config{Durable: &server.DurableConfig{Dir: dir, LossySyncInterval: time.Hour}}); err == nil || !strings.Contains(err.Error(), "out of bounds") {
		t.Fatalf("server.New with a lossy sync interval of an hour: %v", err)
	}
}

// TestDurableQueueKeepsItsOwnerAndSettingsWhenEmpty: a durable queue's
// owner, and its own settings, outlive its last message across a
// restart (else any user could take an owned queue's name after one);
// an owned queue created without a message is recorded too, and a
// disowned one is forgotten.
func TestDurableQueueKeepsItsOwnerAndSettingsWhenEmpty(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	srv, path := startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir}})
	owner := dial(t, path, machq.WithOwnedQueues())
	if _, err := owner.Send(ctx, "owned-emptied", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Retrieve(ctx, "owned-emptied"); err != nil {
		t.Fatal(err)
	}
	// Owned by a wait that found nothing: never a message.
	wait, stop := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, err := owner.RetrieveWait(wait, "owned-never-used"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a wait on an empty owned queue: %v", err)
	}
	stop()
	if _, err := owner.Send(ctx, "disowned", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Retrieve(ctx, "disowned"); err != nil {
		t.Fatal(err)
	}
	if err := owner.Disown(ctx, "disowned"); err != nil {
		t.Fatal(err)
	}
	plain := dial(t, path)
	if err := plain.Configure(ctx, "configured", machq.QueueConfig{MaxDeliveries: 1}); err != nil {
		t.Fatal(err)
	}
	owner.Close()
	plain.Close()
	shutdown, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		t.Fatal(err)
	}

	_, path = startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir}})
	c := dial(t, path)
	st, err := c.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]machq.QueueStats{}
	for _, q := range st.Queues {
		found[q.Name] = q
	}
	for _, name := range []string{"owned-emptied", "owned-never-used"} {
		if q, ok := found[name]; !ok || q.Owner == nil || q.Messages != 0 {
			t.Errorf("after a restart, queue %s: %+v (listed %v); want it empty and still owned", name, q, ok)
		}
	}
	if q, ok := found["disowned"]; ok {
		t.Errorf("a queue disowned before the restart came back: %+v", q)
	}
	// The configured queue's max deliveries, 1, still holds: one NAK and
	// the message is a dead letter.
	if _, err := c.Send(ctx, "configured", []byte("m")); err != nil {
		t.Fatal(err)
	}
	d, err := c.Reserve(ctx, "configured", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Nak(ctx, 0, "no"); err != nil {
		t.Fatal(err)
	}
	d.Close()
	waitFor(t, "the NAKed message to be a dead letter", func() bool {
		m, err := c.Peek(ctx, "configured.dlq", 0)
		if err != nil {
			return false
		}
		m.Close()
		return true
	})
}

// TestDurableSequenceNumbersGoOn: after a restart, a durable queue that
// was emptied numbers its next message above every number it gave
// before, not from 1 again.
func TestDurableSequenceNumbersGoOn(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	srv, path := startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir}})
	c := dial(t, path)
	var last uint64
	for range 3 {
		seq, err := c.Send(ctx, "numbered", []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		last = seq
		if _, err := c.Retrieve(ctx, "numbered"); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	shutdown, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		t.Fatal(err)
	}
	_, path = startServer(t, server.Config{Durable: &server.DurableConfig{Dir: dir}})
	c = dial(t, path)
	seq, err := c.Send(ctx, "numbered", []byte("after"))
	if err != nil {
		t.Fatal(err)
	}
	if seq <= last {
		t.Fatalf("after a restart the emptied queue numbered a message %d, not above %d", seq, last)
	}
}
