package naming

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrNameInUse reports a socket path that a live server already holds.
var ErrNameInUse = errors.New("naming: name is in use by a running server")

// Registration is a server's hold on a socket path: the listening socket
// and an exclusive lock on PATH.lock that keeps a second server away.
type Registration struct {
	// Listener listens on the socket. Its address is the socket's path
	// with no symbolic link on it, which may differ from Path. Closing
	// it leaves the socket file; Release removes it.
	Listener *net.UnixListener
	// Path is the socket path CheckInWith was given.
	Path string
	// ReplacedStale is set when a socket file left by a server that died
	// was removed to make way.
	ReplacedStale bool
	// Warnings describe what CheckInWith accepted but an operator should
	// know about, one sentence each: a sticky directory other users may
	// write to, chosen with Options.ExplicitPath. A server logs them.
	Warnings []string

	dir    *os.File // the socket's directory, as checked: later steps work in it
	name   string   // the socket's name in dir
	sock   fileID   // the socket file bound, the only one Release removes
	lock   *os.File
	lockID fileID
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
	// ExplicitPath says the socket path was chosen by the operator (as
	// machqd's --socket), not derived from a service name. The socket's
	// directory may then belong to root as well as to the server's user,
	// and may be a sticky directory that others can write to, like /tmp,
	// which is accepted with a warning. Without it the directory must
	// belong to the server's user and nobody else may write to it.
	ExplicitPath bool
}

// CheckIn is CheckInWith with no options: a socket private to its user.
func CheckIn(path string) (*Registration, error) { return CheckInWith(path, Options{}) }

