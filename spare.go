package machq

import (
	"fmt"
)

// DefaultSparePage is the default for WithSparePage: the largest spare
// page a client keeps ready, 256 MiB.
const DefaultSparePage = 256 << 20

// WithSparePage sets the largest spare page the client keeps ready for
// out-of-line sends. Once a client sends payloads above the inline
// threshold less than a second apart, it allocates, in the background, a
// memfd of the size last sent; the next send of at most that size writes
// into those pages instead of allocating and zeroing fresh ones while the
// caller waits, which is most of the cost of a large send
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
