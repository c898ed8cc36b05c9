package machq

import (
	"fmt"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/page"
)

// DefaultSparePage is the default for WithSparePage: the largest spare
// page a client keeps ready, 256 MiB.
const DefaultSparePage = 256 << 20

// sparePageIdle is how long a spare page is kept without a send using it.
const sparePageIdle = time.Second

// WithSparePage sets the largest spare page the client keeps ready for
// out-of-line sends. Once a client sends payloads above the inline
// threshold less than a second apart, it allocates after each one, in the
// background, a memfd of the same size; the next send of at most that
// size writes into those pages instead of allocating and zeroing fresh
// ones while the caller waits, which is most of the cost of a large send
// (docs/PERFORMANCE.md). The spare is freed after a second without sends,
// and an occasional large send allocates nothing ahead. 0 turns spare
// pages off; the default is DefaultSparePage.
func WithSparePage(maxBytes int64) Option {
	return func(o *options) error {
		if maxBytes < 0 {
			return fmt.Errorf("machq: spare page limit %d is negative", maxBytes)
		}
		o.spare = maxBytes
		return nil
	}
}

// sparePage is one memfd allocated ahead of the send that will use it.
type sparePage struct {
	limit int64

	mu      sync.Mutex
	fd      int // -1 when there is none
	size    int64
	filling sync.WaitGroup
	busy    bool      // a refill is under way
	last    time.Time // the previous refill request: sends this close are a stream
	closed  bool
	idle    *time.Timer
}

func newSparePage(limit int64) *sparePage {
	s := &sparePage{limit: limit, fd: -1}
	s.idle = time.AfterFunc(time.Hour, s.release)
	s.idle.Stop()
	return s
}

// take returns the spare memfd truncated to size, or -1 if there is no
// spare that large.
func (s *sparePage) take(size int64) int {
	s.mu.Lock()
	if s.fd < 0 || s.size < size {
		s.mu.Unlock()
		return -1
	}
	fd, have := s.fd, s.size
	s.fd = -1
	s.mu.Unlock()
	if size < have {
		if err := unix.Ftruncate(fd, size); err != nil {
			syscall.Close(fd)
			return -1
		}
	}
	return fd
}

// refill prepares a spare of size bytes in the background, if the
// previous large send was less than sparePageIdle ago, unless one at
// least that large is ready or being prepared, or size is over the limit.
func (s *sparePage) refill(size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	stream := now.Sub(s.last) < sparePageIdle
	s.last = now
	if !stream || s.closed || s.busy || size <= 0 || size > s.limit || (s.fd >= 0 && s.size >= size) {
		return
	}
	s.busy = true
	s.filling.Add(1)
	go func() {
		defer s.filling.Done()
		fd, err := page.Create("machq")
		if err == nil {
			if err = unix.Fallocate(fd, 0, 0, size); err != nil {
				syscall.Close(fd)
			}
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.busy = false
		if err != nil {
			return // the next send allocates its pages itself
		}
		if s.closed {
			syscall.Close(fd)
			return
		}
		if s.fd >= 0 {
			syscall.Close(s.fd)
		}
		s.fd, s.size = fd, size
		s.idle.Reset(sparePageIdle)
	}()
}

// release frees the spare page after it went unused.
func (s *sparePage) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd >= 0 {
		syscall.Close(s.fd)
		s.fd = -1
	}
}

// close frees the spare page and waits for a refill under way.
func (s *sparePage) close() {
	s.mu.Lock()
	s.closed = true
	s.idle.Stop()
	s.mu.Unlock()
	s.filling.Wait()
	s.release()
}