// CheckInWith claims path for a server. It creates the parent directory
// and any missing ancestor (mode 0700) unless o.NoCreate, and opens the
// directory without following a symbolic link there. It refuses a
// directory that another user could change: one owned by someone else,
// or writable by group or others (a sticky one is accepted, with a
// warning, when o.ExplicitPath), or with such a directory above it. Then
// it takes an exclusive lock on path+".lock", replaces a stale socket
// file left by a server that died, and listens on path with mode 0600
// (0666 when o.Shared), a mode the socket has from the moment it exists.
// Every file it opens, checks or removes is named relative to the
// directory it checked, and none through a symbolic link; the socket is
// bound at that directory's real path (when it fits in a socket address)
// and found there afterwards, or the check-in fails. What it accepted
// with a warning is in the Registration's Warnings. If a live
// server holds the path it fails with an error wrapping ErrNameInUse
// that gives the holder's pid when known.
func CheckInWith(path string, o Options) (*Registration, error) {
	if err := checkPathLen(path); err != nil {
		return nil, err
	}
	name := filepath.Base(path)
	if strings.HasSuffix(path, "/") || name == "." || name == ".." || name == "/" {
		return nil, fmt.Errorf("naming: socket path %s names a directory; give the socket's file name", path)
	}
	dirPath := filepath.Dir(path)
	dir, created, err := openDir(dirPath, o)
	if err != nil {
		return nil, err
	}
	r := &Registration{Path: path, dir: dir, name: name}
	fail := func(err error) (*Registration, error) {
		if r.lock != nil {
			r.unlock()
		}
		dir.Close()
		return nil, err
	}
	if !created {
		if r.Warnings, err = checkDir(dir, dirPath, o); err != nil {
			return fail(err)
		}
	} else if err := checkAncestors(dir, dirPath, o); err != nil {
		return fail(err)
	}
	// Bind where the directory checked is, by its path as the kernel
	// knows it (no symbolic links, and every directory on it checked
	// above), when that fits in sun_path; else by the path given, and
	// the socket is looked for in the directory checked afterwards.
	bindPath := path
	if real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(dir.Fd()))); err == nil && filepath.IsAbs(real) && !strings.HasSuffix(real, " (deleted)") {
		if p := filepath.Join(real, name); len(p) <= MaxSocketPath {
			bindPath = p
		}
	}
	if r.lock, r.lockID, err = lockPath(dir, name+".lock", path+".lock"); err != nil {
		return fail(err)
	}
	// We hold the lock, so no other machqd owns path. Something might
	// still answer there (a server that does not take the lock); check
	// before removing what is there.
	if found, err := statAt(dir, name); err == nil {
		if found.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return fail(fmt.Errorf("naming: %s exists and is %s, not a socket; remove it or choose another --socket path", path, describe(dir, name, found)))
		}
		if c, err := net.Dial("unix", bindPath); err == nil {
			c.Close()
			return fail(fmt.Errorf("%w: a server answers on %s; stop it or choose another --name or --socket", ErrNameInUse, path))
		}
		if err := removeAt(dir, name, idOf(found)); err != nil {
			return fail(fmt.Errorf("naming: cannot remove stale socket %s: %w", path, err))
		}
		r.ReplacedStale = true
	} else if !errors.Is(err, unix.ENOENT) {
		return fail(fmt.Errorf("naming: look at %s: %w", path, err))
	}
	perm := uint32(0o600)
	if o.Shared {
		perm = 0o666
	}
	fd, err := bindUnix(bindPath, perm)
	if err != nil {
		if st, serr := statAt(dir, name); errors.Is(err, errNotListening) && serr == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK && int(st.Uid) == os.Geteuid() {
			removeAt(dir, name, idOf(st)) // the socket just bound
		}
		return fail(fmt.Errorf("naming: listen on %s: %w", path, err))
	}
	// Only root or we could have put something else there since the
	// bind, as nobody else may write to the directory, or a directory
	// above it was replaced meanwhile and the bind went elsewhere:
	// either way, give up.
	bound, err := statAt(dir, name)
	switch {
	case err != nil || bound.Mode&unix.S_IFMT != unix.S_IFSOCK || int(bound.Uid) != os.Geteuid():
		unix.Close(fd)
		what := "nothing"
		if err == nil {
			what = describe(dir, name, bound)
		}
		return fail(fmt.Errorf("naming: the socket just bound for %s is not in the directory checked, where %s is instead: someone able to write to %s or a directory above it changed them meanwhile; check who can, then start again", path, what, dirPath))
	case bound.Mode&0o7777 != perm:
		unix.Close(fd)
		removeAt(dir, name, idOf(bound))
		return fail(fmt.Errorf("naming: socket %s was created with mode %04o, not %04o; a security module may be changing modes: check its policy", path, bound.Mode&0o7777, perm))
	}
	r.sock = idOf(bound)
	l, err := listenerOf(fd, bindPath)
	if err != nil {
		removeAt(dir, name, r.sock)
		return fail(fmt.Errorf("naming: listen on %s: %w", path, err))
	}
	r.Listener = l
	return r, nil
}

// Release gives the path up: the socket file is removed if the listener
// is closed by then, and the lock and its file are dropped. Close the
// listener first; one closed after Release leaves its socket file
// behind, for the next server to replace as stale. Each file is removed
// only if it is still the one CheckInWith made. Release may be called
// more than once.
func (r *Registration) Release() {
	if r.dir == nil {
		return
	}
	if r.Listener != nil && listenerClosed(r.Listener) {
		removeAt(r.dir, r.name, r.sock)
	}
	if r.lock != nil {
		r.unlock()
	}
	r.dir.Close()
	r.dir = nil
}

// unlock removes the lock file, if it is still ours, and closes it,
// which drops the lock.
func (r *Registration) unlock() {
	removeAt(r.dir, r.name+".lock", r.lockID)
	r.lock.Close()
	r.lock = nil
}

// fileID tells one file from another.
type fileID struct{ dev, ino uint64 }

func idOf(st unix.Stat_t) fileID { return fileID{uint64(st.Dev), st.Ino} }

