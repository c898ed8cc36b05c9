package pagepool

import (
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/machq/machq/internal/page"
)

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// checkPage checks that pg is an unsealed memfd of size bytes, zero-filled,
// and, when mapped, writable through Buf with what is written visible in
// the file.
func checkPage(t *testing.T, pg Page, size int64, mapped bool) {
	t.Helper()
	if pg.Size != size {
		t.Fatalf("page of %d bytes, want %d", pg.Size, size)
	}
	if got, err := page.Size(pg.FD); err != nil || got != size {
		t.Fatalf("memfd of %d bytes (%v), want %d", got, err, size)
	}
	if s, err := page.Seals(pg.FD); err != nil || s&page.RequiredSeals != 0 {
		t.Fatalf("a fresh page carries seals %#x (%v)", s, err)
	}
	if !mapped {
		if pg.Buf != nil {
			t.Fatal("an unmapped pool returned a mapping")
		}
		return
	}
	if int64(len(pg.Buf)) != size {
		t.Fatalf("mapping of %d bytes, want %d", len(pg.Buf), size)
	}
	for i, b := range pg.Buf {
		if b != 0 {
			t.Fatalf("byte %d of a fresh page is %d", i, b)
		}
	}
	pg.Buf[size-1] = 7
	got := make([]byte, 1)
	if _, err := page.ReadAt(pg.FD, got, size-1); err != nil || got[0] != 7 {
		t.Fatalf("a write through the mapping reads back %v (%v)", got, err)
	}
}

// TestStreamIsPreparedAhead: one request allocates nothing ahead; a second
// within the idle time makes the pool prepare Depth pages of that size,
// which the next requests take, zero-filled and mapped.
func TestStreamIsPreparedAhead(t *testing.T) {
	for _, mapped := range []bool{true, false} {
		const size = 1 << 20
		p := New("test", 64<<20, mapped)
		if _, ok := p.Take(size); ok {
			t.Fatal("an empty pool had a page")
		}
		p.mu.Lock()
		busy := p.busy
		p.mu.Unlock()
		if busy {
			t.Fatal("a single request started allocating ahead")
		}
		p.Take(size)
		waitFor(t, "pages prepared", func() bool { return p.Ready() == Depth })
		for i := 0; i < Depth; i++ {
			pg, ok := p.Take(size)
			if !ok {
				t.Fatalf("take %d: no ready page", i)
			}
			checkPage(t, pg, size, mapped)
			free(pg)
		}
		p.Close()
	}
}

// TestLimitBoundsWhatIsPrepared: pages over the limit are never prepared,
// and no more pages are prepared than fit in the limit together.
func TestLimitBoundsWhatIsPrepared(t *testing.T) {
	p := New("test", 1<<20, true)
	defer p.Close()
	p.Take(2 << 20)
	p.Take(2 << 20)
	p.mu.Lock()
	busy := p.busy
	p.mu.Unlock()
	if busy {
		t.Fatal("a page over the limit is being prepared")
	}
	// 768 KiB pages: one fits in 1 MiB, two do not.
	p.Take(768 << 10)
	p.Take(768 << 10)
	waitFor(t, "the refill to end", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return !p.busy
	})
	if n := p.Ready(); n != 1 {
		t.Fatalf("%d pages of 768 KiB ready under a 1 MiB limit, want 1", n)
	}
	off := New("test", 0, true)
	off.Take(4096)
	off.Take(4096)
	off.mu.Lock()
	busy = off.busy
	off.mu.Unlock()
	if busy {
		t.Fatal("a pool with limit 0 allocates ahead")
	}
	off.Close()
}

// TestLargerPageIsCut: a ready page larger than asked for is cut down, its
// mapping with it; a request of another size drops the pages prepared
// for the old one.
func TestLargerPageIsCut(t *testing.T) {
	p := New("test", 64<<20, true)
	defer p.Close()
	p.Take(2 << 20)
	p.Take(2 << 20)
	waitFor(t, "pages prepared", func() bool { return p.Ready() == Depth })
	pg, ok := p.Take(100_000)
	if !ok {
		t.Fatal("a larger ready page was not used")
	}
	checkPage(t, pg, 100_000, true)
	free(pg)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.ready {
		if r.Size != 100_000 {
			t.Fatalf("a page of the old size, %d bytes, kept", r.Size)
		}
	}
}

// TestIdlePagesAreFreed: ready pages nobody takes go back to the kernel,
// and Close frees everything and waits for a refill under way.
func TestIdlePagesAreFreed(t *testing.T) {
	base := openFDs(t)
	p := New("test", 64<<20, true)
	p.idleAfter = 50 * time.Millisecond
	p.Take(1 << 20)
	p.Take(1 << 20)
	waitFor(t, "pages prepared", func() bool { return p.Ready() == Depth })
	waitFor(t, "idle pages freed", func() bool { return p.Ready() == 0 && openFDs(t) == base })
	p.Close()

	q := New("test", 64<<20, true)
	q.Take(1 << 20)
	q.Take(1 << 20)
	q.Close()
	if n := q.Ready(); n != 0 || openFDs(t) != base {
		t.Fatalf("after Close: %d ready, %d descriptors (want %d)", n, openFDs(t), base)
	}
	if _, ok := q.Take(1 << 20); ok {
		t.Fatal("a closed pool handed out a page")
	}
	q.mu.Lock()
	busy := q.busy
	q.mu.Unlock()
	if busy {
		t.Fatal("a closed pool allocates")
	}
}

// TestConcurrentTakes: many takers at once each get a page of their own or
// none; nothing is handed out twice or leaked.
func TestConcurrentTakes(t *testing.T) {
	base := openFDs(t)
	p := New("test", 64<<20, true)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Go(func() {
			mark := byte(g + 1)
			for i := 0; i < 50; i++ {
				pg, ok := p.Take(64 << 10)
				if !ok {
					continue
				}
				if pg.Buf[0] != 0 {
					t.Error("a page handed out had been written to")
				}
				pg.Buf[0] = mark
				runtime.Gosched()
				if pg.Buf[0] != mark {
					t.Error("a page was handed out to two takers")
				}
				free(pg)
			}
		})
	}
	wg.Wait()
	p.Close()
	if n := openFDs(t); n != base {
		t.Fatalf("%d descriptors open after Close, want %d", n, base)
	}
}

func TestSelected(t *testing.T) {
	for in, want := range map[string]string{
		"always within_size advise [never] deny force\n": "never",
		"always within_size [advise] never deny force\n": "advise",
		"[always] within_size advise never":              "always",
		"always within_size advise never":                "never",
		"":                                               "never",
		"[] [x":                                          "never",
	} {
		if got := selected(in); got != want {
			t.Errorf("selected(%q) = %q, want %q", in, got, want)
		}
	}
}
