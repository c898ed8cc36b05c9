package machq

import (
	"crypto/sha256"
	"fmt"

	"github.com/zeebo/blake3"
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
	// DigestBLAKE3 is BLAKE3 with a 32-byte output: a cryptographic
	// digest about twice as fast as SHA-256 on large payloads on x86-64
	// with AVX2 (docs/PERFORMANCE.md has the measurements), slower on
	// payloads of a few hundred bytes.
	DigestBLAKE3 Digest = 2
)

// String returns the algorithm's name: "none", "sha256" or "blake3".
func (d Digest) String() string {
	switch d {
	case DigestNone:
		return "none"
	case DigestSHA256:
		return "sha256"
	case DigestBLAKE3:
		return "blake3"
	}
	return fmt.Sprintf("Digest(%d)", uint8(d))
}

// ParseDigest returns the algorithm called name, as String spells it.
func ParseDigest(name string) (Digest, error) {
	for _, d := range []Digest{DigestNone, DigestSHA256, DigestBLAKE3} {
		if d.String() == name {
			return d, nil
		}
	}
	return 0, fmt.Errorf("machq: unknown digest %q: use sha256, blake3 or none", name)
}

// Sum returns the digest of b: nil for DigestNone, 32 bytes otherwise.
// An unknown algorithm is an error.
func (d Digest) Sum(b []byte) ([]byte, error) {
	switch d {
	case DigestNone:
		return nil, nil
	case DigestSHA256:
		s := sha256.Sum256(b)
		return s[:], nil
	case DigestBLAKE3:
		s := blake3.Sum256(b)
		return s[:], nil
	}
	return nil, fmt.Errorf("machq: unknown digest algorithm %d", uint8(d))
}
