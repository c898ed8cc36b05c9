package machq

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/naming"
	"github.com/machq/machq/internal/wire"
)

// What a client verifies before it sends anything, so that it never hands
// a payload to a server another user runs, whoever created the socket or
// the directory it is found in:
//
//   - for a service name (a target without '/'): the runtime directory
//     is a directory, not a symbolic link, owned by a trusted uid and
//     writable by nobody else (0700, or 0711 for a shared server); the
//     socket file in it is a socket, not a symbolic link, owned by a
//     trusted uid. A socket path is the caller's own choice: its
//     directories are not checked.
//   - for every target, once connected: the server's credentials
//     (SO_PEERCRED, recorded by the kernel when the server listened) name
//     a trusted uid.
//
// The trusted uids are root, this process's effective uid, and those
// given with WithServerUID. Root is trusted because it can read every
// process's memory anyway; the checks keep other users out, not root.

// WithServerUID trusts a server that runs as uid, besides root and this
// process's effective uid, which are always trusted: Dial then accepts
// such a server, and a runtime directory or socket file that uid owns.
// Use it to reach another user's server, shared with machqd --allow-uid.
// It may be given more than once.
func WithServerUID(uid uint32) Option {
	return func(o *options) error {
		o.serverUIDs = append(o.serverUIDs, uid)
		return nil
	}
}

// trust is the set of uids a client trusts to run its server.
type trust struct {
	self  uint32 // the effective uid of this process
	extra []uint32
}

func (o *options) trust() trust {
	return trust{self: uint32(os.Geteuid()), extra: o.serverUIDs}
}

func (t trust) has(uid uint32) bool {
	return uid == 0 || uid == t.self || slices.Contains(t.extra, uid)
}

// String lists the trusted uids for an error message: "uid 1000 or
// root".
func (t trust) String() string {
	var ids []string
	for _, uid := range append([]uint32{t.self}, t.extra...) {
		if s := uidName(uid); uid != 0 && !slices.Contains(ids, s) {
			ids = append(ids, s)
		}
	}
	if len(ids) == 0 {
		return "root"
	}
	return strings.Join(ids, ", ") + " or root"
}

// uidName is "uid N (NAME)", or "uid N" when N has no name.
func uidName(uid uint32) string {
	s := "uid " + strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil && u.Username != "" {
		s += " (" + u.Username + ")"
	}
	return s
}

// untrusted returns an error wrapping ErrUntrustedServer.
func untrusted(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUntrustedServer, fmt.Sprintf(format, args...))
}

// trustAdvice says how to trust the server of uid when it is trusted.
func trustAdvice(uid uint32) string {
	return fmt.Sprintf("if that user's server is trusted, pass --server-uid %d (WithServerUID)", uid)
}

// dialTrusted connects to target as Dial describes, after checking the
// runtime directory and socket file of a service name, and returns the
// connection and the socket path once the server's credentials are
// checked too. Nothing is written on the connection.
func dialTrusted(ctx context.Context, target string, o *options) (*net.UnixConn, string, error) {
	path, err := naming.Resolve(target)
	if err != nil {
		return nil, "", fmt.Errorf("machq: %w", err)
	}
	t := o.trust()
	service := !strings.Contains(target, "/")
	if service {
		if err := checkRuntimeDir(filepath.Dir(path), t); err != nil {
			return nil, "", err
		}
		if err := checkSocketFile(path, t); err != nil {
			return nil, "", err
		}
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, "", fmt.Errorf("%w at %s (is machqd running? start it with: machqd --socket %s)", ErrNoServer, path, path)
		}
		return nil, "", fmt.Errorf("machq: connect to %s: %w", path, err)
	}
	uc := nc.(*net.UnixConn)
	if err := checkPeer(uc, path, service, t); err != nil {
		uc.Close()
		return nil, "", err
	}
	return uc, path, nil
}

// checkRuntimeDir checks the directory holding a service's socket. One
// that does not exist holds no server, which connecting reports.
func checkRuntimeDir(dir string, t trust) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("machq: check runtime directory %s: %w", dir, os.NewSyscallError("lstat", err))
	}
	mode := st.Mode & 0o7777
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		to, _ := os.Readlink(dir)
		return untrusted("runtime directory %s is a symbolic link (to %s), which lets whoever controls the link or its target swap the server away under its clients; nothing was sent. "+
			"Remove the link (machqd creates the directory itself), or set MACHQ_RUNTIME_DIR to a real directory of your own", dir, to)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return nil // connecting fails: not a directory
	case !t.has(st.Uid):
		return untrusted("runtime directory %s belongs to %s (mode %04o), not to %s: another user may have created it to receive what you send; nothing was sent. "+
			"Remove it if it is not yours, or set MACHQ_RUNTIME_DIR or XDG_RUNTIME_DIR to a directory of your own; %s", dir, uidName(st.Uid), mode, t, trustAdvice(st.Uid))
	case mode&0o022 != 0:
		return untrusted("runtime directory %s (owner %s, mode %04o) is writable by other users, who could put a socket of their own in it; a shared directory such as /tmp is never a runtime directory; nothing was sent. "+
			"Run chmod go-w %s if it is yours, or set MACHQ_RUNTIME_DIR or XDG_RUNTIME_DIR to a private directory", dir, uidName(st.Uid), mode, dir)
	}
	return nil
}

// checkSocketFile checks a service's socket file, which its server (or
// the service manager, as root) created. Anything but a socket or a
// symbolic link is left for connecting to refuse.
func checkSocketFile(path string, t trust) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return nil // connecting says why
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		to, _ := os.Readlink(path)
		return untrusted("socket %s is a symbolic link (to %s), but a server creates its socket itself; nothing was sent. "+
			"Remove the link, or give the socket's real path (--socket PATH) if you trust it", path, to)
	case st.Mode&unix.S_IFMT == unix.S_IFSOCK && !t.has(st.Uid):
		return untrusted("socket %s belongs to %s, not to %s: another user's server may be listening there; nothing was sent. "+
			"Stop that server and remove the socket; %s", path, uidName(st.Uid), t, trustAdvice(st.Uid))
	}
	return nil
}

// checkPeer checks the credentials the kernel recorded for the server
// when it listened; service says the path was found from a service name.
func checkPeer(uc *net.UnixConn, path string, service bool, t trust) error {
	cred, err := wire.PeerCred(uc)
	if err != nil {
		return fmt.Errorf("%w: cannot read the credentials of the server at %s (%v), so it cannot be trusted; nothing was sent", ErrUntrustedServer, path, err)
	}
	if t.has(cred.Uid) {
		return nil
	}
	what := fmt.Sprintf("the server at %s runs as %s (pid %d), not as %s; nothing was sent to it", path, uidName(cred.Uid), cred.Pid, t)
	if service {
		return untrusted("%s. Another user may have started it where your server belongs: stop it and remove %s, or set MACHQ_RUNTIME_DIR or XDG_RUNTIME_DIR to a directory of your own; %s",
			what, path, trustAdvice(cred.Uid))
	}
	return untrusted("%s. If that user's server is trusted, pass --server-uid %d (WithServerUID)", what, cred.Uid)
}
