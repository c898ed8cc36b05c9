package server

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/durable"
)

// Limits bounds what clients may make the server hold. In each field, zero
// means the documented default and a negative value means no limit. A
// request over a limit fails alone with a LIMIT error naming the limit;
// the connection and everything already stored stay.
//
// A message counts from the moment the server accepts it until it lets go
// of it: in a queue, in a connection's unsent responses or in a write
// under way alike, against the totals and against the user id that
// stored it. Payloads count by their declared size whether they travel
// inline or as pages, since a page's memory is real memory even though
// the server never maps it. The totals and per-uid limits are never
// passed, even by concurrent stores; the per-queue limits may be passed
// by one message when a consumer waiting on the queue turns out unable to
// take it.
//
// The per-uid defaults are the totals when the server admits no user but
// its own and root; when Access admits others, they are half the totals,
// so that one user can never take everything from the rest.
type Limits struct {
	// MaxConnections bounds the connections served at once. Default 4096.
	MaxConnections int
	// MaxConnectionsPerUID bounds the connections of one user id at once.
	// Default 1024.
	MaxConnectionsPerUID int
	// MaxStoredMessages and MaxStoredBytes bound what all queues hold
	// together, private and named, with what waits to be written to
	// consumers. Defaults 16,777,216 messages and half of the machine's
	// memory.
	MaxStoredMessages int64
	MaxStoredBytes    int64
	// MaxStoredMessagesPerUID, MaxStoredBytesPerUID and
	// MaxStoredPagesPerUID bound what one user id's stores make the
	// server hold, wherever the messages are.
	MaxStoredMessagesPerUID int64
	MaxStoredBytesPerUID    int64
	MaxStoredPagesPerUID    int64
	// MaxQueueMessages and MaxQueueBytes bound one named queue. Defaults:
	// the totals.
	MaxQueueMessages int64
	MaxQueueBytes    int64
	// MaxPrivateMessages and MaxPrivateBytes bound one connection's
	// private queue. Defaults 4,194,304 messages and the byte total.
	MaxPrivateMessages int64
	MaxPrivateBytes    int64
	// MaxQueues bounds the named queues that exist at once. An empty
	// open queue nobody waits on does not count for long: it is removed
	// before the limit is enforced. An owned queue counts until its owner
	// releases it. Default 65,536.
	MaxQueues int
	// MaxQueuesPerUID bounds the named queues one user id has created
	// that exist at once.
	MaxQueuesPerUID int
	// MaxWaiting bounds the RETRIEVEs of one connection waiting for a
	// message at once. Default 4096.
	MaxWaiting int
	// MaxWaitingTotal bounds the RETRIEVEs waiting at once on all
	// connections, and MaxWaitingPerUID those of one user id. Default
	// 65,536 in all.
	MaxWaitingTotal  int64
	MaxWaitingPerUID int64
	// MaxStoredPages bounds the out-of-line messages held in all: each
	// holds a descriptor open. Default three quarters of the process's
	// descriptor limit (RLIMIT_NOFILE).
	MaxStoredPages int64
	// MaxDescriptors bounds the descriptors that pages and connections
	// take together (a connection takes its socket and room for the
	// descriptors it may have in flight). Default the descriptor limit
	// less a reserve of DescriptorReserve, which keeps accepting a
	// connection, receiving a frame's descriptor and answering with an
	// error from ever failing for want of a descriptor: near the limit,
	// new pages and connections are refused with LIMIT instead.
	MaxDescriptors int64
	// MaxDescriptorsPerUID bounds those one user id's pages and
	// connections take. Default half of MaxDescriptors when other users
	// are admitted, else all of it.
	MaxDescriptorsPerUID int64
	// MaxGroups bounds the consumer groups of all queues together, and
	// MaxGroupsPerUID those one user id created. Default 65,536 in all
	// (a queue has at most 256).
	MaxGroups       int
	MaxGroupsPerUID int
}