// statAt describes name in dir itself, not what a link there points to.
func statAt(dir *os.File, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// removeAt removes name from dir if it is still the file id. Only the
// directory's owner, root, or (in a sticky directory) the file's owner
// can swap the file between the check and the removal: no one else,
// since CheckInWith refused every other directory.
func removeAt(dir *os.File, name string, id fileID) error {
	st, err := statAt(dir, name)
	if err != nil {
		return err
	}
	if idOf(st) != id {
		return fmt.Errorf("%s was replaced meanwhile; try again", name)
	}
	return unix.Unlinkat(int(dir.Fd()), name, 0)
}

// describe says what st, found at name in dir, is.
func describe(dir *os.File, name string, st unix.Stat_t) string {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		buf := make([]byte, 4096)
		if n, err := unix.Readlinkat(int(dir.Fd()), name, buf); err == nil {
			return "a symbolic link to " + string(buf[:n])
		}
		return "a symbolic link"
	case unix.S_IFREG:
		return fmt.Sprintf("a regular file of uid %d", st.Uid)
	case unix.S_IFDIR:
		return fmt.Sprintf("a directory of uid %d", st.Uid)
	case unix.S_IFSOCK:
		return fmt.Sprintf("a socket of uid %d, mode %04o", st.Uid, st.Mode&0o7777)
	case unix.S_IFIFO:
		return "a FIFO"
	default:
		return "a device"
	}
}

// openDir opens dir, the socket's directory, creating it and its missing
// ancestors first unless o.NoCreate. A symbolic link is not followed
// at dir itself, nor at any directory openDir creates (someone could
// have put a link in its place). created reports that openDir made dir,
// with the mode CheckInWith gives it whatever the umask.
func openDir(dir string, o Options) (f *os.File, created bool, err error) {
	mode := uint32(0o700)
	if o.Shared {
		mode = 0o711
	}
	parent, base := filepath.Dir(dir), filepath.Base(dir)
	var pfd int
	if o.NoCreate {
		pfd, err = unix.Open(parent, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	} else {
		pfd, err = makeDirs(parent, mode)
	}
	if err != nil {
		if o.NoCreate && errors.Is(err, unix.ENOENT) {
			return nil, false, fmt.Errorf("naming: directory %s does not exist; create it or choose another socket path", dir)
		}
		if errors.Is(err, unix.ENOTDIR) {
			return nil, false, fmt.Errorf("naming: %s is not a directory; set MACHQ_RUNTIME_DIR or use --socket", parent)
		}
		return nil, false, fmt.Errorf("naming: create runtime directory %s: %w", parent, err)
	}
	defer unix.Close(pfd)
	fd, made, err := openChild(pfd, base, mode, !o.NoCreate, false)
	if err == nil {
		return os.NewFile(uintptr(fd), dir), made, nil
	}
	var st unix.Stat_t
	switch {
	case errors.Is(err, unix.ENOENT) && o.NoCreate:
		return nil, false, fmt.Errorf("naming: directory %s does not exist; create it or choose another socket path", dir)
	case (errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP)) && unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK:
		target := make([]byte, 4096)
		n, _ := unix.Readlinkat(pfd, base, target)
		return nil, false, fmt.Errorf("naming: socket directory %s is a symbolic link (to %s, owned by uid %d); a link is not followed there, since whoever can change it could move the socket: %s",
			dir, target[:max(n, 0)], st.Uid, advice(o, "remove the link", "give the directory it points to"))
	case errors.Is(err, unix.ENOTDIR):
		return nil, false, fmt.Errorf("naming: %s is not a directory; set MACHQ_RUNTIME_DIR or use --socket", dir)
	}
	return nil, false, fmt.Errorf("naming: open the socket directory %s: %w", dir, err)
}

