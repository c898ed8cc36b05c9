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

// isBusy reports whether a refill is under way.
func (p *Pool) isBusy() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.busy
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
	got := make([]byte, size)
	if _, err := page.ReadAt(pg.FD, got, 0); err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		if b != 0 {
			t.Fatalf("byte %d of a fresh page is %d", i, b)
		}
	}
	if !mapped {
		if pg.Buf != nil {
			t.Fatal("an unmapped page came with a mapping")
		}
		return
	}
	if int64(len(pg.Buf)) != size {
		t.Fatalf("mapping of %d bytes, want %d", len(pg.Buf), size)
	}
	pg.Buf[size-1] = 7
	last := make([]byte, 1)
	if _, err := page.ReadAt(pg.FD, last, size-1); err != nil || last[0] != 7 {
		t.Fatalf("a write through the mapping reads back %v (%v)", last, err)
	}
}

// TestAllocate: pages come zero-filled, of the size asked, mapped
// writable when asked, and a page of 0 bytes is an empty memfd.
func TestAllocate(t *testing.T) {
	for _, mapped := range []bool{true, false} {
		for _, size := range []int64{0, 1, 4096, 3 << 20} {
			pg, err := Allocate("test", size, mapped)
			if err != nil {
				t.Fatal(err)
			}
			checkPage(t, pg, size, mapped && size > 0)
			free(pg)
		}
	}
}

// TestStreamIsPreparedAhead: one request allocates nothing ahead; a second
// within the idle time makes the pool prepare a page of that size, which
// the next request takes, zero-filled.
func TestStreamIsPreparedAhead(t *testing.T) {
	const size = 1 << 20
	p := New("test", 64<<20)
	defer p.Close()
	if _, ok := p.Take(size); ok {
		t.Fatal("an empty pool had a page")
	}
	p.Next(size)
	if p.isBusy() {
		t.Fatal("a single request started allocating ahead")
	}
	p.Next(size)
	waitFor(t, "a page prepared", func() bool { return p.Ready() == Depth })
	pg, ok := p.Take(size)
	if !ok {
		t.Fatal("no ready page")
	}
	checkPage(t, pg, size, false)
	free(pg)
	// A request for more than is ready drops the smaller page.
	p.Next(size)
	waitFor(t, "a page prepared", func() bool { return p.Ready() == Depth })
	if _, ok := p.Take(2 * size); ok {
		t.Fatal("a smaller page was taken for a larger request")
	}
	p.Next(2 * size)
	waitFor(t, "a larger page prepared", func() bool { return p.Ready() == Depth && !p.isBusy() })
	if pg, ok := p.Take(2 * size); !ok {
		t.Fatal("no page of the new size")
	} else {
		checkPage(t, pg, 2*size, false)
		free(pg)
	}
}

// TestLimitBoundsWhatIsPrepared: pages over the limit are never prepared.
func TestLimitBoundsWhatIsPrepared(t *testing.T) {
	p := New("test", 1<<20)
	defer p.Close()
	p.Next(2 << 20)
	p.Next(2 << 20)
	if p.isBusy() {
		t.Fatal("a page over the limit is being prepared")
	}
	off := New("test", 0)
	defer off.Close()
	off.Next(4096)
	off.Next(4096)
	if off.isBusy() {
		t.Fatal("a pool with limit 0 allocates ahead")
	}
}

// TestLargerPageIsCut: a ready page larger than asked for is cut down.
func TestLargerPageIsCut(t *testing.T) {
	p := New("test", 64<<20)
	defer p.Close()
	p.Next(2 << 20)
	p.Next(2 << 20)
	waitFor(t, "a page prepared", func() bool { return p.Ready() == Depth })
	pg, ok := p.Take(100_000)
	if !ok {
		t.Fatal("a larger ready page was not used")
	}
	checkPage(t, pg, 100_000, false)
	free(pg)
}

// TestIdlePagesAreFreed: ready pages nobody takes go back to the kernel,
// and Close frees everything and waits for a refill under way.
func TestIdlePagesAreFreed(t *testing.T) {
	base := openFDs(t)
	p := New("test", 64<<20)
	p.idleAfter = 50 * time.Millisecond
	p.Next(1 << 20)
	p.Next(1 << 20)
	waitFor(t, "a page prepared", func() bool { return p.Ready() == Depth })
	waitFor(t, "the idle page freed", func() bool { return p.Ready() == 0 && openFDs(t) == base })
	p.Close()

	q := New("test", 64<<20)
	q.Next(1 << 20)
	q.Next(1 << 20)
	q.Close()
	if n := q.Ready(); n != 0 || openFDs(t) != base {
		t.Fatalf("after Close: %d ready, %d descriptors (want %d)", n, openFDs(t), base)
	}
	q.Next(1 << 20)
	if q.isBusy() {
		t.Fatal("a closed pool allocates")
	}
}

// TestConcurrentTakes: many takers at once each get a page of their own or
// none; nothing is handed out twice or leaked.
func TestConcurrentTakes(t *testing.T) {
	base := openFDs(t)
	p := New("test", 64<<20)
	var mu sync.Mutex
	held := map[uint64]bool{} // descriptors of the pages held now
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Go(func() {
			for i := 0; i < 50; i++ {
				pg, ok := p.Take(64 << 10)
				p.Next(64 << 10)
				if !ok {
					continue
				}
				// Descriptor numbers are unique among open descriptors:
				// two takers holding one number hold one page.
				key := uint64(pg.FD)
				mu.Lock()
				if held[key] {
					t.Error("one page handed out twice")
				}
				held[key] = true
				mu.Unlock()
				runtime.Gosched()
				mu.Lock()
				delete(held, key)
				mu.Unlock()
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
