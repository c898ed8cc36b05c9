// Package pagepool allocates memfd pages: a spare page ahead of a stream
// of large sends, so that the sender does not wait for the kernel to
// allocate and zero it, and a page mapped for writing with all its memory
// in place.
//
// A sealed memfd cannot be written again, so every out-of-line message
// needs fresh pages, and allocating them is most of the cost of a large
// send on the machines machq runs on (docs/PERFORMANCE.md). A Pool notices
// a stream (requests less than Idle apart) and, in the background,
// prepares the next page at the size last asked for. An occasional
// request allocates nothing ahead; a spare not taken within Idle goes
// back to the kernel.
package pagepool

import (
	"errors"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/page"
)

// Idle is how long ready pages are kept without a request taking one;
// requests closer together than this are a stream.
const Idle = time.Second

// Depth is the most pages a pool keeps ready at once. One keeps the
// background allocation from running ahead of the sends: on two CPUs it
// competes with them.
const Depth = 1

// Page is a fresh memfd of Size bytes, zero-filled, not sealed; Buf is a
// writable mapping of it, if one was asked for. The taker owns both.
type Page struct {
	FD   int
	Size int64
	Buf  []byte
}

// Pool keeps up to Depth pages of the stream's size ready, at most Limit
// bytes in all. Its methods are safe for concurrent use.
type Pool struct {
	name      string
	limit     int64
	idleAfter time.Duration

	mu      sync.Mutex
	ready   []Page
	want    int64     // the stream's page size
	last    time.Time // the previous request
	busy    bool      // a refill goroutine is running
	closed  bool
	filling sync.WaitGroup
	idle    *time.Timer
}

// New returns a pool of pages named name (as /proc/PID/fd shows them) of
// at most limit bytes each, not mapped. A limit of 0 makes a pool that
// never allocates ahead.
func New(name string, limit int64) *Pool {
	p := &Pool{name: name, limit: limit, idleAfter: Idle}
	p.idle = time.AfterFunc(time.Hour, p.release)
	p.idle.Stop()
	return p
}

// Take returns a ready page of at least size bytes, cut down to size, or
// false if there is none.
func (p *Pool) Take(size int64) (Page, bool) {
	p.mu.Lock()
	if len(p.ready) == 0 || p.ready[0].Size < size {
		p.mu.Unlock()
		return Page{}, false
	}
	pg := p.ready[0]
	p.ready = p.ready[1:]
	p.mu.Unlock()
	if pg.Size > size {
		if err := p.shrink(&pg, size); err != nil {
			free(pg)
			return Page{}, false
		}
	}
	return pg, true
}

// Next counts a request for a page of size bytes, after the caller has
// used what it took: when it follows the previous request within Idle, a
// page of size bytes is prepared in the background, unless one at least
// that large is ready, so that it is there for the next request.
func (p *Pool) Next(size int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	stream := now.Sub(p.last) < p.idleAfter
	p.last = now
	if len(p.ready) > 0 && p.ready[0].Size < size {
		// Pages smaller than the stream's are of no use to it.
		for _, r := range p.ready {
			free(r)
		}
		p.ready = nil
	}
	p.want = size
	if stream && !p.closed && !p.busy && size > 0 && size <= p.limit && p.needsMore() {
		p.busy = true
		p.filling.Add(1)
		go p.refill()
	}
	if len(p.ready) > 0 || p.busy {
		p.idle.Reset(p.idleAfter)
	}
}

// needsMore says whether another page of the stream's size fits. The
// caller holds p.mu.
func (p *Pool) needsMore() bool {
	return len(p.ready) < Depth && int64(len(p.ready)+1)*p.want <= p.limit
}

// refill prepares pages until the pool holds what the stream needs.
func (p *Pool) refill() {
	defer p.filling.Done()
	for {
		p.mu.Lock()
		if p.closed || p.want <= 0 || p.want > p.limit || !p.needsMore() {
			p.busy = false
			p.mu.Unlock()
			return
		}
		size := p.want
		p.mu.Unlock()
		pg, err := Allocate(p.name, size, false)
		p.mu.Lock()
		if err != nil || p.closed || size < p.want || !p.needsMore() {
			p.busy = false
			p.mu.Unlock()
			if err == nil {
				free(pg)
			}
			return // the next request allocates its pages itself
		}
		p.ready = append(p.ready, pg)
		p.idle.Reset(p.idleAfter)
		p.mu.Unlock()
	}
}