// makeDirs opens p, creating each missing directory on it with mode, and
// returns a descriptor of it. Directories that exist are entered as
// they are, links and all: checkAncestors judges where they lead.
func makeDirs(p string, mode uint32) (int, error) {
	start := "."
	if filepath.IsAbs(p) {
		start = "/"
	}
	fd, err := unix.Open(start, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	for _, c := range strings.Split(p, "/") {
		if c == "" || c == "." {
			continue
		}
		next, _, err := openChild(fd, c, mode, true, true)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// openChild opens the directory name in the directory pfd, first
// creating it with mode if it is missing and create is set. It follows a
// link at name only if follow is set and name existed. A directory it
// creates has mode from the start, whatever the umask, and is opened
// without following a link and checked to be that one.
func openChild(pfd int, name string, mode uint32, create, follow bool) (fd int, made bool, err error) {
	flags := unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if follow {
		flags &^= unix.O_NOFOLLOW
	}
	fd, err = unix.Openat(pfd, name, flags, 0)
	if err == nil || !create || !errors.Is(err, unix.ENOENT) {
		return fd, false, err
	}
	if _, err := withUmask(mode, func() (int, error) { return 0, unix.Mkdirat(pfd, name, mode) }); err != nil {
		if errors.Is(err, unix.EEXIST) { // made by someone else just now: taken as found
			fd, err = unix.Openat(pfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			return fd, false, err
		}
		return -1, false, err
	}
	fd, err = unix.Openat(pfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, false, err
	}
	if int(st.Uid) != os.Geteuid() {
		unix.Close(fd)
		return -1, false, fmt.Errorf("directory %s, just created, is now one of uid %d: was it replaced?", name, st.Uid)
	}
	if st.Mode&0o777 != mode {
		// A default ACL on pfd decides the mode, not the umask: set it
		// through a descriptor of this very directory.
		rd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		var again unix.Stat_t
		if err == nil && unix.Fstat(rd, &again) == nil && idOf(again) == idOf(st) {
			err = unix.Fchmod(rd, mode)
		} else if err == nil {
			err = fmt.Errorf("directory %s was replaced as it was created", name)
		}
		if rd >= 0 {
			unix.Close(rd)
		}
		if err != nil {
			unix.Close(fd)
			return -1, false, fmt.Errorf("set the mode of %s, just created with %04o: %w", name, st.Mode&0o777, err)
		}
	}
	return fd, true, nil
}

// advice is what to do about an unsafe directory: for a service name's
// socket, act (on the runtime directory) or choose another runtime
// directory; for a path the operator chose, explicit or choose another
// path.
func advice(o Options, act, explicit string) string {
	if o.ExplicitPath {
		return explicit + ", or choose a socket path in a directory of your own"
	}
	return act + ", or set MACHQ_RUNTIME_DIR to a directory of your own"
}

// checkDir checks that the socket's directory, which CheckInWith did not
// create, and every directory above it, are safe from other users.
func checkDir(dir *os.File, path string, o Options) (warnings []string, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(dir.Fd()), &st); err != nil {
		return nil, fmt.Errorf("naming: socket directory %s: %w", path, err)
	}
	euid := os.Geteuid()
	mode := st.Mode & 0o7777
	kind := "runtime directory"
	if o.ExplicitPath {
		kind = "socket directory"
	}
	if int(st.Uid) != euid && !(o.ExplicitPath && st.Uid == 0) {
		return nil, fmt.Errorf("naming: %s %s is not private to uid %d: its owner %d (mode %04o) could replace the socket; %s",
			kind, path, euid, st.Uid, mode, advice(o, "remove it", fmt.Sprintf("chown it to uid %d", euid)))
	}
	if mode&0o022 != 0 {
		if mode&unix.S_ISVTX != 0 && !o.ExplicitPath {
			return nil, fmt.Errorf("naming: %s %s is not private to uid %d: mode %04o (owner %d) lets other users write to it, to plant files and links where the socket and its lock go (the sticky bit only stops them moving others' files); %s, or give a socket path there explicitly (--socket)",
				kind, path, euid, mode, st.Uid, advice(o, "remove it", ""))
		}
		if mode&unix.S_ISVTX == 0 || !o.ExplicitPath {
			return nil, fmt.Errorf("naming: %s %s is not private to uid %d: mode %04o (owner %d) lets other users write to it, to replace the socket or plant links; %s",
				kind, path, euid, mode, st.Uid, advice(o, "remove it", "chmod go-w it (or +t, to make it sticky)"))
		}
		warnings = append(warnings, fmt.Sprintf("socket directory %s is shared (mode %04o): other users cannot move the socket, but can take its name while the server is down; a directory of the server's own is safer", path, mode))
	}
	return warnings, checkAncestors(dir, path, o)
}

// checkAncestors walks up from dir to the root, as the kernel links
// them (not as path spells them), and refuses a directory on the way
// that a user other than root or us could change: one such could swap
// dir, or the directory it is in, for another. A sticky directory
// writable by all, like /tmp, is fine there: those below it are checked
// to be root's or ours, so nobody else can move them.
func checkAncestors(dir *os.File, path string, o Options) error {
	euid := os.Geteuid()
	var self unix.Stat_t
	if err := unix.Fstat(int(dir.Fd()), &self); err != nil {
		return fmt.Errorf("naming: socket directory %s: %w", path, err)
	}
	cur := int(dir.Fd())
	defer func() {
		if cur != int(dir.Fd()) {
			unix.Close(cur)
		}
	}()
	for range 4096 {
		up, err := unix.Openat(cur, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("naming: a directory above %s: %w", path, err)
		}
		if cur != int(dir.Fd()) {
			unix.Close(cur)
		}
		cur = up
		var st unix.Stat_t
		if err := unix.Fstat(cur, &st); err != nil {
			return fmt.Errorf("naming: a directory above %s: %w", path, err)
		}
		if st.Dev == self.Dev && st.Ino == self.Ino {
			return nil // the root is its own parent
		}
		self = st
		mode := st.Mode & 0o7777
		if (st.Uid == 0 || int(st.Uid) == euid) && (mode&0o022 == 0 || mode&unix.S_ISVTX != 0) {
			continue
		}
		name, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(cur))
		if err != nil {
			name = "a directory"
		}
		return fmt.Errorf("naming: %s, above the socket directory %s, belongs to uid %d with mode %04o: another user could swap the directories below it; %s",
			name, path, st.Uid, mode, advice(o, "fix its owner or mode", "fix its owner or mode"))
	}
	return fmt.Errorf("naming: %s is nested too deeply", path)
}

// lockPath opens the lock file name in dir (shown as p) and locks it
// exclusively, retrying if the file it locked was replaced meanwhile, and
// records our pid in it. It follows no link, and takes only a regular
// file of ours with no other name: something else is never written to.
func lockPath(dir *os.File, name, p string) (*os.File, fileID, error) {
	euid := os.Geteuid()
	for range 10 {
		fd, err := unix.Openat(int(dir.Fd()), name, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			if st, serr := statAt(dir, name); serr == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
				return nil, fileID{}, fmt.Errorf("naming: lock file %s is %s, not a regular file; remove it", p, describe(dir, name, st))
			}
			return nil, fileID{}, fmt.Errorf("naming: open lock %s: %w", p, err)
		}
		f := os.NewFile(uintptr(fd), p)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			f.Close()
			return nil, fileID{}, fmt.Errorf("naming: lock %s: %w", p, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG || int(st.Uid) != euid || st.Nlink != 1 {
			f.Close()
			return nil, fileID{}, fmt.Errorf("naming: lock file %s is %s with %d links; only a regular file of uid %d with one link is taken as a lock, and another user may have planted this one: remove it", p, describe(dir, name, st), st.Nlink, euid)
		}
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			holder := readPID(f)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				who := "another machqd"
				if holder > 0 {
					who = "machqd pid " + strconv.Itoa(holder)
				}
				return nil, fileID{}, fmt.Errorf("%w: %s holds %s; stop it or choose another --name or --socket", ErrNameInUse, who, strings.TrimSuffix(p, ".lock"))
			}
			return nil, fileID{}, fmt.Errorf("naming: lock %s: %w", p, os.NewSyscallError("flock", err))
		}
		// The holder before us may have removed the file between our
		// open and our lock; then we locked a file nobody else will see.
		if now, err := statAt(dir, name); err == nil && idOf(now) == idOf(st) {
			if st.Mode&0o7777 != 0o600 { // made under a umask, or left so
				if err := unix.Fchmod(fd, 0o600); err != nil {
					f.Close()
					return nil, fileID{}, fmt.Errorf("naming: set the mode of lock %s: %w", p, err)
				}
			}
			writePID(f)
			return f, idOf(st), nil
		}
		f.Close()
	}
	return nil, fileID{}, fmt.Errorf("naming: lock %s keeps being replaced; is another server starting and stopping?", p)
}

