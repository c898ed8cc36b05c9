package machq

import (
	"fmt"
	"time"

	"github.com/machq/machq/internal/wire"
)

// DefaultInlineThreshold is the largest payload, in bytes, that travels
// inside a frame by default; larger ones travel as sealed memfds.
// docs/PERFORMANCE.md gives the measurements behind it.
const DefaultInlineThreshold = 64 << 10

// Option configures a Client.
type Option func(*options) error

type options struct {
	inline     int
	digest     Digest
	accept     []Digest // WithRequiredDigest: the digests accepted; nil: any
	spare      int64
	owned      bool
	serverUIDs []uint32 // WithServerUID
	waitRoom   bool     // WithWaitForRoom
	spin       time.Duration
}

// WithSpin makes a caller waiting for the server's answer keep trying to
// read it, on its own CPU, for up to d before it parks: an answer that
// comes within microseconds is then taken without the wake-up of a
// parked goroutine, which costs more than the answer itself on small
// requests (docs/PERFORMANCE.md). A client whose spins found nothing
// three times in a row (a slow server, a busy machine, a server woken on
// this very CPU) stops spinning and tries again once every 64 waits, and
// at most half as many of a process's clients as it has CPUs spin at
// once. It trades CPU for latency; 0, the default, turns it off.
func WithSpin(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("machq: spin %v is negative", d)
		}
		o.spin = d
		return nil
	}
}

// WithWaitForRoom makes every store into a full queue wait for room
// instead of failing with ErrLimit (backpressure): the server keeps the
// store, first come first served, and stores it as soon as a message
// leaves the queue. If the caller's context ends first, the client
// cancels the wait and reports the context's error; a store the server
// made just then is reported as done. Only the queue's own limits
// (--max-queue-*, --max-private-*) are waited on; the server's totals and
// per-user quotas still fail at once. Servers before protocol version 3
// ignore it.
func WithWaitForRoom() Option {
	return func(o *options) error {
		o.waitRoom = true
		return nil
	}
}

// WithInlineThreshold sets the largest payload sent inline; larger
// payloads travel as sealed memfds. 0 sends every non-empty payload as a
// memfd; the server's own inline limit (at most 1 MiB) caps n.
func WithInlineThreshold(n int) Option {
	return func(o *options) error {
		if n < 0 || n > wire.MaxInline {
			return fmt.Errorf("machq: inline threshold %d is outside [0, %d]", n, wire.MaxInline)
		}
		o.inline = n
		return nil
	}
}

// WithOwnedQueues makes every named queue this client creates (by storing
// into, or waiting on, a name not in use yet) its user's alone: other
// users' requests on it fail with an error wrapping ErrDenied. A queue
// that already exists, or that the server removed while idle and still
// remembers, is used as it is. Root may use any queue.
func WithOwnedQueues() Option {
	return func(o *options) error {
		o.owned = true
		return nil
	}
}
