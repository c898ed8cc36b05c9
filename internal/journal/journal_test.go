package journal

import (
	"bytes"
	"context"
	"encoding/binary"
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
)

func open(t *testing.T, fs FS, opts Options) (*Journal, Report, []Record) {
	t.Helper()
	opts.FS = fs
	var got []Record
	j, rep, err := Open(opts, func(r Record) error {
		got = append(got, Record{LSN: r.LSN, Type: r.Type, Data: bytes.Clone(r.Data)})
		return nil
	})
	if err != nil {
		t.Fatalf("open: %v (report %+v)", err, rep)
	}
	t.Cleanup(func() { j.Close() })
	return j, rep, got
}

func payload(i int) []byte { return []byte(fmt.Sprintf("record %d %s", i, strings.Repeat("x", i%300))) }

func TestWriteAndRecover(t *testing.T) {
	fs := NewMemFS()
	j, rep, got := open(t, fs, Options{SegmentSize: 4096})
	if rep.Records != 0 || len(got) != 0 || rep.NextLSN != 1 {
		t.Fatalf("a new journal: %+v", rep)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	lsns := make([]uint64, 200)
	for i := range lsns {
		wg.Go(func() {
			lsn, err := j.Write(ctx, 1, payload(i))
			if err != nil {
				t.Error(err)
			}
			lsns[i] = lsn
		})
	}
	wg.Wait()
	j.Close()
	_, rep, got = open(t, fs, Options{SegmentSize: 4096})
	if len(got) != 200 || rep.Segments < 2 || rep.NextLSN != 201 {
		t.Fatalf("recovered %d records in %d segments, next %d", len(got), rep.Segments, rep.NextLSN)
	}
	for i, r := range got {
		if r.LSN != uint64(i+1) || r.Type != 1 {
			t.Fatalf("record %d: %+v", i, r)
		}
	}
	for i, lsn := range lsns {
		if !bytes.Equal(got[lsn-1].Data, payload(i)) {
			t.Fatalf("record %d holds %q, want %q", lsn, got[lsn-1].Data, payload(i))
		}
	}
}

func TestReleaseDeletesConsumedSegments(t *testing.T) {
	fs := NewMemFS()
	j, _, _ := open(t, fs, Options{SegmentSize: 1024})
	ctx := context.Background()
	for i := range 100 {
		if _, err := j.Write(ctx, 2, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := fs.List()
	n, err := j.Release(60)
	if err != nil || n == 0 {
		t.Fatalf("release: %d, %v", n, err)
	}
	after, _ := fs.List()
	if len(after) != len(before)-n {
		t.Fatalf("%d files before, %d after releasing %d", len(before), len(after), n)
	}
	j.Close()
	_, rep, got := open(t, fs, Options{SegmentSize: 1024})
	if got[0].LSN > 60 || got[len(got)-1].LSN != 100 || rep.NextLSN != 101 {
		t.Fatalf("after release: records %d..%d, next %d", got[0].LSN, got[len(got)-1].LSN, rep.NextLSN)
	}
}

// TestCrashPoints: a power loss at thousands of moments, with the last
// write torn at any byte: every record acknowledged before the loss is
// recovered, nothing is invented, numbers run without a gap, and the
// journal writes on after recovery.
func TestCrashPoints(t *testing.T) {
	iterations := 1000
	if testing.Short() {
		iterations = 100
	}
	rng := rand.New(rand.NewPCG(1, 2))
	errCrash := errors.New("power lost")
	torn := 0 // recoveries that cut a torn tail: the test must reach them
	defer func() {
		if !t.Failed() && torn == 0 {
			t.Error("no crash point tore a write: the test does not exercise torn tails")
		}
	}()
	for it := range iterations {
		fs := NewMemFS()
		acked := map[uint64][]byte{}
		written := map[string]bool{}
		crashes := 1 + rng.IntN(3)
		next := 0
		for c := range crashes {
			opts := Options{SegmentSize: int64(256 + rng.IntN(4096))}
			j, rep, got := open(t, fs, opts)
			if rep.TornBytes > 0 {
				torn++
			}
			// Everything acknowledged is there, and nothing else.
			seen := map[uint64]bool{}
			for _, r := range got {
				seen[r.LSN] = true
				if want, ok := acked[r.LSN]; ok && !bytes.Equal(want, r.Data) {
					t.Fatalf("iteration %d crash %d: record %d holds %q, %q was acknowledged", it, c, r.LSN, r.Data, want)
				}
				if !written[string(r.Data)] {
					t.Fatalf("iteration %d crash %d: record %d holds %q, never written", it, c, r.LSN, r.Data)
				}
			}
			for lsn := range acked {
				if !seen[lsn] {
					t.Fatalf("iteration %d crash %d: acknowledged record %d lost (report %+v)", it, c, lsn, rep)
				}
			}
			// Write more, some acknowledged, then lose the power at a
			// random moment.
			var mu sync.Mutex
			var wg sync.WaitGroup
			writers := 1 + rng.IntN(4)
			per := rng.IntN(40)
			for w := range writers {
				base := next + w*per
				wg.Go(func() {
					for k := range per {
						p := []byte(fmt.Sprintf("it %d w %d k %d %s", it, w, base+k, strings.Repeat("y", (base+k)%97)))
						mu.Lock()
						written[string(p)] = true
						mu.Unlock()
						lsn, err := j.Write(context.Background(), 3, p)
						if err != nil {
							return
						}
						mu.Lock()
						acked[lsn] = p
						mu.Unlock()
					}
				})
			}
			next += writers * per
			// Lose the power once some of these are acknowledged, while
			// the others are being written: a wait on that condition.
			mu.Lock()
			before := len(acked)
			mu.Unlock()
			crashAfter := rng.IntN(per*writers + 1)
			wgDone := make(chan struct{})
			go func() { wg.Wait(); close(wgDone) }()
		wait:
			for {
				mu.Lock()
				n := len(acked) - before
				mu.Unlock()
				if n >= crashAfter {
					break
				}
				select {
				case <-wgDone:
					break wait
				default:
					runtime.Gosched()
				}
			}
			fs.PowerOff(errCrash)
			wg.Wait()
			j.Close()
			fs.Crash(rng.IntN(200))
		}
		j, _, got := open(t, fs, Options{})
		for lsn := range acked {
			found := false
			for _, r := range got {
				found = found || r.LSN == lsn
			}
			if !found {
				t.Fatalf("iteration %d: acknowledged record %d lost at the end", it, lsn)
			}
		}
		for i, r := range got {
			if i > 0 && r.LSN != got[i-1].LSN+1 {
				t.Fatalf("iteration %d: records jump from %d to %d", it, got[i-1].LSN, r.LSN)
			}
		}
		if _, err := j.Write(context.Background(), 4, []byte("after")); err != nil {
			t.Fatalf("iteration %d: writing after recovery: %v", it, err)
		}
		j.Close()
	}
}

func TestCorruptionInTheMiddle(t *testing.T) {
	fs := NewMemFS()
	j, _, _ := open(t, fs, Options{})
	for i := range 50 {
		j.Write(context.Background(), 1, payload(i))
	}
	j.Close()
	seg := segmentName(1)
	// A bit flipped in a record with records after it.
	fs.Corrupt(seg, func(b []byte) []byte { b[HeaderSize+RecordHeaderSize+3] ^= 0x40; return b })
	_, _, err := Open(Options{FS: fs}, func(Record) error { return nil })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "lost") {
		t.Fatalf("a corrupt record in the middle: %v, want ErrCorrupt saying what would be lost", err)
	}
	// With permission, the damage is quarantined and the rest recovered.
	j, rep, got := open(t, fs, Options{SkipCorrupt: true})
	if len(rep.Quarantined) != 1 || len(got) != 49 || got[0].LSN != 2 {
		t.Fatalf("skipping: %d records from %d, report %+v", len(got), got[0].LSN, rep)
	}
	names, _ := fs.List()
	if !strings.Contains(strings.Join(names, " "), "quarantine-") {
		t.Fatalf("no quarantine file: %v", names)
	}
	if _, err := j.Write(context.Background(), 1, []byte("on")); err != nil {
		t.Fatal(err)
	}
}

func TestTornTailIsCut(t *testing.T) {
	fs := NewMemFS()
	j, _, _ := open(t, fs, Options{})
	for i := range 10 {
		j.Write(context.Background(), 1, payload(i))
	}
	j.Close()
	seg := segmentName(1)
	fs.Corrupt(seg, func(b []byte) []byte { return b[:len(b)-5] }) // the last record cut short
	_, rep, got := open(t, fs, Options{})
	if len(got) != 9 || rep.TornTail == "" || rep.TornBytes == 0 {
		t.Fatalf("a torn tail: %d records, report %+v", len(got), rep)
	}
	// Zeros after the last record are the end of the records, as in a
	// preallocated segment: not damage, not a torn tail, and writes go
	// on after the last record.
	fs2 := NewMemFS()
	j, _, _ = open(t, fs2, Options{})
	j.Write(context.Background(), 1, []byte("one"))
	j.Close()
	fs2.Corrupt(seg, func(b []byte) []byte { return append(b, make([]byte, 4096)...) })
	j, rep, got = open(t, fs2, Options{})
	if len(got) != 1 || rep.TornBytes != 0 || rep.TornTail != "" {
		t.Fatalf("a zeroed tail: %d records, report %+v", len(got), rep)
	}
	if lsn, err := j.Write(context.Background(), 1, []byte("two")); err != nil || lsn != 2 {
		t.Fatalf("write after a zeroed tail: %d, %v", lsn, err)
	}
	j.Close()
	if _, _, got = open(t, fs2, Options{}); len(got) != 2 || string(got[1].Data) != "two" {
		t.Fatalf("after writing past a zeroed tail: %d records", len(got))
	}
	// A torn record followed by zeros is a torn tail, found at once.
	fs3 := NewMemFS()
	j, _, _ = open(t, fs3, Options{})
	j.Write(context.Background(), 1, []byte("one"))
	j.Write(context.Background(), 1, []byte("two"))
	j.Close()
	fs3.Corrupt(seg, func(b []byte) []byte { return append(b[:len(b)-2], make([]byte, 1<<20)...) })
	_, rep, got = open(t, fs3, Options{})
	if len(got) != 1 || rep.TornTail == "" || rep.TornBytes != 1<<20+RecordHeaderSize+1 {
		t.Fatalf("a torn record then zeros: %d records, report %+v", len(got), rep)
	}
}

func TestForeignSegmentIsRefused(t *testing.T) {
	a, b := NewMemFS(), NewMemFS()
	ja, _, _ := open(t, a, Options{})
	ja.Write(context.Background(), 1, []byte("a"))
	ja.Close()
	jb, _, _ := open(t, b, Options{})
	jb.Write(context.Background(), 1, []byte("b"))
	jb.Close()
	// b's segment put in a's place.
	seg := segmentName(1)
	fb, _ := b.Open(seg)
	size, _ := fb.Size()
	data := make([]byte, size)
	fb.ReadAt(data, 0)
	a.Corrupt(seg, func([]byte) []byte { return data })
	if _, _, err := Open(Options{FS: a}, func(Record) error { return nil }); !errors.Is(err, ErrForeign) {
		t.Fatalf("another journal's segment: %v, want ErrForeign", err)
	}
	// Segments without the id file.
	a.Remove(IDFile)
	if _, _, err := Open(Options{FS: a}, func(Record) error { return nil }); !errors.Is(err, ErrForeign) {
		t.Fatalf("no id file: %v, want ErrForeign", err)
	}
}

func TestFailedSyncIsSticky(t *testing.T) {
	fs := NewMemFS()
	j, _, _ := open(t, fs, Options{})
	if _, err := j.Write(context.Background(), 1, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	fs.SetFail(errors.New("EIO"))
	if _, err := j.Write(context.Background(), 1, []byte("lost")); !errors.Is(err, ErrFailed) {
		t.Fatalf("a write whose sync failed: %v, want ErrFailed", err)
	}
	fs.SetFail(nil)
	// The disk is back, but a failed sync is never taken for success.
	if _, err := j.Write(context.Background(), 1, []byte("after")); !errors.Is(err, ErrFailed) {
		t.Fatalf("a write after a failed sync: %v, want ErrFailed", err)
	}
}

// TestOSFS writes, recovers, cuts a torn tail and writes on, on the real
// file system.
func TestOSFS(t *testing.T) {
	dir := t.TempDir()
	fs := OSFS{Dir: dir}
	j, _, _ := open(t, fs, Options{SegmentSize: 2048})
	for i := range 40 {
		if _, err := j.Write(context.Background(), 1, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	names, _ := fs.List()
	last := names[len(names)-2] // before JOURNAL, the segments sort first
	f, err := fs.Open(last)
	if err != nil {
		t.Fatal(err)
	}
	size, _ := f.Size()
	f.Truncate(size - 3)
	f.Close()
	j, rep, got := open(t, fs, Options{SegmentSize: 2048})
	if len(got) != 39 || rep.TornTail == "" {
		t.Fatalf("recovered %d, report %+v", len(got), rep)
	}
	if lsn, err := j.Write(context.Background(), 1, []byte("on")); err != nil || lsn != 40 {
		t.Fatalf("write after recovery: %d, %v", lsn, err)
	}
	j.Close()
	_, _, got = open(t, fs, Options{SegmentSize: 2048})
	if len(got) != 40 || string(got[39].Data) != "on" {
		t.Fatalf("after writing on: %d records", len(got))
	}
}

func TestWaitDurable(t *testing.T) {
	fs := NewMemFS()
	j, _, _ := open(t, fs, Options{})
	ctx := context.Background()
	if j.LastAppended() != 0 {
		t.Fatalf("an empty journal's last appended record is %d", j.LastAppended())
	}
	var last Pending
	for i := range 100 {
		p, err := j.Append(1, payload(i))
		if err != nil {
			t.Fatal(err)
		}
		last = p
	}
	if j.LastAppended() != last.LSN() || last.LSN() != 100 {
		t.Fatalf("last appended %d, the last record %d; want 100", j.LastAppended(), last.LSN())
	}
	if err := j.WaitDurable(ctx, 100); err != nil {
		t.Fatal(err)
	}
	// Durable means synced: a power loss now keeps all 100.
	fs.Crash(0)
	j.Close()
	_, _, got := open(t, fs, Options{})
	if len(got) != 100 {
		t.Fatalf("WaitDurable returned, then a crash kept %d of 100 records", len(got))
	}
	if err := j.WaitDurable(ctx, 1000); err == nil {
		t.Fatal("waiting for a record never appended succeeded")
	}
	// A failed sync wakes the waiters with the failure.
	fs2 := NewMemFS()
	j2, _, _ := open(t, fs2, Options{})
	fs2.SetFail(errors.New("EIO"))
	p, err := j2.Append(1, []byte("doomed"))
	if err != nil {
		t.Fatal(err)
	}
	if err := j2.WaitDurable(ctx, p.LSN()); !errors.Is(err, ErrFailed) {
		t.Fatalf("waiting on a record whose sync failed: %v, want ErrFailed", err)
	}
}

// TestIntervalCrashPoints: under SyncInterval a power loss may take
// records that were committed (written, not yet synced), but only a
// suffix of them: what is recovered is records 1 … n without a gap, each
// holding what was appended under its number, every record durable
// before the loss among them, and the journal writes on after recovery.
func TestIntervalCrashPoints(t *testing.T) {
	iterations := 300
	if testing.Short() {
		iterations = 60
	}
	rng := rand.New(rand.NewPCG(5, 6))
	errCrash := errors.New("power lost")
	lostCommitted := 0 // committed records a loss took: the test must reach some
	for it := range iterations {
		fs := NewMemFS()
		var mu sync.Mutex
		appended := map[uint64][]byte{} // every record, by number
		committed := map[uint64]bool{}
		var durable uint64 // every record up to it survived a loss
		crashes := 1 + rng.IntN(3)
		for c := range crashes {
			interval := time.Duration(1+rng.IntN(20)) * time.Millisecond
			if rng.IntN(3) == 0 {
				interval = time.Hour // only segment changes sync
			}
			opts := Options{SegmentSize: int64(256 + rng.IntN(4096)), SyncInterval: interval}
			j, rep, got := open(t, fs, opts)
			for i, r := range got {
				if r.LSN != uint64(i+1) {
					t.Fatalf("iteration %d crash %d: record %d where %d was expected: order or numbering broken", it, c, r.LSN, i+1)
				}
				if want, ok := appended[r.LSN]; !ok || !bytes.Equal(want, r.Data) {
					t.Fatalf("iteration %d crash %d: record %d holds %q, %q was appended", it, c, r.LSN, r.Data, want)
				}
			}
			if uint64(len(got)) < durable {
				t.Fatalf("iteration %d crash %d: %d records recovered, %d were durable (report %+v)", it, c, len(got), durable, rep)
			}
			for lsn := range committed {
				if lsn > uint64(len(got)) {
					lostCommitted++
					delete(committed, lsn)
				}
			}
			// Numbers above what was recovered are given again.
			for lsn := range appended {
				if lsn > uint64(len(got)) {
					delete(appended, lsn)
				}
			}
			var wg sync.WaitGroup
			writers := 1 + rng.IntN(4)
			per := rng.IntN(40)
			for w := range writers {
				wg.Go(func() {
					for k := range per {
						p := fmt.Appendf(nil, "it %d c %d w %d k %d %s", it, c, w, k, strings.Repeat("y", k%97))
						mu.Lock() // numbered in the order appended
						pend, err := j.Append(3, p)
						if err == nil {
							appended[pend.LSN()] = p
						}
						mu.Unlock()
						if err != nil {
							return
						}
						if _, err := pend.Wait(context.Background()); err != nil {
							return
						}
						mu.Lock()
						committed[pend.LSN()] = true
						mu.Unlock()
					}
				})
			}
			// Lose the power once some records are committed.
			crashAfter := rng.IntN(per*writers + 1)
			wgDone := make(chan struct{})
			go func() { wg.Wait(); close(wgDone) }()
		wait:
			for {
				mu.Lock()
				n := len(committed)
				mu.Unlock()
				if n >= crashAfter {
					break
				}
				select {
				case <-wgDone:
					break wait
				default:
					runtime.Gosched()
				}
			}
			durable = j.LastDurable()
			fs.PowerOff(errCrash)
			wg.Wait()
			if err := j.Close(); err != nil && !errors.Is(err, ErrFailed) {
				t.Fatalf("iteration %d crash %d: close: %v", it, c, err)
			}
			fs.Crash(rng.IntN(200))
		}
		j, _, got := open(t, fs, Options{})
		if uint64(len(got)) < durable {
			t.Fatalf("iteration %d: %d records recovered at the end, %d were durable", it, len(got), durable)
		}
		if _, err := j.Write(context.Background(), 4, []byte("after")); err != nil {
			t.Fatalf("iteration %d: writing after recovery: %v", it, err)
		}
		j.Close()
	}
	if lostCommitted == 0 {
		t.Error("no power loss took a committed record: the test does not exercise the interval's window")
	}
}

// TestIntervalCommitsBeforeTheSync: under SyncInterval a record is
// committed once written, Unsynced counts it, a power loss takes it, and
// Close syncs it.
func TestIntervalCommitsBeforeTheSync(t *testing.T) {
	ctx := context.Background()
	fs := NewMemFS()
	j, _, _ := open(t, fs, Options{SyncInterval: time.Hour})
	var size int64
	for i := range 10 {
		if _, err := j.Write(ctx, 1, payload(i)); err != nil {
			t.Fatal(err)
		}
		size += RecordHeaderSize + int64(len(payload(i)))
	}
	if err := j.WaitCommitted(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if n, b := j.Unsynced(); n != 10 || b != size || j.LastDurable() != 0 {
		t.Fatalf("10 records committed, none synced: unsynced %d records %d bytes (want 10, %d), last durable %d", n, b, size, j.LastDurable())
	}
	fs.PowerOff(errors.New("power lost"))
	if err := j.Close(); !errors.Is(err, ErrFailed) {
		t.Fatalf("close after the power went: %v, want ErrFailed", err)
	}
	fs.Crash(0)
	_, _, got := open(t, fs, Options{})
	if len(got) != 0 {
		t.Fatalf("%d records survived a power loss before any sync", len(got))
	}

	// Closing syncs what was written.
	fs = NewMemFS()
	j, _, _ = open(t, fs, Options{SyncInterval: time.Hour})
	for i := range 10 {
		j.Write(ctx, 1, payload(i))
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	fs.Crash(0)
	_, _, got = open(t, fs, Options{})
	if len(got) != 10 {
		t.Fatalf("closed, then a power loss: %d of 10 records", len(got))
	}
}

// TestIntervalSyncsEverything: once an interval has passed, everything
// written is durable without any further append or Close.
func TestIntervalSyncsEverything(t *testing.T) {
	fs := NewMemFS()
	j, _, _ := open(t, fs, Options{SyncInterval: 10 * time.Millisecond, SegmentSize: 2048})
	for i := range 100 {
		if _, err := j.Append(1, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := j.WaitDurable(ctx, 100); err != nil {
		t.Fatalf("waiting for the interval's sync: %v", err)
	}
	if n, b := j.Unsynced(); n != 0 || b != 0 || j.LastDurable() != 100 {
		t.Fatalf("after the sync: unsynced %d records %d bytes, last durable %d", n, b, j.LastDurable())
	}
	fs.PowerOff(errors.New("power lost"))
	j.Close()
	fs.Crash(0)
	_, _, got := open(t, fs, Options{})
	if len(got) != 100 {
		t.Fatalf("%d of 100 records survived a power loss after the interval's sync", len(got))
	}
}

// TestIntervalFailedSyncIsSticky: under SyncInterval a failed sync stops
// the journal: records written and not synced are no longer committed,
// and nothing more is.
func TestIntervalFailedSyncIsSticky(t *testing.T) {
	fs := NewMemFS()
	j, _, _ := open(t, fs, Options{SyncInterval: 5 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first, err := j.Write(ctx, 1, []byte("the first: its segment is created and synced"))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.WaitDurable(ctx, first); err != nil {
		t.Fatal(err)
	}
	fs.PowerOff(errors.New("EIO"))
	lsn, err := j.Write(ctx, 1, []byte("written, never synced"))
	if err != nil {
		t.Fatalf("a write under the interval policy waits for no sync: %v", err)
	}
	if err := j.WaitDurable(ctx, lsn); !errors.Is(err, ErrFailed) {
		t.Fatalf("waiting for the sync that failed: %v, want ErrFailed", err)
	}
	if err := j.WaitCommitted(ctx, lsn); !errors.Is(err, ErrFailed) {
		t.Fatalf("a record written before the failed sync: %v, want ErrFailed", err)
	}
	fs.Crash(0) // the power is back; the failure stays
	if _, err := j.Write(ctx, 1, []byte("after")); !errors.Is(err, ErrFailed) {
		t.Fatalf("a write after a failed sync: %v, want ErrFailed", err)
	}
}

func TestNegativeSyncIntervalIsRefused(t *testing.T) {
	if _, _, err := Open(Options{FS: NewMemFS(), SyncInterval: -time.Second}, func(Record) error { return nil }); err == nil {
		t.Fatal("a negative sync interval was accepted")
	}
}

// TestRecordsNobodyWaitsForAreWritten: a waiter writes its own batch
// (group commit without a hand-off), but a record nobody waits for is
// written and synced by the journal's writer all the same.
func TestRecordsNobodyWaitsForAreWritten(t *testing.T) {
	j, _, _ := open(t, NewMemFS(), Options{})
	p, err := j.Append(1, []byte("a delivery nobody waits for"))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for j.LastDurable() < p.LSN() {
		if time.Now().After(deadline) {
			t.Fatalf("record %d never became durable without a waiter (last durable %d)", p.LSN(), j.LastDurable())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestGroupCommitUnderManyWriters: concurrent writers each wait for their
// own record; every record is durable when its wait returns, in order,
// and the writers share syncs (fewer syncs than records).
func TestGroupCommitUnderManyWriters(t *testing.T) {
	fs := NewMemFS()
	j, _, _ := open(t, fs, Options{})
	const writers, each = 16, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if _, err := j.Write(context.Background(), 1, payload(w*each+i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	syncs := fs.Syncs()
	fs.Crash(0)
	j.Close()
	_, _, got := open(t, fs, Options{})
	if len(got) != writers*each {
		t.Fatalf("%d records recovered after every wait returned, want %d", len(got), writers*each)
	}
	for i, r := range got {
		if r.LSN != uint64(i+1) {
			t.Fatalf("record %d has number %d", i, r.LSN)
		}
	}
	if syncs >= writers*each {
		t.Errorf("%d syncs for %d records from %d writers: no group commit", syncs, writers*each, writers)
	}
	t.Logf("%d records in %d syncs", writers*each, syncs)
}

// TestOlderFormatVersions: segments of version 1 are read; records
// written after them go to a segment of this version (an older reader
// refuses it whole instead of reading past records it does not know),
// and a version this package does not know is refused, naming it.
func TestOlderFormatVersions(t *testing.T) {
	setVersion := func(fs *MemFS, name string, v uint16) {
		fs.Corrupt(name, func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[8:], v)
			return b
		})
	}
	version := func(fs *MemFS, name string) uint16 {
		var v uint16
		fs.Corrupt(name, func(b []byte) []byte {
			v = binary.LittleEndian.Uint16(b[8:])
			return b
		})
		return v
	}
	fs := NewMemFS()
	j, _, _ := open(t, fs, Options{})
	for i := range 3 {
		if _, err := j.Write(context.Background(), 1, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	first := segmentName(1)
	setVersion(fs, first, 1)

	j, _, got := open(t, fs, Options{})
	if len(got) != 3 {
		t.Fatalf("%d records read from a version-1 segment, want 3", len(got))
	}
	if _, err := j.Write(context.Background(), 1, payload(3)); err != nil {
		t.Fatal(err)
	}
	if segs := j.Segments(); len(segs) != 2 || segs[1] != 4 {
		t.Fatalf("segments %v after a write: want the version-1 one and a new one from record 4", segs)
	}
	j.Close()
	if v := version(fs, segmentName(4)); v != FormatVersion {
		t.Errorf("the new segment has version %d, want %d", v, FormatVersion)
	}
	if _, _, got := open(t, fs, Options{}); len(got) != 4 {
		t.Fatalf("%d records read back, want 4", len(got))
	}

	// An empty last segment of version 1 is simply made this version's.
	fs2 := NewMemFS()
	j2, _, _ := open(t, fs2, Options{})
	if _, err := j2.Write(context.Background(), 1, payload(0)); err != nil {
		t.Fatal(err)
	}
	j2.Close()
	fs2.Corrupt(first, func(b []byte) []byte { return b[:HeaderSize] }) // no records
	setVersion(fs2, first, 1)
	j2, _, _ = open(t, fs2, Options{})
	if _, err := j2.Write(context.Background(), 1, payload(1)); err != nil {
		t.Fatal(err)
	}
	j2.Close()
	if v := version(fs2, first); v != FormatVersion {
		t.Errorf("an empty version-1 segment was kept at version %d", v)
	}

	setVersion(fs, first, FormatVersion+1)
	_, _, err := Open(Options{FS: fs}, func(Record) error { return nil })
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("format version %d", FormatVersion+1)) {
		t.Fatalf("a segment of a newer version: %v", err)
	}
}

// blockingFS makes the first Sync after arm wait until release: a Close
// caught in its last sync.
type blockingFS struct {
	*MemFS
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

type blockingFile struct {
	File
	fs *blockingFS
}

func (b *blockingFS) Create(n string) (File, error) {
	f, err := b.MemFS.Create(n)
	return &blockingFile{f, b}, err
}

func (b *blockingFS) Open(n string) (File, error) {
	f, err := b.MemFS.Open(n)
	return &blockingFile{f, b}, err
}

func (f *blockingFile) Sync() error {
	if f.fs.armed.CompareAndSwap(true, false) {
		close(f.fs.entered)
		<-f.fs.release
	}
	return f.File.Sync()
}

// TestAppendDuringCloseIsRefused: once Close has begun, a record can no
// longer be appended (it would be written by nobody, or after Close's
// last sync, which promises everything appended before it).
func TestAppendDuringCloseIsRefused(t *testing.T) {
	fs := &blockingFS{MemFS: NewMemFS(), entered: make(chan struct{}), release: make(chan struct{})}
	j, _, err := Open(Options{FS: fs, SyncInterval: time.Hour}, func(Record) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Write(context.Background(), 1, []byte("before")); err != nil {
		t.Fatal(err)
	}
	fs.armed.Store(true)
	closed := make(chan error, 1)
	go func() { closed <- j.Close() }()
	<-fs.entered // Close's last sync is under way
	if _, err := j.Append(1, []byte("during")); !errors.Is(err, ErrClosed) {
		t.Errorf("an append while Close syncs: %v, want ErrClosed", err)
	}
	close(fs.release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if j.LastDurable() != 1 {
		t.Errorf("last durable record %d after Close, want 1", j.LastDurable())
	}
}

// TestOSFSPreallocates checks, on the real file system, that the segment
// being written is preallocated to the segment size (so that a sync
// flushes records alone), that the others and a closed journal's last are
// cut to their records, and that a copy taken while the journal runs, as
// a power loss would leave it, recovers every record synced, without a
// torn tail, and is written on after them.
func TestOSFSPreallocates(t *testing.T) {
	const segSize, n = 64 << 10, 1500
	dir := t.TempDir()
	j, _, _ := open(t, OSFS{Dir: dir}, Options{SegmentSize: segSize})
	for i := range n { // several segments
		if _, err := j.Write(context.Background(), 1, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	segs := j.Segments()
	if len(segs) < 3 {
		t.Fatalf("%d segments; want several", len(segs))
	}
	sizes := func(dir string) []int64 {
		var s []int64
		for _, first := range segs {
			fi, err := os.Stat(filepath.Join(dir, segmentName(first)))
			if err != nil {
				t.Fatal(err)
			}
			s = append(s, fi.Size())
		}
		return s
	}
	running := sizes(dir)
	if last := running[len(running)-1]; last != segSize {
		t.Errorf("the segment being written is %d bytes; want it preallocated to %d", last, segSize)
	}
	for i, s := range running[:len(running)-1] {
		if s >= segSize+MaxRecord || s == segSize {
			t.Errorf("closed segment %d is %d bytes: its preallocated rest was not cut", i, s)
		}
	}
	// What the disk holds now, every write having returned (synced).
	crashed := t.TempDir()
	names, _ := os.ReadDir(dir)
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(crashed, n.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	j2, rep, got := open(t, OSFS{Dir: crashed}, Options{SegmentSize: segSize})
	if len(got) != n || rep.TornTail != "" || len(rep.Quarantined) != 0 {
		t.Fatalf("recovered %d of %d records, report %+v", len(got), n, rep)
	}
	if lsn, err := j2.Write(context.Background(), 1, []byte("after")); err != nil || lsn != n+1 {
		t.Fatalf("write after recovery: %d, %v", lsn, err)
	}
	if s := sizes(crashed); s[len(s)-1] != segSize {
		t.Errorf("after recovery the last segment is %d bytes; want it preallocated again", s[len(s)-1])
	}
	j2.Close()
	_, _, got = open(t, OSFS{Dir: crashed}, Options{SegmentSize: segSize})
	if len(got) != n+1 || string(got[n].Data) != "after" {
		t.Fatalf("after writing on: %d records", len(got))
	}
	j.Close()
	closed := sizes(dir)
	if last := closed[len(closed)-1]; last >= segSize {
		t.Errorf("a closed journal's last segment is %d bytes: its preallocated rest was not cut", last)
	}
}

// TestAppendWaited checks that a record appended for its caller to wait
// for is written by that wait, by a later record the writer writes, or
// at Close, and never lost or reordered.
func TestAppendWaited(t *testing.T) {
	ctx := context.Background()
	fs := NewMemFS()
	j, _, _ := open(t, fs, Options{})
	p, err := j.AppendWaited(1, []byte("waited"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(ctx); err != nil {
		t.Fatalf("the wait for a waited record: %v", err)
	}
	// Nobody waits for the next; a plain record after it wakes the
	// writer, which writes both, in order.
	if _, err := j.AppendWaited(1, []byte("forgotten")); err != nil {
		t.Fatal(err)
	}
	q, err := j.Append(1, []byte("plain"))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.WaitDurable(ctx, q.LSN()); err != nil {
		t.Fatal(err)
	}
	// One more nobody waits for: Close writes it.
	if _, err := j.AppendWaited(1, []byte("at close")); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	_, _, got := open(t, fs, Options{})
	var data []string
	for _, r := range got {
		data = append(data, string(r.Data))
	}
	if strings.Join(data, ",") != "waited,forgotten,plain,at close" {
		t.Fatalf("recovered %q", data)
	}
}
