package machq

import (
	"crypto/sha256"
	"fmt"
)

// Digest names the algorithm a sender uses to fingerprint each payload so
// that the receiver can verify it.
type Digest uint8

// Digest algorithms.
const (
	// DigestNone sends no digest; nothing is verified. Use it only to
	// measure transport cost or when the payload carries its own check.
	DigestNone Digest = 0
	// DigestSHA256 is SHA-256, the original server's choice and the default.
	DigestSHA256 Digest = 1
)

// String returns the algorithm's name.
func (d Digest) String() string {
	switch d {
	case DigestNone:
		return "none"
	case DigestSHA256:
		return "sha256"
	}
	return fmt.Sprintf("Digest(%d)", uint8(d))
}

// sum returns the digest of b, or nil for DigestNone.
func (d Digest) sum(b []byte) ([]byte, error) {
	switch d {
	case DigestNone:
		return nil, nil
	case DigestSHA256:
		s := sha256.Sum256(b)
		return s[:], nil
	}
	return nil, fmt.Errorf("machq: unknown digest algorithm %d", uint8(d))
}
