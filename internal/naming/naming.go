// Package naming maps machq service names onto socket paths and checks a
// server in under its name, the Linux counterpart of registering a Mach
// port with the bootstrap server. It also holds the naming rules for
// queues, which clients and servers both enforce.
package naming

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// DefaultService is the service name used when none is given.
const DefaultService = "machq"

// MaxName is the longest queue or service name.
const MaxName = 255

// ErrBadName reports a queue or service name that breaks the naming rules.
var ErrBadName = errors.New("naming: invalid name")

// ValidQueueName checks that name is 1 to 255 bytes of A-Z, a-z, 0-9,
// '.', '_' and '-'.
func ValidQueueName(name []byte) error {
	if len(name) == 0 || len(name) > MaxName {
		return fmt.Errorf("%w: queue name is %d bytes; it must be 1 to %d characters from [A-Za-z0-9._-]", ErrBadName, len(name), MaxName)
	}
	for i, c := range name {
		if !nameByte(c) {
			return fmt.Errorf("%w: queue name %q has %s at byte %d; use only [A-Za-z0-9._-]", ErrBadName, truncate(name), quoteByte(c), i)
		}
	}
	return nil
}

// ValidServiceName checks a service name: the queue-name rules, and not
// "." or "..", since the name becomes a file name.
func ValidServiceName(name string) error {
	if name == "." || name == ".." {
		return fmt.Errorf("%w: service name %q is not allowed", ErrBadName, name)
	}
	if len(name) == 0 || len(name) > MaxName {
		return fmt.Errorf("%w: service name is %d bytes; it must be 1 to %d characters from [A-Za-z0-9._-]", ErrBadName, len(name), MaxName)
	}
	for i := 0; i < len(name); i++ {
		if !nameByte(name[i]) {
			return fmt.Errorf("%w: service name %q has %s at byte %d; use only [A-Za-z0-9._-]", ErrBadName, name, quoteByte(name[i]), i)
		}
	}
	return nil
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// quoteByte shows an ASCII byte as a Go character literal and any other
// byte in hex, since alone it is not a character.
func quoteByte(c byte) string {
	if c < 0x80 {
		return fmt.Sprintf("%q", c)
	}
	return fmt.Sprintf("0x%02x", c)
}

func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}

// RuntimeDir returns the directory that holds service sockets:
// $MACHQ_RUNTIME_DIR, else $XDG_RUNTIME_DIR/machq, else /run/machq for
// root, else machq-UID under the temporary directory. CheckIn creates it
// if missing, and refuses one that is a symbolic link, belongs to another
// user, or that group or others may write to, or that has a directory
// above it another user could change.
func RuntimeDir() string {
	if d := os.Getenv("MACHQ_RUNTIME_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "machq")
	}
	if os.Geteuid() == 0 {
		return "/run/machq"
	}
	return filepath.Join(os.TempDir(), "machq-"+strconv.Itoa(os.Geteuid()))
}

// MaxSocketPath is the longest socket path Linux accepts: sun_path holds
// 108 bytes including the terminating NUL.
const MaxSocketPath = 107

// SocketPath returns the socket path of the service called name.
func SocketPath(name string) (string, error) {
	if err := ValidServiceName(name); err != nil {
		return "", err
	}
	p := filepath.Join(RuntimeDir(), name+".sock")
	if err := checkPathLen(p); err != nil {
		return "", err
	}
	return p, nil
}

func checkPathLen(p string) error {
	if len(p) > MaxSocketPath {
		return fmt.Errorf("%w: socket path %s is %d bytes; Unix sockets allow at most %d: use a shorter name, MACHQ_RUNTIME_DIR or --socket", ErrBadName, p, len(p), MaxSocketPath)
	}
	return nil
}

// Resolve turns a client's target into a socket path: a target containing
// a slash is a path, anything else a service name.
func Resolve(target string) (string, error) {
	if target == "" {
		target = DefaultService
	}
	for i := 0; i < len(target); i++ {
		if target[i] == '/' {
			return target, nil
		}
	}
	return SocketPath(target)
}
