package naming

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNameInUse reports a socket path that a live server already holds.
var ErrNameInUse = errors.New("naming: name is in use by a running server")

// Registration is a server's hold on a socket path: the listening socket
// and an exclusive lock on PATH.lock that keeps a second server away.
type Registration struct {
	Listener *net.UnixListener
	Path     string
	lock     *os.File
}

// CheckIn claims path for a server: it creates the parent directory (mode
// 0700) if missing, takes an exclusive lock on path+".lock", replaces a
// stale socket file left by a server that died, and listens on path with
// mode 0600. If a live server holds the path it fails with an error
// wrapping ErrNameInUse that gives the holder's pid when known.
func CheckIn(path string) (*Registration, error) {
	if err := checkPathLen(path); err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	if err := ensureDir(dir); err != nil {
		return nil, err
	}
	lock, err := lockPath(path + ".lock")
	if err != nil {
		return nil, err
	}
	// We hold the lock, so no other machqd owns path. Something might
	// still answer there (a server that does not take the lock); check
	// before removing what is there.
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			unlock(lock, path+".lock")
			return nil, fmt.Errorf("naming: %s exists and is not a socket; choose another --socket path", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			unlock(lock, path+".lock")
			return nil, fmt.Errorf("%w: a server answers on %s; stop it or choose another --name or --socket", ErrNameInUse, path)
		}
		if err := os.Remove(path); err != nil {
			unlock(lock, path+".lock")
			return nil, fmt.Errorf("naming: cannot remove stale socket %s: %w", path, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		unlock(lock, path+".lock")
		return nil, fmt.Errorf("naming: listen on %s: %w", path, err)
	}
	// The directory is private already; the mode guards sockets placed
	// in shared directories with --socket.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		unlock(lock, path+".lock")
		return nil, fmt.Errorf("naming: restrict %s: %w", path, err)
	}
	l.SetUnlinkOnClose(true)
	return &Registration{Listener: l, Path: path, lock: lock}, nil
}

// Release gives the path up: the lock is dropped and its file removed.
// Close the listener first; closing it removes the socket file.
func (r *Registration) Release() {
	if r.lock != nil {
		unlock(r.lock, r.Path+".lock")
		r.lock = nil
	}
}

func ensureDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("naming: create runtime directory: %w", err)
	}
	// Mkdir, not MkdirAll: if someone else creates dir first, we must
	// notice and check it.
	err := os.Mkdir(dir, 0o700)
	if err == nil {
		return nil
	}
	if !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("naming: create runtime directory: %w", err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("naming: runtime directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("naming: %s is not a directory; set MACHQ_RUNTIME_DIR or use --socket", dir)
	}
	// A directory under a shared temporary directory must be ours alone,
	// or another user could plant a socket there.
	if strings.HasPrefix(filepath.Base(dir), "machq-") {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && (int(sys.Uid) != os.Geteuid() || st.Mode().Perm()&0o077 != 0) {
			return fmt.Errorf("naming: %s is not private to uid %d (owner %d, mode %v); remove it or set MACHQ_RUNTIME_DIR", dir, os.Geteuid(), sys.Uid, st.Mode().Perm())
		}
	}
	return nil
}

// lockPath opens and exclusively locks the lock file at p, retrying if the
// file it locked was replaced meanwhile, and records our pid in it.
func lockPath(p string) (*os.File, error) {
	for range 10 {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("naming: open lock %s: %w", p, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			holder := readPID(f)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				who := "another machqd"
				if holder > 0 {
					who = "machqd pid " + strconv.Itoa(holder)
				}
				return nil, fmt.Errorf("%w: %s holds %s; stop it or choose another --name or --socket", ErrNameInUse, who, strings.TrimSuffix(p, ".lock"))
			}
			return nil, fmt.Errorf("naming: lock %s: %w", p, os.NewSyscallError("flock", err))
		}
		// The holder before us may have removed the file between our
		// open and our lock; then we locked a file nobody else will see.
		var a, b unix.Stat_t
		if unix.Fstat(int(f.Fd()), &a) == nil && unix.Stat(p, &b) == nil && a.Ino == b.Ino && a.Dev == b.Dev {
			f.Truncate(0)
			f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("naming: lock %s keeps being replaced; is another server starting and stopping?", p)
}

func unlock(f *os.File, p string) {
	os.Remove(p)
	f.Close()
}

func readPID(f *os.File) int {
	b := make([]byte, 16)
	n, _ := f.ReadAt(b, 0)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	return pid
}
