package server

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Limits bounds what clients may make the server hold. In each field, zero
// means the documented default and a negative value means no limit. A
// request over a limit fails alone with a LIMIT error naming the limit;
// the connection and everything already stored stay.
//
// Payloads count by their declared size whether they travel inline or as
// pages, since a page's memory is real memory even though the server never
// maps it. The totals are checked before each store, so concurrent stores
// on different connections may pass a total limit by at most one message
// each; the per-queue limits are exact.
type Limits struct {
	// MaxConnections bounds the connections served at once. Default 4096.
	MaxConnections int
	// MaxConnectionsPerUID bounds the connections of one user id at once.
	// Default 1024.
	MaxConnectionsPerUID int
	// MaxStoredMessages and MaxStoredBytes bound what all queues hold
	// together, private and named. Defaults 16,777,216 messages and half
	// of the machine's memory.
	MaxStoredMessages int64
	MaxStoredBytes    int64
	// MaxQueueMessages and MaxQueueBytes bound one named queue. Defaults:
	// the totals.
	MaxQueueMessages int64
	MaxQueueBytes    int64
	// MaxPrivateMessages and MaxPrivateBytes bound one connection's
	// private queue. Defaults 4,194,304 messages and the byte total.
	MaxPrivateMessages int64
	MaxPrivateBytes    int64
	// MaxQueues bounds the named queues that exist at once. An empty
	// queue nobody waits on or owns does not count for long: it is
	// removed before the limit is enforced. Default 65,536.
	MaxQueues int
	// MaxWaiting bounds the RETRIEVEs of one connection waiting for a
	// message at once. Default 4096.
	MaxWaiting int
	// MaxStoredPages bounds the out-of-line messages stored in all queues:
	// each holds a descriptor open. Default three quarters of the
	// process's descriptor limit (RLIMIT_NOFILE), which leaves the rest
	// for connections and for descriptors in flight, so that a page sent
	// near the limit is refused with a LIMIT error rather than dropped by
	// the kernel.
	MaxStoredPages int64
}

// Limit defaults; see Limits.
const (
	DefaultMaxConnections       = 4096
	DefaultMaxConnectionsPerUID = 1024
	DefaultMaxStoredMessages    = 1 << 24
	DefaultMaxPrivateMessages   = 1 << 22
	DefaultMaxWaiting           = 4096
	DefaultMaxQueues            = 1 << 16
)

// unlimited stands for "no limit" once defaults are applied.
const unlimited = int64(1<<63 - 1)

func (l *Limits) setDefaults() {
	pick := func(v *int64, def int64) {
		switch {
		case *v == 0:
			*v = def
		case *v < 0:
			*v = unlimited
		}
	}
	pickInt := func(v *int, def int) {
		switch {
		case *v == 0:
			*v = def
		case *v < 0:
			*v = int(unlimited)
		}
	}
	pickInt(&l.MaxConnections, DefaultMaxConnections)
	pickInt(&l.MaxConnectionsPerUID, DefaultMaxConnectionsPerUID)
	pickInt(&l.MaxWaiting, DefaultMaxWaiting)
	pickInt(&l.MaxQueues, DefaultMaxQueues)
	pick(&l.MaxStoredMessages, DefaultMaxStoredMessages)
	pick(&l.MaxStoredBytes, halfOfMemory())
	pick(&l.MaxQueueMessages, l.MaxStoredMessages)
	pick(&l.MaxQueueBytes, l.MaxStoredBytes)
	pick(&l.MaxPrivateMessages, DefaultMaxPrivateMessages)
	pick(&l.MaxPrivateBytes, l.MaxStoredBytes)
	pick(&l.MaxStoredPages, pagesForDescriptorLimit())
}

// pagesForDescriptorLimit returns three quarters of the soft descriptor
// limit, or no limit if it cannot be read.
func pagesForDescriptorLimit() int64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY || rl.Cur > uint64(unlimited) {
		return unlimited
	}
	return max(int64(rl.Cur)/4*3, 1)
}

// RaiseDescriptorLimit raises the process's soft descriptor limit
// (RLIMIT_NOFILE) to its hard limit, so that the server can hold as many
// pages as the system allows, and returns the new soft limit. Go
// programs start with the soft limit raised already; a program embedding
// the server that lowered it, or a daemon wanting to log it, calls this
// before New, which derives the default MaxStoredPages from it.
func RaiseDescriptorLimit() (uint64, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("machq: getrlimit(RLIMIT_NOFILE): %w", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			return 0, fmt.Errorf("machq: setrlimit(RLIMIT_NOFILE): %w", err)
		}
	}
	return rl.Cur, nil
}

// halfOfMemory returns half of the machine's memory, or no limit if it
// cannot be read.
func halfOfMemory() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return unlimited
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kb int64
			if _, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb); err == nil && kb > 0 {
				return kb << 10 / 2
			}
		}
	}
	return unlimited
}

// limitError is a refusal because of a limit: the message says which,
// how full it is and what to do.
func limitError(what string, have, max int64, flag, advice string) error {
	return fmt.Errorf("%s: %d of %d (machqd --%s); %s", what, have, max, flag, advice)
}
