package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/machq/machq/internal/metrics"
	"github.com/machq/machq/internal/metrics/metricstest"
	"github.com/machq/machq/internal/stats"
	"github.com/machq/machq/internal/wire"
)

func scrape(t *testing.T, m *metrics.Metrics) metricstest.Families {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	fams, err := metricstest.Scrape(context.Background(), strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

func want(t *testing.T, f metricstest.Families, v float64, name string, labels ...string) {
	t.Helper()
	got, ok := f.Value(name, labels...)
	if !ok {
		t.Errorf("%s%v: no such series", name, labels)
		return
	}
	if got != v {
		t.Errorf("%s%v = %v, want %v", name, labels, got, v)
	}
}

// TestEvents checks that each event the server reports is counted under
// its metric and labels.
func TestEvents(t *testing.T) {
	m := metrics.New(metrics.Options{Durable: true, Version: "v1.2.3"})
	for range 3 {
		m.Handled(uint8(wire.OpStore), 20*time.Microsecond)
	}
	m.Handled(uint8(wire.OpRetrieve), time.Millisecond)
	m.Handled(0x7E, time.Microsecond) // not an operation
	m.Failed("EMPTY", "")
	m.Failed("LIMIT", "max-queue-messages")
	m.Failed("LIMIT", "max-queue-messages")
	m.Delivered(false, false)
	m.Delivered(true, false)
	m.Delivered(true, true)
	m.DeadLettered("term")
	m.Synced(2*time.Millisecond, 17)
	f := scrape(t, m)
	want(t, f, 3, "machq_request_duration_seconds", "op", "STORE")
	want(t, f, 1, "machq_request_duration_seconds", "op", "RETRIEVE")
	want(t, f, 0, "machq_request_duration_seconds", "op", "ACK")
	want(t, f, 1, "machq_request_duration_seconds", "op", "unknown")
	want(t, f, 1, "machq_errors_total", "code", "EMPTY")
	want(t, f, 2, "machq_errors_total", "code", "LIMIT")
	want(t, f, 2, "machq_limit_refusals_total", "limit", "max-queue-messages")
	want(t, f, 1, "machq_deliveries_total", "mode", "plain")
	want(t, f, 2, "machq_deliveries_total", "mode", "ack")
	want(t, f, 1, "machq_redeliveries_total")
	want(t, f, 1, "machq_dead_letters_total", "reason", "term")
	want(t, f, 0, "machq_dead_letters_total", "reason", "max-deliveries")
	want(t, f, 1, "machq_journal_sync_duration_seconds")
	want(t, f, 1, "machq_journal_sync_records")
	want(t, f, 1, "machq_build_info", "version", "v1.2.3")
	if h := f["machq_journal_sync_records"].Metric[0].Histogram; h.GetSampleSum() != 17 {
		t.Errorf("sync records sum %v, want 17", h.GetSampleSum())
	}
	if f.Series("process_open_fds") != 1 || f.Series("go_goroutines") != 1 {
		t.Error("the process and Go collectors are not registered")
	}
}

// TestNoJournalWithoutDurable checks the journal's metrics are only
// served by a server with durable queues.
func TestNoJournalWithoutDurable(t *testing.T) {
	m := metrics.New(metrics.Options{})
	m.Synced(time.Millisecond, 1) // ignored
	f := scrape(t, m)
	if _, ok := f["machq_journal_sync_duration_seconds"]; ok {
		t.Error("journal sync metrics served without durable queues")
	}
}

// TestHoldings checks what is read from the statistics at a scrape, and
// that series per queue, group and user are bounded.
func TestHoldings(t *testing.T) {
	m := metrics.New(metrics.Options{MaxQueues: 2})
	st := stats.Stats{
		Clients: 3, Messages: 10, Bytes: 1000, Pages: 4,
		Unsent:  stats.Held{Messages: 1, Bytes: 100, Pages: 1},
		Pending: stats.Held{Messages: 2, Bytes: 200, Pages: 1},
		Waiting: 5, Descriptors: 9, DescriptorLimit: 100,
		Queues: []stats.Queue{
			{Name: "a", Messages: 1, Bytes: 10},
			{Name: "b", Messages: 5, Bytes: 50, Waiting: 1, Counts: stats.Counts{Delivered: 7, Acked: 3}},
			{Name: "c", Messages: 2, Pending: 2, Bytes: 20, Groups: []stats.Group{{Name: "g1", Messages: 1}, {Name: "g2", Messages: 3}, {Name: "g3"}}},
			{Name: "d", Messages: 0, Waiting: 2},
		},
		Users: []stats.User{
			{UID: 1000, Connections: 1, Messages: 4},
			{UID: 0, Connections: 2, Messages: 1},
			{UID: 1001, Connections: 1, Messages: 0},
		},
		Durable: &stats.Durable{Segments: 2, Records: 40, Failed: "disk on fire", Unsynced: &stats.Unsynced{Records: 3}},
		Limits:  &stats.Limits{MaxStoredBytes: 1 << 30, MaxQueueMessages: -1, MaxPending: 1024},
	}
	f := scrape(t, m)
	if f.Series("machq_connections") != 0 {
		t.Error("holdings served before Watch")
	}
	m.Watch(func() stats.Stats { return st })
	f = scrape(t, m)
	want(t, f, 3, "machq_connections")
	want(t, f, 7, "machq_messages", "state", "in_line")
	want(t, f, 1, "machq_messages", "state", "unsent")
	want(t, f, 2, "machq_messages", "state", "pending")
	want(t, f, 700, "machq_bytes", "state", "in_line")
	want(t, f, 2, "machq_pages", "state", "in_line")
	want(t, f, 5, "machq_waiting")
	want(t, f, 9, "machq_descriptors")
	want(t, f, 100, "machq_descriptor_limit")
	want(t, f, 4, "machq_queues")
	// The deepest two, b (5) and c (4), have series; a and d are summed.
	want(t, f, 5, "machq_queue_messages", "queue", "b")
	want(t, f, 2, "machq_queue_pending", "queue", "c")
	want(t, f, 3, "machq_queue_groups", "queue", "c")
	want(t, f, 7, "machq_queue_delivered_total", "queue", "b")
	want(t, f, 3, "machq_queue_acked_total", "queue", "b")
	want(t, f, 2, "machq_queues_unlabelled")
	want(t, f, 1, "machq_queue_messages", "queue", "")
	want(t, f, 2, "machq_queue_waiting", "queue", "")
	if _, ok := f.Value("machq_queue_messages", "queue", "a"); ok {
		t.Error("queue a has series of its own beyond the bound")
	}
	if n := f.Series("machq_queue_delivered_total"); n != 2 {
		t.Errorf("%d delivered series, want 2 (counters of summed queues are not served)", n)
	}
	// Groups: the deepest two of c's three.
	want(t, f, 3, "machq_group_messages", "queue", "c", "group", "g2")
	want(t, f, 1, "machq_group_messages", "queue", "c", "group", "g1")
	want(t, f, 1, "machq_groups_unlabelled")
	// Users: the two holding the most; the third summed.
	want(t, f, 4, "machq_user_messages", "uid", "1000")
	want(t, f, 2, "machq_user_connections", "uid", "0")
	want(t, f, 1, "machq_user_connections", "uid", "")
	want(t, f, 2, "machq_journal_segments")
	want(t, f, 40, "machq_journal_records_total")
	want(t, f, 1, "machq_journal_failed")
	want(t, f, 3, "machq_journal_unsynced_records")
	want(t, f, 1<<30, "machq_limit", "limit", "max-stored-bytes")
	want(t, f, 1024, "machq_limit", "limit", "max-pending")
	if _, ok := f.Value("machq_limit", "limit", "max-queue-messages"); ok {
		t.Error("a limit not set (-1) has a series")
	}
}

// TestManyQueuesBounded checks that ten thousand queues give no more
// series than the bound.
func TestManyQueuesBounded(t *testing.T) {
	m := metrics.New(metrics.Options{})
	var st stats.Stats
	for i := range 10_000 {
		st.Queues = append(st.Queues, stats.Queue{Name: fmt.Sprintf("q%05d", i), Messages: i % 7})
	}
	m.Watch(func() stats.Stats { return st })
	f := scrape(t, m)
	if n := f.Series("machq_queue_messages"); n != metrics.DefaultMaxQueues+1 {
		t.Errorf("%d series of machq_queue_messages, want %d and one summing the rest", n, metrics.DefaultMaxQueues+1)
	}
	want(t, f, float64(10_000-metrics.DefaultMaxQueues), "machq_queues_unlabelled")
}

func TestCheckAddr(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:9477", "[::1]:0", "localhost:80", "127.1.2.3:1", "/run/machq/metrics.sock", "./m.sock"} {
		if err := metrics.CheckAddr(ok); err != nil {
			t.Errorf("CheckAddr(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"0.0.0.0:9477", ":9477", "[::]:1", "10.0.0.1:80", "example.com:80", "9477", "m.sock"} {
		if err := metrics.CheckAddr(bad); !errors.Is(err, metrics.ErrAddress) {
			t.Errorf("CheckAddr(%q) = %v, want ErrAddress", bad, err)
		}
	}
}

// TestServeUnix serves on a Unix socket, replacing a stale one, and
// checks the socket is the server's user's alone and gone after.
func TestServeUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.sock")
	old, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close() // a stale socket file stays
	l, err := metrics.Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if _, err := metrics.Listen(path); err == nil {
		t.Fatal("a second Listen on a live socket succeeded")
	}
	m := metrics.New(metrics.Options{})
	m.Failed("EMPTY", "")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, l, slogDiscard()) }()
	f, err := metricstest.Scrape(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	want(t, f, 1, "machq_errors_total", "code", "EMPTY")
	if mode := fileMode(t, path); mode != 0o600 {
		t.Errorf("socket mode %o, want 600", mode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if exists(path) {
		t.Error("socket file left after Serve returned")
	}
}

// TestStatsReadAtMostOncePerInterval checks that scrapes in a loop make
// the server build its statistics once per interval, not once each.
func TestStatsReadAtMostOncePerInterval(t *testing.T) {
	for _, tc := range []struct {
		interval time.Duration
		want     int
	}{{time.Hour, 1}, {-1, 3}} {
		m := metrics.New(metrics.Options{StatsInterval: tc.interval})
		reads := 0
		m.Watch(func() stats.Stats { reads++; return stats.Stats{Clients: reads} })
		var f metricstest.Families
		for range 3 {
			f = scrape(t, m)
		}
		if reads != tc.want {
			t.Errorf("interval %v: 3 scrapes read the statistics %d times, want %d", tc.interval, reads, tc.want)
		}
		want(t, f, float64(tc.want), "machq_connections")
	}
}

// TestStalledScrapersAreClosed opens connections to the metrics server
// that send half a request and stall: a scrape still gets through, and
// the stalled connections are closed within the header timeout.
func TestStalledScrapersAreClosed(t *testing.T) {
	l, err := metrics.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(metrics.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, l, slogDiscard()) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	addr := l.Addr().String()
	var stalled []net.Conn
	for range 50 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n")); err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, c)
	}
	if _, err := metricstest.Scrape(context.Background(), addr); err != nil {
		t.Fatalf("a scrape beside 50 stalled connections: %v", err)
	}
	for _, c := range stalled {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		b := make([]byte, 512)
		for {
			_, err := c.Read(b)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatal("a stalled connection was not closed within 20s")
				}
				break // closed by the server (after a 408 if any)
			}
		}
	}
}
