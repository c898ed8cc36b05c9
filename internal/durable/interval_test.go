package durable

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/machq/machq/internal/journal"
)

// TestIntervalCrashPoints loses the power at random moments while
// producers store and consumers take under a sync interval, with
// compaction running. A power loss may take what was acknowledged in the
// window, but what is recovered is exactly the queues after a prefix of
// the records, in their order, holding at least every record durable
// when the power went: nothing invented, nothing out of order.
func TestIntervalCrashPoints(t *testing.T) {
	iterations := 200
	if testing.Short() {
		iterations = 40
	}
	rng := rand.New(rand.NewPCG(7, 8))
	queues := []string{"a", "b", "c"}
	lostAcked := 0 // acknowledged records a loss took: the test must reach some
	for it := range iterations {
		fs := journal.NewMemFS()
		var mu sync.Mutex
		ops := map[uint64]Op{} // every store and take appended, by record
		acked := map[uint64]bool{}
		var durable uint64 // every record up to it survived
		nextID := map[string]uint64{}
		crashes := 1 + rng.IntN(3)
		for c := range crashes {
			interval := time.Duration(1+rng.IntN(20)) * time.Millisecond
			s, qs, rep := mustOpen(t, Options{FS: fs, SegmentSize: int64(512 + rng.IntN(8192)), SyncInterval: interval})
			last := rep.NextLSN - 1
			if last < durable {
				t.Fatalf("iteration %d crash %d: records up to %d recovered, %d were durable", it, c, last, durable)
			}
			for lsn := range ops {
				if lsn > last {
					if acked[lsn] {
						lostAcked++
					}
					delete(ops, lsn) // its number is given again
					delete(acked, lsn)
				}
			}
			// The queues the surviving records describe, applied in
			// order, are exactly what was recovered.
			want := map[string][]byte{}
			for _, lsn := range slices.Sorted(func(yield func(uint64) bool) {
				for lsn := range ops {
					if !yield(lsn) {
						return
					}
				}
			}) {
				op := ops[lsn]
				key := fmt.Sprintf("%s/%d", op.Queue, op.ID)
				if op.Type == TypeStore {
					want[key] = op.Payload
				} else {
					delete(want, key)
				}
			}
			got := map[string][]byte{}
			for _, q := range qs {
				for _, m := range q.Messages {
					got[fmt.Sprintf("%s/%d", q.Name, m.ID)] = m.Payload
				}
				nextID[q.Name] = max(nextID[q.Name], q.LastID)
			}
			if len(got) != len(want) {
				t.Fatalf("iteration %d crash %d: %d messages recovered, the records up to %d hold %d", it, c, len(got), last, len(want))
			}
			for key, p := range want {
				if !bytes.Equal(got[key], p) {
					t.Fatalf("iteration %d crash %d: %s holds %q, the records up to %d say %q", it, c, key, got[key], last, p)
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
						nextID[q]++
						id := nextID[q]
						payload := fmt.Appendf(nil, "it %d %s/%d %d", it, q, id, k)
						op := Op{Type: TypeStore, Queue: q, ID: id, Payload: payload}
						lsn, err := s.Append(op)
						if err == nil {
							ops[lsn] = op
						}
						mu.Unlock()
						if err != nil || s.WaitCommitted(ctx, lsn) != nil {
							return
						}
						mu.Lock()
						acked[lsn] = true
						mu.Unlock()
						if k%3 == 0 {
							mu.Lock()
							op := Op{Type: TypeTake, Queue: q, ID: id}
							lsn, err := s.Append(op)
							if err == nil {
								ops[lsn] = op
							}
							mu.Unlock()
							if err != nil || s.WaitCommitted(ctx, lsn) != nil {
								return
							}
							mu.Lock()
							acked[lsn] = true
							mu.Unlock()
						}
						if k%7 == 0 {
							s.Compact(ctx)
						}
					}
				})
			}
			mu.Lock()
			before := len(acked)
			mu.Unlock()
			crashAfter := rng.IntN(producers*per + 1)
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
		wait:
			for {
				mu.Lock()
				n := len(acked) - before
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
			durable = s.j.LastDurable()
			fs.PowerOff(errors.New("power lost"))
			wg.Wait()
			s.Close()
			fs.Crash(rng.IntN(300))
		}
	}
	if lostAcked == 0 {
		t.Error("no power loss took an acknowledged record: the test does not exercise the interval's window")
	}
}