// shrink cuts a ready page down to size bytes.
func (p *Pool) shrink(pg *Page, size int64) error {
	if err := unix.Ftruncate(pg.FD, size); err != nil {
		return os.NewSyscallError("ftruncate", err)
	}
	pg.Size = size
	return nil
}

// release frees the ready pages after they went unused.
func (p *Pool) release() {
	p.mu.Lock()
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	for _, r := range ready {
		free(r)
	}
}

// Close frees the ready pages, waits for a refill under way, and stops
// the pool from allocating again.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	p.idle.Stop()
	p.mu.Unlock()
	p.filling.Wait()
	p.release()
}

// Ready returns how many pages are ready, for tests.
func (p *Pool) Ready() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready)
}

// Allocate returns a fresh memfd of size bytes whose memory the kernel
// has allocated and zeroed and, if mapped, a writable mapping of it with
// every page-table entry in place (see MapPopulated). Where the kernel
// gives shared memory huge pages only to mappings that ask for them
// (HugePages is "advise"), the memory is allocated through a mapping,
// unmapped again if not wanted; elsewhere by fallocate(2), the cheaper.
func Allocate(name string, size int64, mapped bool) (Page, error) {
	fd, err := page.Create(name)
	if err != nil {
		return Page{}, err
	}
	pg := Page{FD: fd, Size: size}
	if size == 0 {
		return pg, nil
	}
	if HugePages() == "advise" {
		err = page.Truncate(fd, size)
	} else if err = unix.Fallocate(fd, 0, 0, size); err != nil {
		err = os.NewSyscallError("fallocate", err)
	}
	if err == nil && (mapped || HugePages() == "advise") {
		pg.Buf, err = MapPopulated(fd, size)
		if err == nil && !mapped {
			err = page.Unmap(pg.Buf)
			pg.Buf = nil
		}
	}
	if err != nil {
		syscall.Close(fd)
		return Page{}, err
	}
	return pg, nil
}

// HugePages returns the kernel's policy for transparent huge pages in
// shared memory, the selected word of
// /sys/kernel/mm/transparent_hugepage/shmem_enabled: "never" (also where
// the file is missing or unreadable), "advise", "within_size", "always",
// "deny" or "force".
var HugePages = sync.OnceValue(func() string {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
	if err != nil {
		return "never"
	}
	return selected(string(b))
})

// selected returns the word in brackets of a sysfs choice list such as
// "always within_size [advise] never", or "never" if none is.
func selected(list string) string {
	for _, w := range strings.Fields(list) {
		if len(w) > 2 && w[0] == '[' && w[len(w)-1] == ']' {
			return w[1 : len(w)-1]
		}
	}
	return "never"
}

// MapPopulated maps the first size bytes of fd writable, with every page
// allocated and every page-table entry filled in advance:
// MADV_POPULATE_WRITE (Linux 5.14), or MAP_POPULATE where the kernel lacks
// it, which costs more (BenchmarkMapWritable). It asks for
// transparent huge pages (MADV_HUGEPAGE), which the kernel grants for
// shared memory only if the administrator allows it
// (/sys/kernel/mm/transparent_hugepage/shmem_enabled set to advise,
// within_size or always): then mapping and unmapping a page costs one
// entry per 2 MiB instead of one per 4 KiB.
func MapPopulated(fd int, size int64) ([]byte, error) {
	b, err := page.MapWritable(fd, size, false)
	if err != nil {
		return nil, err
	}
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE) // a hint; refused where THP is off
	if err := unix.Madvise(b, unix.MADV_POPULATE_WRITE); err == nil {
		return b, nil
	} else if !errors.Is(err, unix.EINVAL) {
		page.Unmap(b)
		return nil, os.NewSyscallError("madvise", err)
	}
	page.Unmap(b)
	return page.MapWritable(fd, size, true)
}

// free unmaps and closes a page nobody took.
func free(pg Page) {
	page.Unmap(pg.Buf)
	syscall.Close(pg.FD)
}
