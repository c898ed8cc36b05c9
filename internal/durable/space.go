package durable

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoSpace: the data directory's file system has less free space than
// the reserve: durable stores are refused (nothing is lost; the store
// can be retried once space is freed) rather than let a write fail
// half-way, which would stop the log.
var ErrNoSpace = errors.New("durable: the data directory is out of space")

// DefaultMinFree is the free space kept in reserve when Options.MinFree
// is 0: two segments' worth, so that compaction can always run.
const DefaultMinFree = 2 * (64 << 20)

// space watches the data directory's free space: statfs at most every
// interval, or sooner once the bytes written since pass a tenth of the
// reserve.
type space struct {
	dir     string
	minFree int64
	statfs  func(string) (int64, error) // free bytes; replaced in tests

	mu      sync.Mutex
	checked time.Time
	free    int64 // at the last check, less what was written since
	written int64 // since the last check
}

const spaceInterval = 50 * time.Millisecond

func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("durable: statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// room reports ErrNoSpace, saying what to do, if writing need more bytes
// would leave less than the reserve free; otherwise it counts them.
func (sp *space) room(need int64) error {
	if sp == nil {
		return nil
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if time.Since(sp.checked) > spaceInterval || sp.written > sp.minFree/10 {
		free, err := sp.statfs(sp.dir)
		if err != nil {
			return err
		}
		sp.free, sp.written, sp.checked = free, 0, time.Now()
	}
	if sp.free-sp.written-need < sp.minFree {
		return fmt.Errorf("%w: %s has %d bytes free, and a store of %d would leave less than the %d kept in reserve: free some space (consume or purge durable queues), or give the data directory more room",
			ErrNoSpace, sp.dir, sp.free-sp.written, need, sp.minFree)
	}
	sp.written += need
	return nil
}