// writePID records this process as the lock's holder, for the message of
// a server refused the name (readPID). It is informative only: a failure
// to write it changes nothing about the lock.
func writePID(f *os.File) {
	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	f.WriteAt(pid, 0)
	f.Truncate(int64(len(pid)))
}

func readPID(f *os.File) int {
	b := make([]byte, 16)
	n, _ := f.ReadAt(b, 0)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	return pid
}

// errNotListening reports a socket bound, its file made, that could not
// listen.
var errNotListening = errors.New("bound but not listening")

// umaskMu serialises the process-wide umask changes of withUmask's
// fallback.
var umaskMu sync.Mutex

// unshareFS gives the calling thread its own umask (and working
// directory); a variable so that tests can take the fallback.
var unshareFS = func() error { return unix.Unshare(unix.CLONE_FS) }

// bindUnix creates a Unix stream socket listening at path whose file has
// mode perm from the start, so that nothing is ever changed through the
// path (which another user might have pointed elsewhere meanwhile).
//
// Linux gives the file the mode of the socket's own inode less the
// umask in force at bind(2); a chmod of the socket descriptor after bind
// changes nothing on the file. So bindUnix sets the socket's inode to
// perm with fchmod before the bind, and binds with the umask that keeps
// all of perm. The umask belongs to the process, shared by its threads;
// bindUnix binds on a thread of its own that it unshares from the
// others (unshare CLONE_FS), which ends when the bind is done, so the
// rest of the process never sees another umask. Where unshare is not
// allowed (some seccomp sandboxes), it sets the process's umask around
// the bind under a mutex: a file another goroutine creates in those few
// microseconds gets that umask too (0177 for a private socket, 0111 for
// a shared one).
func bindUnix(path string, perm uint32) (int, error) {
	bind := func() (int, error) {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return -1, os.NewSyscallError("socket", err)
		}
		if err := unix.Fchmod(fd, perm); err != nil {
			unix.Close(fd)
			return -1, os.NewSyscallError("fchmod", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			unix.Close(fd)
			return -1, os.NewSyscallError("bind", err)
		}
		// At once: a client that finds the file should find it
		// listening. The kernel caps the backlog at somaxconn.
		if err := unix.Listen(fd, 1<<16-1); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("%w: %w", errNotListening, os.NewSyscallError("listen", err))
		}
		return fd, nil
	}
	return withUmask(perm, bind)
}

