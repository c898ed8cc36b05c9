package machq

import (
	"fmt"
)

// DefaultSparePage is the default for WithSparePage, and what NewPage
// keeps ready: 256 MiB of spare pages at most.
const DefaultSparePage = 256 << 20

// WithSparePage sets how many bytes of spare pages the client keeps ready
// for out-of-line sends. Once a client sends payloads above the inline
// threshold less than a second apart, it allocates, in the background,
// memfds of the size last sent (up to two, at most maxBytes in all); the
// next send of at most that size writes into those pages instead of
// allocating and zeroing fresh ones while the caller waits, which is most
// of the cost of a large send (docs/PERFORMANCE.md). Spares are freed
// after a second without sends, and an occasional large send allocates
// nothing ahead. 0 turns spare pages off; the default is
// DefaultSparePage.
func WithSparePage(maxBytes int64) Option {
	return func(o *options) error {
		if maxBytes < 0 {
			return fmt.Errorf("machq: spare page limit %d is negative", maxBytes)
		}
		o.spare = maxBytes
		return nil
	}
}
