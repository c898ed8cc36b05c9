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
	// ReplacedStale is set when a socket file left by a server that died
	// was removed to make way.
	ReplacedStale bool
	lock          *os.File
}

// Options adjust CheckInWith.
type Options struct {
	// Shared opens the socket to every user (mode 0666), and lets every
	// user through the directories CheckInWith creates (mode 0711
	// instead of 0700): the server then decides who it serves, from each
	// peer's credentials.
	Shared bool
	// NoCreate refuses a socket path whose directory does not exist,
	// instead of creating it.
	NoCreate bool
}

// CheckIn is CheckInWith with no options: a socket private to its user.
func CheckIn(path string) (*Registration, error) { return CheckInWith(path, Options{}) }

// CheckInWith claims path for a server: it creates the parent directory
// and any missing ancestor (mode 0700) unless o.NoCreate, takes an
// exclusive lock on path+".lock", replaces a stale socket file left by a
// server that died, and listens on path with mode 0600. If a live server
// holds the path it fails with an error wrapping ErrNameInUse that gives
// the holder's pid when known.
func CheckInWith(path string, o Options) (*Registration, error) {
	if err := checkPathLen(path); err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	if o.NoCreate {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("naming: directory %s does not exist; create it or choose another socket path", dir)
		}
	} else {
		dirMode := os.FileMode(0o700)
		if o.Shared {
			dirMode = 0o711
		}
		if err := ensureDir(dir, dirMode); err != nil {
			return nil, err
		}
	}
	lock, err := lockPath(path + ".lock")
	if err != nil {
		return nil, err
	}
	// We hold the lock, so no other machqd owns path. Something might
	// still answer there (a server that does not take the lock); check
	// before removing what is there.
	stale := false
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
		stale = true
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		unlock(lock, path+".lock")
		return nil, fmt.Errorf("naming: listen on %s: %w", path, err)
	}
	// A directory we created is private already; the mode guards sockets
	// placed in shared directories with --socket. A shared socket lets
	// the kernel pass every user through, and the server decides.
	mode := os.FileMode(0o600)
	if o.Shared {
		mode = 0o666
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		unlock(lock, path+".lock")
		return nil, fmt.Errorf("naming: set the mode of %s: %w", path, err)
	}
	l.SetUnlinkOnClose(true)
	return &Registration{Listener: l, Path: path, ReplacedStale: stale, lock: lock}, nil
}

// Release gives the path up: the lock is dropped and its file removed.
// Close the listener first; closing it removes the socket file.
func (r *Registration) Release() {
	if r.lock != nil {
		unlock(r.lock, r.Path+".lock")
		r.lock = nil
	}
}

// ensureDir creates dir, and any missing ancestor, with mode, unless it
// exists; an existing dir is checked, not changed.
func ensureDir(dir string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dir), mode); err != nil {
		return fmt.Errorf("naming: create runtime directory: %w", err)
	}
	// Mkdir, not MkdirAll: if someone else creates dir first, we must
	// notice and check it.
	err := os.Mkdir(dir, mode)
	if err == nil {
		// Mkdir applies the umask; the mode must hold regardless.
		if err := os.Chmod(dir, mode); err != nil {
			return fmt.Errorf("naming: set the mode of %s: %w", dir, err)
		}
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
	// or another user could plant a socket there: nobody else may write
	// to it (a shared server's directory lets others through, 0711).
	if strings.HasPrefix(filepath.Base(dir), "machq-") {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && (int(sys.Uid) != os.Geteuid() || st.Mode().Perm()&0o022 != 0) {
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