// TestIntervalSyncsWithinTheInterval: stores are answered before they
// are synced, Unsynced counts them, and once an interval has passed
// they are durable with nothing more appended.
func TestIntervalSyncsWithinTheInterval(t *testing.T) {
	fs := journal.NewMemFS()
	s, _, _ := mustOpen(t, Options{FS: fs, SyncInterval: 20 * time.Millisecond})
	if s.SyncInterval() != 20*time.Millisecond {
		t.Fatalf("SyncInterval %v", s.SyncInterval())
	}
	for id := uint64(1); id <= 50; id++ {
		must(t, s.Store(ctx, "q", id, 0, Attrs{}, []byte("payload")))
	}
	dl, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	must(t, s.WaitDurable(dl, s.LastAppended()))
	if n, b := s.Unsynced(); n != 0 || b != 0 {
		t.Fatalf("after the interval's sync: %d records, %d bytes unsynced", n, b)
	}
	fs.PowerOff(errors.New("power lost"))
	s.Close()
	fs.Crash(0)
	_, qs, _ := mustOpen(t, Options{FS: fs})
	if len(qs["q"].Messages) != 50 {
		t.Fatalf("%d of 50 stores survived a power loss after the interval's sync", len(qs["q"].Messages))
	}
}

// TestIntervalKeepsPayloadFilesUntilTheirTakeIsDurable: under a sync
// interval a page message's payload file is synced before its record
// (the record is answered without waiting for a sync, the file is not),
// and is deleted only once its take is durable: a power loss that takes
// the take back finds the file.
func TestIntervalKeepsPayloadFilesUntilTheirTakeIsDurable(t *testing.T) {
	dir := t.TempDir()
	s, _, _ := mustOpen(t, Options{Dir: dir, SyncInterval: time.Hour})
	data := bytes.Repeat([]byte("page "), 1000)
	fd := sealedPage(t, data)
	must(t, s.StoreFile(ctx, "q", 1, 0, Attrs{}, fd, int64(len(data))))
	must(t, s.Take(ctx, "q", 1))
	if n, _ := s.Unsynced(); n == 0 {
		t.Fatal("the store and take were synced: the interval did not apply")
	}
	if files := payloadFiles(t, dir); len(files) != 1 {
		t.Fatalf("the take is answered, not synced: payload files %v, want the one kept", files)
	}
	// Another answer does not delete it either while the take is unsynced.
	must(t, s.Store(ctx, "q", 2, 0, Attrs{}, []byte("inline")))
	if files := payloadFiles(t, dir); len(files) != 1 {
		t.Fatalf("payload files %v after another store, want the one kept", files)
	}
	// Close syncs the take, then deletes the file.
	must(t, s.Close())
	if files := payloadFiles(t, dir); len(files) != 0 {
		t.Fatalf("closed: payload files %v left", files)
	}

	// With a short interval, the file goes once the take is durable.
	s, qs, _ := mustOpen(t, Options{Dir: dir, SyncInterval: 5 * time.Millisecond})
	if len(qs["q"].Messages) != 1 {
		t.Fatalf("recovered %+v", qs["q"].Messages)
	}
	fd = sealedPage(t, data)
	must(t, s.StoreFile(ctx, "q", 3, 0, Attrs{}, fd, int64(len(data))))
	must(t, s.Take(ctx, "q", 3))
	dl, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	must(t, s.WaitDurable(dl, s.LastAppended()))
	if files := payloadFiles(t, dir); len(files) != 0 {
		t.Fatalf("the take is durable: payload files %v left", files)
	}
}

func TestNegativeSyncIntervalIsRefused(t *testing.T) {
	if _, _, _, err := Open(Options{FS: journal.NewMemFS(), SyncInterval: -1}); err == nil {
		t.Fatal("a negative sync interval was accepted")
	}
}
