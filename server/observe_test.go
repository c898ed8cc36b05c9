package server_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/durable"
	"github.com/machq/machq/internal/quota"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/server"
)

// recorder is a server.Observer that remembers what it is told.
type recorder struct {
	mu        sync.Mutex
	handled   map[string]int
	failed    map[string]int
	refused   map[string]int
	plain     int
	ack       int
	redeliver int
	dead      map[string]int
	syncs     int
	synced    int
}

func newRecorder() *recorder {
	return &recorder{handled: map[string]int{}, failed: map[string]int{}, refused: map[string]int{}, dead: map[string]int{}}
}

func (r *recorder) Handled(op uint8, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if took < 0 {
		panic("negative duration")
	}
	r.handled[wire.Op(op).String()]++
}

func (r *recorder) Failed(code, limit string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed[code]++
	if limit != "" {
		r.refused[limit]++
	}
}

func (r *recorder) Delivered(ack, redelivery bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ack {
		r.ack++
	} else {
		r.plain++
	}
	if redelivery {
		r.redeliver++
	}
}

func (r *recorder) DeadLettered(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dead[reason]++
}

func (r *recorder) Synced(took time.Duration, records int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncs++
	r.synced += records
}

func (r *recorder) snapshot() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("handled %v failed %v refused %v plain %d ack %d redeliver %d dead %v syncs %d/%d", r.handled, r.failed, r.refused, r.plain, r.ack, r.redeliver, r.dead, r.syncs, r.synced)
}

// TestObserverIsToldEverything drives a server through requests, errors,
// refusals by limit, deliveries in both modes, a redelivery and dead
// letters of both reasons, and checks the observer heard each.
func TestObserverIsToldEverything(t *testing.T) {
	rec := newRecorder()
	srv, path := startServer(t, server.Config{
		Observer: rec,
		Limits:   server.Limits{MaxQueueMessages: 2, MaxConnections: 2},
		Ack:      server.AckConfig{MaxDeliveries: 2, NakBackoff: time.Millisecond, NakBackoffMax: time.Millisecond},
	})
	c := dial(t, path)
	ctx := testCtx(t)
	mustSend(t, c, "jobs", []byte("one"))
	mustSend(t, c, "jobs", []byte("two"))
	if _, err := c.Send(ctx, "jobs", []byte("three")); !errors.Is(err, machq.ErrLimit) {
		t.Fatalf("third store into a queue of 2: %v, want a LIMIT", err)
	}
	if _, err := c.Retrieve(ctx, "jobs"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Retrieve(ctx, "empty"); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("retrieve of an empty queue: %v", err)
	}
	// "two" in ack mode: NAKed once (redelivered), then NAKed past
	// max-deliveries (a dead letter); a second message TERMed.
	d := mustReserve(t, c, "jobs", nil)
	if err := d.Nak(ctx, 0, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the NAKed message back", func() bool { q, _ := queueStats(srv, "jobs"); return q.Delayed == 0 && q.Messages == 1 })
	d = mustReserve(t, c, "jobs", nil)
	if d.Deliveries() != 2 {
		t.Fatalf("second delivery counts %d", d.Deliveries())
	}
	if err := d.Nak(ctx, 0, ""); err != nil || d.Outcome() != machq.DeadLettered {
		t.Fatalf("NAK past max deliveries: %v, %s", err, d.Outcome())
	}
	mustSend(t, c, "jobs", []byte("bad"))
	d = mustReserve(t, c, "jobs", nil)
	if err := d.Term(ctx, "no"); err != nil {
		t.Fatal(err)
	}
	// A connection past --max-connections is refused with LIMIT.
	dial(t, path)
	if _, err := machq.Dial(ctx, path); err == nil {
		t.Fatal("a third connection was admitted past max-connections 2")
	}
	waitFor(t, "every event observed: "+rec.snapshot(), func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.handled["STORE"] == 4 && rec.handled["RETRIEVE"] == 5 && rec.handled["NAK"] == 2 && rec.handled["TERM"] == 1 &&
			rec.handled["HELLO"] == 2 && rec.failed["EMPTY"] == 1 && rec.failed["LIMIT"] == 2 &&
			rec.refused["max-queue-messages"] == 1 && rec.refused["max-connections"] == 1 &&
			rec.plain == 1 && rec.ack == 3 && rec.redeliver == 1 &&
			rec.dead["max-deliveries"] == 1 && rec.dead["term"] == 1
	})
}

// TestObserverSeesSyncs checks a durable server reports its log's syncs
// and the records they cover.
func TestObserverSeesSyncs(t *testing.T) {
	rec := newRecorder()
	_, path := startServer(t, server.Config{Observer: rec, Durable: &server.DurableConfig{Dir: filepath.Join(t.TempDir(), "data")}})
	c := dial(t, path)
	for i := range 5 {
		mustSend(t, c, "durable", []byte{byte(i)})
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.syncs == 0 || rec.synced < 5 {
		t.Fatalf("%d syncs of %d records after 5 durable stores, each answered once synced", rec.syncs, rec.synced)
	}
}

// TestLimitAnswersNameTheirLimit checks that every LIMIT answer tells
// the observer its limit: no LIMIT is sent as a bare message, and each
// refusal of the ledger names the machqd flag its message names.
func TestLimitAnswersNameTheirLimit(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(src), "\n") {
			if strings.Contains(line, "sendError(") && strings.Contains(line, "CodeLimit") {
				t.Errorf("%s:%d answers LIMIT with a bare message; use fail with a limitError or limitf: %s", f, i+1, strings.TrimSpace(line))
			}
		}
	}
	flag := regexp.MustCompile(`\(machqd --([a-z-]+)\)`)
	for kind := quota.TotalMessages; kind <= quota.Descriptors; kind++ {
		err := server.RefusalError(&quota.Exceeded{Kind: kind, UID: 1000, Have: 2, Max: 2}, 10)
		m := flag.FindStringSubmatch(err.Error())
		if m == nil || server.LimitOf(err) != m[1] {
			t.Errorf("refusal %q: limit %q, want the flag it names", err, server.LimitOf(err))
		}
	}
	if got := server.LimitOf(fmt.Errorf("store: %w", durable.ErrNoSpace)); got != "disk-space" {
		t.Errorf("a full data directory's limit is %q, want disk-space", got)
	}
	if got := server.LimitOf(errors.New("not a limit")); got != "" {
		t.Errorf("an error that is no refusal has limit %q", got)
	}
}

// TestResponsive checks what machqd's watchdog asks: a serving server
// responds, one whose lock is stuck does not, within the time given.
func TestResponsive(t *testing.T) {
	srv, path := startServer(t, server.Config{})
	dial(t, path)
	if !srv.Responsive(testCtx(t)) {
		t.Fatal("a serving server is not responsive")
	}
	release := srv.Hang()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	stuck := srv.Responsive(ctx)
	release()
	if stuck {
		t.Fatal("a server whose lock is held is responsive")
	}
	if !srv.Responsive(testCtx(t)) {
		t.Fatal("the server is not responsive again once its lock is free")
	}
}
