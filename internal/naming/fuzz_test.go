package naming_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/machq/machq/internal/naming"
)

// FuzzNames checks the name rules on arbitrary bytes, as a server reads
// them off the wire: no panic, a refusal wraps ErrBadName and says what is
// wrong, and what is accepted is exactly 1 to 255 bytes of
// [A-Za-z0-9._-].
func FuzzNames(f *testing.F) {
	for _, s := range []string{"jobs", "", ".", "..", "a/b", "a b", "ünïcode", strings.Repeat("x", 255), strings.Repeat("x", 256), "\x00", "-leading", "a\nb"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, name []byte) {
		want := len(name) >= 1 && len(name) <= 255
		for _, c := range name {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				want = false
			}
		}
		err := naming.ValidQueueName(name)
		if (err == nil) != want {
			t.Fatalf("ValidQueueName(%q) = %v, want accepted %v", name, err, want)
		}
		if err != nil && (!errors.Is(err, naming.ErrBadName) || len(err.Error()) <= len(naming.ErrBadName.Error())) {
			t.Fatalf("ValidQueueName(%q): %v does not wrap ErrBadName with a reason", name, err)
		}
		// A service name that passes must make a socket path, or fail
		// with a clear error (too long for sun_path), never panic.
		if naming.ValidServiceName(string(name)) == nil {
			if _, err := naming.SocketPath(string(name)); err != nil && err.Error() == "" {
				t.Fatalf("SocketPath(%q): empty error", name)
			}
		}
	})
}