// withUmask runs create, which makes a file, with the umask that keeps
// every bit of the mode perm, on a thread whose umask is its own when
// unshare allows it, else under the process's umask set for the moment
// (see bindUnix), and returns what create returns.
func withUmask(perm uint32, create func() (int, error)) (int, error) {
	mask := int(^perm & 0o777)
	type result struct {
		fd  int
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if unshareFS() != nil {
			runtime.UnlockOSThread()
			umaskMu.Lock()
			old := unix.Umask(mask)
			fd, err := create()
			unix.Umask(old)
			umaskMu.Unlock()
			done <- result{fd, err}
			return
		}
		// Never unlocked: the thread, with its umask, ends with the
		// goroutine.
		unix.Umask(mask)
		fd, err := create()
		done <- result{fd, err}
	}()
	r := <-done
	return r.fd, r.err
}

// listenerOf makes the listening socket fd a *net.UnixListener that
// leaves its file alone when closed (Release removes it).
func listenerOf(fd int, path string) (*net.UnixListener, error) {
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, err
	}
	return l.(*net.UnixListener), nil
}

// listenerClosed reports whether l has been closed.
func listenerClosed(l *net.UnixListener) bool {
	rc, err := l.SyscallConn()
	if err != nil {
		return true
	}
	return rc.Control(func(uintptr) {}) != nil
}

