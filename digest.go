package machq

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"

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

// WithDigest sets the digest computed over every payload sent; the default
// is DigestSHA256. Received payloads are verified with whatever algorithm
// their sender chose.
func WithDigest(d Digest) Option {
	return func(o *options) error {
		if _, err := d.Sum(nil); err != nil {
			return err
		}
		o.digest = d
		return nil
	}
}

// verifiable are the algorithms a client can verify.
var verifiable = []Digest{DigestSHA256, DigestBLAKE3}

// WithRequiredDigest makes a consumer insist on integrity. Without it a
// message whose sender chose DigestNone carries nothing to verify, and
// is accepted as it is. With it, every retrieved message must carry a
// digest of one of algs (with no algs, of any algorithm this client can
// verify: DigestSHA256 or DigestBLAKE3), which is then verified as
// usual; a message that carries none, or one of another algorithm,
// fails like a tampered one, with a *TamperedError (wrapping
// ErrTampered) saying what came. That message has left its queue already
// (delivery is at most once): the retrieve returns it with the error, as
// it returns a tampered one, for the caller to inspect or drop, and Close.
// DigestNone and unknown algorithms are refused in algs. When given more
// than once, the last one counts.
func WithRequiredDigest(algs ...Digest) Option {
	return func(o *options) error {
		if len(algs) == 0 {
			o.accept = verifiable
			return nil
		}
		for _, d := range algs {
			if !slices.Contains(verifiable, d) {
				return fmt.Errorf("machq: WithRequiredDigest(%s): require one of %s", d, digestNames(verifiable))
			}
		}
		o.accept = slices.Clone(algs)
		return nil
	}
}

// digestNames is "sha256 or blake3".
func digestNames(ds []Digest) string {
	names := make([]string, 0, len(ds))
	for _, d := range ds {
		if s := d.String(); !slices.Contains(names, s) {
			names = append(names, s)
		}
	}
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}