// Limit defaults; see Limits.
const (
	DefaultMaxConnections       = 4096
	DefaultMaxConnectionsPerUID = 1024
	DefaultMaxStoredMessages    = 1 << 24
	DefaultMaxPrivateMessages   = 1 << 22
	DefaultMaxWaiting           = 4096
	DefaultMaxWaitingTotal      = 1 << 16
	DefaultMaxQueues            = 1 << 16
	DefaultMaxGroups            = 1 << 16
	// DescriptorReserve is how many descriptors of the process's limit
	// the default MaxDescriptors keeps back for listeners, logs and the
	// moments between accepting or receiving a descriptor and refusing
	// it.
	DescriptorReserve = 64
)

// unlimited stands for "no limit" once defaults are applied.
const unlimited = int64(1<<63 - 1)

func (l *Limits) setDefaults(shared bool) {
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
	// share is the default of a per-uid limit whose total is total.
	share := func(total int64) int64 {
		if !shared || total == unlimited {
			return total
		}
		return max(total/2, 1)
	}
	pickInt(&l.MaxConnections, DefaultMaxConnections)
	pickInt(&l.MaxConnectionsPerUID, DefaultMaxConnectionsPerUID)
	pickInt(&l.MaxWaiting, DefaultMaxWaiting)
	pickInt(&l.MaxQueues, DefaultMaxQueues)
	pickInt(&l.MaxQueuesPerUID, int(share(int64(l.MaxQueues))))
	pickInt(&l.MaxGroups, DefaultMaxGroups)
	pickInt(&l.MaxGroupsPerUID, int(share(int64(l.MaxGroups))))
	pick(&l.MaxStoredMessages, DefaultMaxStoredMessages)
	pick(&l.MaxStoredBytes, halfOfMemory())
	pick(&l.MaxQueueMessages, l.MaxStoredMessages)
	pick(&l.MaxQueueBytes, l.MaxStoredBytes)
	pick(&l.MaxPrivateMessages, DefaultMaxPrivateMessages)
	pick(&l.MaxPrivateBytes, l.MaxStoredBytes)
	pick(&l.MaxStoredPages, pagesForDescriptorLimit())
	pick(&l.MaxDescriptors, descriptorBudget())
	pick(&l.MaxDescriptorsPerUID, share(l.MaxDescriptors))
	pick(&l.MaxStoredMessagesPerUID, share(l.MaxStoredMessages))
	pick(&l.MaxStoredBytesPerUID, share(l.MaxStoredBytes))
	pick(&l.MaxStoredPagesPerUID, share(l.MaxStoredPages))
	pick(&l.MaxWaitingTotal, DefaultMaxWaitingTotal)
	pick(&l.MaxWaitingPerUID, share(l.MaxWaitingTotal))
}

// descriptorBudget returns the soft descriptor limit less
// DescriptorReserve, or no limit if it cannot be read.
func descriptorBudget() int64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY || rl.Cur > uint64(unlimited) {
		return unlimited
	}
	return max(int64(rl.Cur)-DescriptorReserve, 1)
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

// limitErr is a refusal because of a limit: its message says which, how
// full it is and what to do; limit names it for the Observer, by the
// machqd flag that sets it (or, for the few no flag sets, a name of its
// own: see limitf's callers).
type limitErr struct{ msg, limit string }

func (e *limitErr) Error() string { return e.msg }

// limitError is a refusal because of the limit the machqd flag flag
// sets: the message says which, how full it is and what to do.
func limitError(what string, have, max int64, flag, advice string) error {
	return &limitErr{fmt.Sprintf("%s: %d of %d (machqd --%s); %s", what, have, max, flag, advice), flag}
}

// limitf is a refusal because of limit, with a message of its own.
func limitf(limit, format string, args ...any) error {
	return &limitErr{fmt.Sprintf(format, args...), limit}
}

// limitOf returns the limit err is a refusal for, "" if it is none.
func limitOf(err error) string {
	var e *limitErr
	switch {
	case errors.As(err, &e):
		return e.limit
	case errors.Is(err, durable.ErrNoSpace):
		return "disk-space"
	}
	return ""
}