// Handover is what a successor process needs to take a Registration
// over: the listening socket, the lock that reserves the path and the
// directory it is in, with the identities (device, inode) of the socket
// file and the lock file that Release removes only while they are still
// the same files.
type Handover struct {
	Path     string
	Name     string            // the socket's file name in Dir
	Listener *net.UnixListener // the Registration's own
	Lock     *os.File          // the Registration's own
	Dir      *os.File          // the Registration's own
	SockID   [2]uint64
	LockID   [2]uint64
}

// Handover describes r for a successor. Everything it names stays r's: r
// must not be released while the successor may still take the
// descriptors over (a successor across execve(2) inherits duplicates;
// one started later gets them from wherever they were parked).
func (r *Registration) Handover() (Handover, error) {
	if r.dir == nil || r.lock == nil || r.Listener == nil {
		return Handover{}, errors.New("naming: handover of a released registration")
	}
	return Handover{Path: r.Path, Name: r.name, Listener: r.Listener, Lock: r.lock, Dir: r.dir,
		SockID: [2]uint64{r.sock.dev, r.sock.ino}, LockID: [2]uint64{r.lockID.dev, r.lockID.ino}}, nil
}

// Adopt takes over a registration handed over by a predecessor: the
// listening socket, lock file and directory descriptors (adopted, closed
// by Release or on an error) and what Handover described. It checks that
// each descriptor is what it should be, takes the lock (held already by
// the same open file, so this cannot block), and writes this process's
// pid into it.
func Adopt(path, name string, listener, lock, dir int, sockID, lockID [2]uint64) (*Registration, error) {
	closeAll := func() {
		unix.Close(listener)
		unix.Close(lock)
		unix.Close(dir)
	}
	var st unix.Stat_t
	if err := unix.Fstat(dir, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		closeAll()
		return nil, fmt.Errorf("naming: the directory handed over for %s is not one", path)
	}
	if err := unix.Fstat(lock, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || idOf(st) != (fileID{lockID[0], lockID[1]}) {
		closeAll()
		return nil, fmt.Errorf("naming: the lock handed over for %s is not the lock file described", path)
	}
	if err := unix.Flock(lock, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		closeAll()
		return nil, fmt.Errorf("naming: take the lock handed over for %s: %w", path, os.NewSyscallError("flock", err))
	}
	unix.CloseOnExec(listener)
	unix.CloseOnExec(lock)
	unix.CloseOnExec(dir)
	l, err := listenerOf(listener, path)
	if err != nil {
		unix.Close(lock)
		unix.Close(dir)
		return nil, fmt.Errorf("naming: the socket handed over for %s: %w", path, err)
	}
	lf := os.NewFile(uintptr(lock), path+".lock")
	writePID(lf)
	return &Registration{Path: path, Listener: l, dir: os.NewFile(uintptr(dir), filepath.Dir(path)), name: name,
		sock: fileID{sockID[0], sockID[1]}, lock: lf, lockID: fileID{lockID[0], lockID[1]}}, nil
}
