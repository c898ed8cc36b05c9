package durable

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/machq/machq/internal/journal"
)

var ctx = context.Background()

func mustOpen(t *testing.T, opts Options) (*Store, map[string]Queue, Report) {
	t.Helper()
	s, qs, rep, err := Open(opts)
	if err != nil {
		t.Fatalf("open: %v (report %v)", err, rep)
	}
	t.Cleanup(func() { s.Close() })
	m := map[string]Queue{}
	for _, q := range qs {
		m[q.Name] = q
	}
	return s, m, rep
}

func ids(q Queue) []uint64 {
	var out []uint64
	for _, m := range q.Messages {
		out = append(out, m.ID)
	}
	return out
}

func TestRecoverWhatWasDone(t *testing.T) {
	dir := t.TempDir()
	s, qs, _ := mustOpen(t, Options{Dir: dir})
	if len(qs) != 0 {
		t.Fatalf("a new data directory holds %d queues", len(qs))
	}
	dead := Attrs{UID: 1000, DigestAlg: 1, Digest: strings.Repeat("\x07", 32), Dead: 2, DiedAfter: 5, Note: "bad input", Group: "billing"}
	for id := uint64(1); id <= 6; id++ {
		a := Attrs{UID: uint32(id)}
		if id == 4 {
			a = dead
		}
		if err := s.Store(ctx, "jobs", id, 0, a, []byte(fmt.Sprint("job ", id))); err != nil {
			t.Fatal(err)
		}
		if err := s.Store(ctx, "gone", id, 0, Attrs{}, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	must(t, s.Take(ctx, "jobs", 3, 5))
	must(t, s.Deliver("jobs", 4))
	must(t, s.Deliver("jobs", 4))
	must(t, s.Purge(ctx, "jobs", 2))
	must(t, s.Drop(ctx, "gone"))
	must(t, s.Close())

	s, qs, rep := mustOpen(t, Options{Dir: dir})
	if _, ok := qs["gone"]; ok || len(qs) != 1 {
		t.Fatalf("queues after recovery: %v, want only jobs", qs)
	}
	jobs := qs["jobs"]
	if got := ids(jobs); fmt.Sprint(got) != "[2 4 6]" {
		t.Fatalf("jobs holds %v, want [2 4 6]", got)
	}
	if jobs.LastID != 6 {
		t.Errorf("LastID %d, want 6", jobs.LastID)
	}
	if m := jobs.Messages[1]; m.Deliveries != 2 || string(m.Payload) != "job 4" {
		t.Errorf("message 4: %d deliveries, %q; want 2, \"job 4\"", m.Deliveries, m.Payload)
	}
	if m := jobs.Messages[1]; fmt.Sprint(m.Attrs) != fmt.Sprint(dead) {
		t.Errorf("message 4's attributes: %+v, want %+v", m.Attrs, dead)
	}
	if m := jobs.Messages[2]; m.Attrs.UID != 6 {
		t.Errorf("message 6 is charged to uid %d, want 6", m.Attrs.UID)
	}
	if rep.Queues != 1 || rep.Messages != 3 || rep.PayloadBytes != 15 {
		t.Errorf("report %v: want 1 queue, 3 messages, 15 bytes", rep)
	}
	// Writing goes on after recovery.
	must(t, s.Store(ctx, "jobs", 7, 0, Attrs{}, []byte("job 7")))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestSecondServerIsRefused(t *testing.T) {
	dir := t.TempDir()
	mustOpen(t, Options{Dir: dir})
	_, _, _, err := Open(Options{Dir: dir})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("a second open of a data directory in use: %v, want ErrLocked", err)
	}
}

func TestUnknownRecordRefusesToStart(t *testing.T) {
	fs := journal.NewMemFS()
	j, _, err := journal.Open(journal.Options{FS: fs}, func(journal.Record) error { return nil })
	must(t, err)
	if _, err := j.Write(ctx, 77, []byte("from a later version")); err != nil {
		t.Fatal(err)
	}
	j.Close()
	if _, _, _, err := Open(Options{FS: fs}); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("a log with a record of an unknown type: %v, want ErrBadRecord", err)
	}
}

// TestCrashPoints loses the power at random moments while producers store
// and consumers take, on several queues, then recovers: every store that
// was acknowledged and not taken is there with its bytes, nothing whose
// take was acknowledged comes back, and nothing never stored appears.
func TestCrashPoints(t *testing.T) {
	iterations := 300
	if testing.Short() {
		iterations = 50
	}
	rng := rand.New(rand.NewPCG(3, 4))
	// Two queues, and a consumer group of one of them.
	type target struct{ queue, group string }
	queues := []target{{"a", ""}, {"b", ""}, {"a", "g"}}
	name := func(q target) string { return q.queue + ":" + q.group }
	for it := range iterations {
		fs := journal.NewMemFS()
		var mu sync.Mutex
		stored := map[string][]byte{} // acknowledged stores, by queue/id
		taken := map[string]bool{}    // acknowledged takes
		tried := map[string][]byte{}  // every store attempted
		taking := map[string]bool{}   // every take attempted
		nextID := map[string]uint64{}
		crashes := 1 + rng.IntN(3)
		for c := range crashes {
			s, qs, _ := mustOpen(t, Options{FS: fs, SegmentSize: int64(512 + rng.IntN(8192))})
			seen := map[string]bool{}
			var recovered []Queue
			for _, q := range qs {
				q.Name += ":"
				recovered = append(recovered, q)
				for _, g := range q.Groups {
					g.Name = q.Name + g.Name
					recovered = append(recovered, g)
				}
			}
			for _, q := range recovered {
				for _, m := range q.Messages {
					key := fmt.Sprintf("%s/%d", q.Name, m.ID)
					seen[key] = true
					want, ok := tried[key]
					if !ok {
						t.Fatalf("iteration %d crash %d: %s recovered, never stored", it, c, key)
					}
					if !bytes.Equal(want, m.Payload) {
						t.Fatalf("iteration %d crash %d: %s holds %q, %q was stored", it, c, key, m.Payload, want)
					}
					if taken[key] {
						t.Fatalf("iteration %d crash %d: %s came back after its take was acknowledged", it, c, key)
					}
				}
				nextID[q.Name] = max(nextID[q.Name], q.LastID)
			}
			for key := range stored {
				if !seen[key] && !taking[key] {
					t.Fatalf("iteration %d crash %d: acknowledged %s lost", it, c, key)
				}
			}
			// Messages present now and never taken must stay: forget
			// takes that did not happen.
			for key := range taking {
				if seen[key] {
					delete(taking, key)
				}
			}
			var wg sync.WaitGroup
			producers := 1 + rng.IntN(4)
			per := rng.IntN(30)
			for p := range producers {
				q := queues[p%len(queues)]
				wg.Go(func() {
					for k := range per {
						mu.Lock()
						nextID[name(q)]++
						id := nextID[name(q)]
						key := fmt.Sprintf("%s/%d", name(q), id)
						payload := fmt.Appendf(nil, "it %d %s %d", it, key, k)
						tried[key] = payload
						mu.Unlock()
						if err := s.write(ctx, Op{Type: TypeStore, Queue: q.queue, Group: q.group, ID: id, Payload: payload}); err != nil {
							return
						}
						mu.Lock()
						stored[key] = payload
						mu.Unlock()
						if k%3 == 0 {
							mu.Lock()
							taking[key] = true
							mu.Unlock()
							if err := s.write(ctx, Op{Type: TypeTake, Queue: q.queue, Group: q.group, ID: id}); err != nil {
								return
							}
							mu.Lock()
							taken[key] = true
							mu.Unlock()
						}
						if k%7 == 0 {
							s.Compact(ctx)
						}
					}
				})
			}
			// Lose the power once some stores are acknowledged, while
			// others are being written: a wait on that condition.
			mu.Lock()
			before := len(stored)
			mu.Unlock()
			crashAfter := rng.IntN(producers*per + 1)
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
		wait:
			for {
				mu.Lock()
				n := len(stored) - before
				mu.Unlock()
				if n >= crashAfter {
					break
				}
				select {
				case <-done:
					break wait
				default:
					runtime.Gosched()
				}
			}
			fs.PowerOff(errors.New("power lost"))
			wg.Wait()
			s.Close()
			fs.Crash(rng.IntN(300))
		}
	}
}

// TestCompactionBoundsTheLog keeps one message from the start while many
// pass through: compaction copies it forward, the log stays a few
// segments long, and the message survives with its deliveries.
func TestCompactionBoundsTheLog(t *testing.T) {
	dir := t.TempDir()
	const seg = 16 << 10
	s, _, _ := mustOpen(t, Options{Dir: dir, SegmentSize: seg})
	meta := QueueMeta{Creator: 1000, Owned: true, MaxDeliveries: 3, LeaseMillis: 5000}
	lsn, err := s.AppendStore("q", meta, Op{ID: 1, Payload: []byte("the long-lived one")})
	must(t, err)
	must(t, s.WaitDurable(ctx, lsn))
	must(t, s.Deliver("q", 1))
	payload := bytes.Repeat([]byte("p"), 200)
	most := 0
	for id := uint64(2); id < 3000; id++ {
		must(t, s.Store(ctx, "q", id, 0, Attrs{}, payload))
		must(t, s.Take(ctx, "q", id))
		if id%100 == 0 {
			if _, err := s.Compact(ctx); err != nil {
				t.Fatal(err)
			}
			most = max(most, len(s.j.Segments()))
		}
	}
	if most > 4 {
		t.Errorf("the log grew to %d segments of %d bytes holding one live message", most, seg)
	}
	must(t, s.Close())
	_, qs, rep := mustOpen(t, Options{Dir: dir, SegmentSize: seg})
	q := qs["q"]
	if len(q.Messages) != 1 || q.Messages[0].ID != 1 || string(q.Messages[0].Payload) != "the long-lived one" || q.Messages[0].Deliveries != 1 {
		t.Fatalf("after compaction and recovery q holds %+v, want message 1 delivered once", q.Messages)
	}
	if q.Meta != meta {
		t.Errorf("the queue's description after compaction: %+v, want %+v", q.Meta, meta)
	}
	if q.LastID < 2999 {
		t.Errorf("LastID %d: ids the log has seen would be reused", q.LastID)
	}
	if rep.Segments > 4 {
		t.Errorf("recovery read %d segments", rep.Segments)
	}
}

// BenchmarkRecover1M measures the recovery of a million small stored
// messages (the target is under 2 s): go test -run '^$' -bench Recover1M.
func BenchmarkRecover1M(b *testing.B) {
	dir := b.TempDir()
	s, _, _, err := Open(Options{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	const n = 1_000_000
	payload := bytes.Repeat([]byte("m"), 64)
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Go(func() {
			for id := uint64(w); id < n; id += 64 {
				if err := s.Store(ctx, fmt.Sprint("q", w%8), id+1, 0, Attrs{UID: 1000}, payload); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	s.Close()
	b.ResetTimer()
	for b.Loop() {
		s, qs, rep, err := Open(Options{Dir: dir})
		if err != nil {
			b.Fatal(err)
		}
		if rep.Messages != n || len(qs) != 8 {
			b.Fatalf("recovered %d messages in %d queues", rep.Messages, len(qs))
		}
		b.ReportMetric(rep.Took.Seconds(), "journal-s")
		s.Close()
	}
}

// TestDamagedDataDirectory damages the segment of a real data directory
// the ways disks and operators do, then opens it: refused, or recovered
// with a report that says what happened, as docs/STORAGE.md promises.
func TestDamagedDataDirectory(t *testing.T) {
	const n = 40
	fill := func(t *testing.T) (dir, seg string) {
		dir = t.TempDir()
		s, _, _ := mustOpen(t, Options{Dir: dir})
		for id := uint64(1); id <= n; id++ {
			must(t, s.Store(ctx, "q", id, 0, Attrs{}, bytes.Repeat([]byte{byte(id)}, 100)))
		}
		must(t, s.Close())
		segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
		if len(segs) != 1 {
			t.Fatalf("segments %v", segs)
		}
		return dir, segs[0]
	}
	edit := func(t *testing.T, path string, fn func([]byte) []byte) {
		b, err := os.ReadFile(path)
		must(t, err)
		must(t, os.WriteFile(path, fn(b), 0o600))
	}
	recordSize := journal.RecordHeaderSize + 1 + 1 + 8 + 1 + 4 + 8 + 4 + 1 + 1 + 1 + 4 + 2 + 1 + 100

	t.Run("bit flip in the middle", func(t *testing.T) {
		dir, seg := fill(t)
		edit(t, seg, func(b []byte) []byte { b[journal.HeaderSize+5*recordSize+30] ^= 1; return b })
		_, _, _, err := Open(Options{Dir: dir})
		if !errors.Is(err, journal.ErrCorrupt) || !strings.Contains(err.Error(), filepath.Base(seg)) {
			t.Fatalf("open: %v, want ErrCorrupt naming %s", err, filepath.Base(seg))
		}
		_, qs, rep := mustOpen(t, Options{Dir: dir, SkipCorrupt: true})
		if got := len(qs["q"].Messages); got != n-1 || !strings.Contains(rep.String(), "DAMAGE") {
			t.Fatalf("skipping the damage: %d messages, report %q; want %d and the damage named", got, rep, n-1)
		}
		for _, m := range qs["q"].Messages {
			if m.ID == 6 {
				t.Fatal("the damaged message 6 was recovered")
			}
		}
	})
	t.Run("zeroed range in the middle", func(t *testing.T) {
		dir, seg := fill(t)
		edit(t, seg, func(b []byte) []byte {
			clear(b[journal.HeaderSize+10*recordSize : journal.HeaderSize+12*recordSize])
			return b
		})
		if _, _, _, err := Open(Options{Dir: dir}); !errors.Is(err, journal.ErrCorrupt) {
			t.Fatalf("open: %v, want ErrCorrupt", err)
		}
	})
	t.Run("truncated file", func(t *testing.T) {
		dir, seg := fill(t)
		edit(t, seg, func(b []byte) []byte { return b[:len(b)-recordSize/2] })
		_, qs, rep := mustOpen(t, Options{Dir: dir})
		if got := len(qs["q"].Messages); got != n-1 || !strings.Contains(rep.String(), "torn tail") {
			t.Fatalf("a cut last record: %d messages, report %q; want %d and the torn tail named", got, rep, n-1)
		}
	})
	t.Run("zeroed tail", func(t *testing.T) {
		dir, seg := fill(t)
		edit(t, seg, func(b []byte) []byte { return append(b, make([]byte, 4096)...) })
		_, qs, rep := mustOpen(t, Options{Dir: dir})
		if got := len(qs["q"].Messages); got != n || rep.TornBytes != 0 {
			t.Fatalf("zeros after the last record (a preallocated segment's rest): %d messages, %d torn bytes; want %d, none", got, rep.TornBytes, n)
		}
	})
	t.Run("segment of another data directory", func(t *testing.T) {
		dir, seg := fill(t)
		_, other := fill(t)
		b, err := os.ReadFile(other)
		must(t, err)
		must(t, os.WriteFile(seg, b, 0o600))
		if _, _, _, err := Open(Options{Dir: dir, SkipCorrupt: true}); !errors.Is(err, journal.ErrForeign) {
			t.Fatalf("open: %v, want ErrForeign even when skipping damage", err)
		}
	})
}

// BenchmarkStore measures durable stores of 64-byte messages from 1, 8
// and 64 concurrent writers, under each sync policy: every-store syncs
// every store before it returns (group commit lets concurrent ones share
// a sync); lossy-interval returns once the store is written to the log
// and syncs every 100 ms.
func BenchmarkStore(b *testing.B) {
	for _, policy := range []struct {
		name     string
		interval time.Duration
	}{{"every-store", 0}, {"lossy-interval=100ms", 100 * time.Millisecond}} {
		for _, writers := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("sync=%s/writers=%d", policy.name, writers), func(b *testing.B) {
				s, _, _, err := Open(Options{Dir: b.TempDir(), SyncInterval: policy.interval})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				payload := bytes.Repeat([]byte("m"), 64)
				var next atomic.Uint64
				var wg sync.WaitGroup
				b.ResetTimer()
				for range writers {
					wg.Go(func() {
						for {
							id := next.Add(1)
							if id > uint64(b.N) {
								return
							}
							if err := s.Store(ctx, "q", id, 0, Attrs{}, payload); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "stores/s")
			})
		}
	}
}

// TestQueueDescriptionLastsWithItsMessages: a queue's description is
// recorded with its first message and again when it changes; with its
// last message it is forgotten, unless it must be kept (an owned or
// configured queue), which only a drop forgets.
func TestQueueDescriptionLastsWithItsMessages(t *testing.T) {
	dir := t.TempDir()
	s, _, _ := mustOpen(t, Options{Dir: dir})
	owned := QueueMeta{Creator: 42, Owned: true}
	for id := uint64(1); id <= 3; id++ {
		lsn, err := s.AppendStore("mine", owned, Op{ID: id, Payload: []byte("x")})
		must(t, err)
		must(t, s.WaitDurable(ctx, lsn))
	}
	set := owned
	set.MaxDeliveries = 9
	lsn, err := s.AppendStore("mine", set, Op{ID: 4, Payload: []byte("x")})
	must(t, err)
	must(t, s.WaitDurable(ctx, lsn))
	open := QueueMeta{Creator: 7}
	for _, q := range []struct {
		name string
		meta QueueMeta
	}{{"emptied", open}, {"owned-emptied", owned}, {"configured-emptied", QueueMeta{Creator: 7, LeaseMillis: 500}}, {"dropped", owned}} {
		lsn, err = s.AppendStore(q.name, q.meta, Op{ID: 1, Payload: []byte("x")})
		must(t, err)
		must(t, s.WaitDurable(ctx, lsn))
		must(t, s.Take(ctx, q.name, 1))
	}
	must(t, s.Drop(ctx, "dropped"))
	// Described once, and again on the change: not with every store.
	if recs := s.LastAppended(); recs != 19 {
		t.Errorf("%d records appended; want 19 (6 descriptions, 8 stores, 4 takes, 1 drop)", recs)
	}
	must(t, s.Close())
	_, qs, rep := mustOpen(t, Options{Dir: dir})
	if got := qs["mine"].Meta; got != set {
		t.Errorf("mine is described as %+v, want %+v", got, set)
	}
	if _, ok := qs["emptied"]; ok {
		t.Error("an unowned queue of default settings, emptied before the restart, came back")
	}
	if _, ok := qs["dropped"]; ok {
		t.Error("a dropped owned queue came back")
	}
	if q, ok := qs["owned-emptied"]; !ok || q.Meta != owned || len(q.Messages) != 0 {
		t.Errorf("an owned queue emptied before the restart: %+v, %v; want it back, empty, still owned", q, ok)
	}
	if q, ok := qs["configured-emptied"]; !ok || q.Meta.LeaseMillis != 500 || len(q.Messages) != 0 {
		t.Errorf("a configured queue emptied before the restart: %+v, %v; want it back with its settings", q, ok)
	}
	if rep.Queues != 1 || rep.EmptyQueues != 2 {
		t.Errorf("report: %d queues with messages and %d empty ones kept; want 1 and 2 (%s)", rep.Queues, rep.EmptyQueues, rep)
	}
}

// TestFullDiskRefusesStores: a store that would eat into the reserve is
// refused with ErrNoSpace naming the data directory, nothing stored is
// lost, and stores go on once space is freed.
func TestFullDiskRefusesStores(t *testing.T) {
	dir := t.TempDir()
	s, _, _ := mustOpen(t, Options{Dir: dir, MinFree: 1 << 20})
	var mu sync.Mutex
	free := int64(1<<20 + 10_000)
	s.space.statfs = func(string) (int64, error) { mu.Lock(); defer mu.Unlock(); return free, nil }
	s.space.checked = time.Time{}
	must(t, s.Store(ctx, "q", 1, 0, Attrs{}, make([]byte, 1000)))
	err := s.Store(ctx, "q", 2, 0, Attrs{}, make([]byte, 20_000))
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("a store past the reserve: %v, want ErrNoSpace naming %s", err, dir)
	}
	fd := sealedPage(t, make([]byte, 50_000))
	if err := s.StoreFile(ctx, "q", 3, 0, Attrs{}, fd, 50_000); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("a page store past the reserve: %v, want ErrNoSpace", err)
	}
	if s.Err() != nil {
		t.Fatalf("a refused store stopped the log: %v", s.Err())
	}
	mu.Lock()
	free = 1 << 30
	mu.Unlock()
	s.space.checked = time.Time{}
	must(t, s.Store(ctx, "q", 2, 0, Attrs{}, make([]byte, 20_000)))
	must(t, s.Close())
	_, qs, _ := mustOpen(t, Options{Dir: dir, MinFree: -1})
	if got := ids(qs["q"]); fmt.Sprint(got) != "[1 2]" {
		t.Fatalf("after a full disk the queue holds %v, want [1 2]", got)
	}
}

// TestRecoveredOrderIsTheQueuesOrder: messages come back in the order of
// their place in the queue (a dead letter keeps the place it had), not
// of their ids in the log.
func TestRecoveredOrderIsTheQueuesOrder(t *testing.T) {
	dir := t.TempDir()
	s, _, _ := mustOpen(t, Options{Dir: dir})
	for _, m := range []struct{ id, seq uint64 }{{10, 3}, {11, 1}, {12, 2}, {13, 0}, {14, 2}} {
		must(t, s.Store(ctx, "jobs.dlq", m.id, 0, Attrs{Seq: m.seq}, []byte("x")))
	}
	must(t, s.Close())
	_, qs, _ := mustOpen(t, Options{Dir: dir})
	if got := ids(qs["jobs.dlq"]); fmt.Sprint(got) != "[11 12 14 10 13]" {
		t.Fatalf("recovered in the order %v, want [11 12 14 10 13] (by place, then id)", got)
	}
}

// TestSequenceNumbersOutliveCompaction: the highest sequence number a
// store gave is still known after compaction deleted every record of it
// (a sequence record says it), and after a restart.
func TestSequenceNumbersOutliveCompaction(t *testing.T) {
	dir := t.TempDir()
	const seg = 16 << 10
	s, _, _ := mustOpen(t, Options{Dir: dir, SegmentSize: seg})
	for id := uint64(1); id <= 50; id++ {
		must(t, s.Store(ctx, "a", id, 0, Attrs{Seq: 1000 + id}, []byte("a")))
		must(t, s.Take(ctx, "a", id))
	}
	last := s.LastAppended()
	payload := bytes.Repeat([]byte("b"), 200)
	for id := uint64(1); s.j.Segments()[0] <= last; id++ {
		if id > 5000 {
			t.Fatalf("compaction never released the segments of queue a: %v", s.j.Segments())
		}
		must(t, s.Store(ctx, "b", id, 0, Attrs{Seq: id}, payload))
		must(t, s.Take(ctx, "b", id))
		if id%50 == 0 {
			if _, err := s.Compact(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := s.NextSeq(); got < 1051 {
		t.Fatalf("NextSeq %d after compaction, want at least 1051", got)
	}
	must(t, s.Close())
	s, _, _ = mustOpen(t, Options{Dir: dir, SegmentSize: seg})
	if got := s.NextSeq(); got < 1051 {
		t.Fatalf("NextSeq %d after a restart, want at least 1051: numbers queue a gave would be given again", got)
	}
}

// TestQueueDescriptionOfTheFirstStore: the description recorded with a
// queue's first store (its creator) survives a restart, owned or not,
// and is recorded once while the queue holds messages.
func TestQueueDescriptionOfTheFirstStore(t *testing.T) {
	dir := t.TempDir()
	s, _, _ := mustOpen(t, Options{Dir: dir})
	before := s.LastAppended()
	for id := uint64(1); id <= 2; id++ {
		lsn, err := s.AppendStore("plain", QueueMeta{Creator: 1000}, Op{ID: id, Payload: []byte("x")})
		must(t, err)
		must(t, s.WaitDurable(ctx, lsn))
	}
	if n := s.LastAppended() - before; n != 3 {
		t.Errorf("%d records for two stores, want 3 (one description)", n)
	}
	must(t, s.Close())
	_, qs, _ := mustOpen(t, Options{Dir: dir})
	if got := qs["plain"].Meta; got.Creator != 1000 {
		t.Errorf("a plain queue's creator after a restart: %+v, want 1000", got)
	}
}
