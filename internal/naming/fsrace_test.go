package naming_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machq/machq/internal/naming"
	"golang.org/x/sys/unix"
)

// The tests in this file plant links and files where a server checks in,
// as another user in a directory they can write to would, and check that
// the server neither follows nor changes nor removes them.

// victim returns a file of ours, mode 0600, that a server must never
// change: what an attacker points links at.
func victim(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(p, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustBeIntact fails unless the victim at p still has mode 0600 and its
// content.
func mustBeIntact(t testing.TB, p string) {
	t.Helper()
	mustMode(t, p, 0, 0o600)
	if b, err := os.ReadFile(p); err != nil || string(b) != "secret\n" {
		t.Fatalf("victim %s now holds %q (%v), want %q", p, b, err, "secret\n")
	}
}

// sharedTempDir returns a new directory with mode perm (past the umask)
// right under the temporary directory, so that other users can reach
// it, removed when the test ends.
func sharedTempDir(t *testing.T, perm os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "naming-fsrace-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	return dir
}

// unixMode is m as the kernel's mode bits: permissions and the sticky
// bit.
func unixMode(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&os.ModeSticky != 0 {
		u |= unix.S_ISVTX
	}
	return u
}

// needRoot skips t unless it runs as root, which other users' cases need.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to act as other users")
	}
}

// goAs runs f in a goroutine on a thread of its own whose user and group
// ids (effective, real and saved) are uid, with no supplementary groups,
// as another local user would run it. The thread ends with f. It
// returns once the ids are set, and needs root.
func goAs(t *testing.T, uid int, f func()) {
	t.Helper()
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		for _, call := range []struct {
			nr      uintptr
			a, b, c uintptr
		}{
			{unix.SYS_SETGROUPS, 0, 0, 0},
			{unix.SYS_SETRESGID, uintptr(uid), uintptr(uid), uintptr(uid)},
			{unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)},
		} {
			if _, _, e := unix.RawSyscall(call.nr, call.a, call.b, call.c); e != 0 {
				ready <- fmt.Errorf("syscall %d: %w", call.nr, e)
				return
			}
		}
		ready <- nil
		f()
	}()
	if err := <-ready; err != nil {
		t.Fatalf("become uid %d: %v", uid, err)
	}
}

// TestCheckInSocketModeUnderAnyUmask: the socket has exactly its mode
// whatever the process's umask, and the umask is left as it was, both
// with a thread of its own for the bind and with the fallback that sets
// the process's umask.
func TestCheckInSocketModeUnderAnyUmask(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		for _, umask := range []int{0o000, 0o022, 0o077, 0o777} {
			for _, shared := range []bool{false, true} {
				t.Run(fmt.Sprintf("fallback=%v/umask=%04o/shared=%v", fallback, umask, shared), func(t *testing.T) {
					if fallback {
						naming.UmaskFallback(t)
					} else if !naming.ThreadUmask() {
						t.Skip("unshare(CLONE_FS) is refused here; the fallback is tested")
					}
					dir := filepath.Join(t.TempDir(), "run") // made under the usual umask
					old := syscall.Umask(umask)
					defer syscall.Umask(old)
					path := filepath.Join(dir, "svc.sock")
					reg, err := naming.CheckInWith(path, naming.Options{Shared: shared})
					if got := syscall.Umask(umask); got != umask {
						t.Errorf("CheckInWith left the umask %04o, want %04o", got, umask)
					}
					if err != nil {
						t.Fatal(err)
					}
					defer shutdown(t, reg)
					sock, dirMode := os.FileMode(0o600), os.FileMode(0o700)
					if shared {
						sock, dirMode = 0o666, 0o711
					}
					mustMode(t, path, os.ModeSocket, sock)
					mustMode(t, dir, os.ModeDir, dirMode)
					mustMode(t, path+".lock", 0, 0o600)
					roundTrip(t, path, reg.Listener)
				})
			}
		}
	}
}

// TestCheckInLeavesTheUmaskAlone: while a server checks in, files the
// rest of the process creates get the process's umask, not the one the
// bind needs: the bind has a thread, and a umask, of its own.
func TestCheckInLeavesTheUmaskAlone(t *testing.T) {
	if !naming.ThreadUmask() {
		t.Skip("unshare(CLONE_FS) is refused here: the fallback sets the process's umask, as documented")
	}
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	files := t.TempDir()
	stop := make(chan struct{})
	wrong := make(chan string, 1)
	created := make(chan int, 1)
	go func() {
		n := 0
		defer func() { created <- n }()
		for ; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			p := filepath.Join(files, "f")
			f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o666)
			if err != nil {
				wrong <- err.Error()
				return
			}
			st, err := f.Stat()
			f.Close()
			os.Remove(p)
			if err != nil || st.Mode().Perm() != 0o644 {
				wrong <- fmt.Sprintf("a file created during a check-in has mode %v (%v), want 0644", st.Mode().Perm(), err)
				return
			}
		}
	}()
	path := filepath.Join(t.TempDir(), "svc.sock")
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; i < 300 && time.Now().Before(deadline); i++ {
		reg, err := naming.CheckInWith(path, naming.Options{Shared: true})
		if err != nil {
			t.Fatal(err)
		}
		shutdown(t, reg)
	}
	close(stop)
	n := <-created
	select {
	case w := <-wrong:
		t.Fatal(w)
	default:
	}
	if n == 0 {
		t.Fatal("no file was created during the check-ins")
	}
}

// TestCheckInSocketSwappedForALink: a link to a file of ours, renamed
// over the socket the moment it appears, is never followed: the file's
// mode stays 0600 where a chmod of the path would have made it 0666.
// (Here the swapper is the directory's owner; another user may do this
// only in a directory CheckInWith refuses.)
func TestCheckInSocketSwappedForALink(t *testing.T) {
	v := victim(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "svc.sock")
	link := filepath.Join(dir, "link")
	deadline := time.Now().Add(10 * time.Second)
	swaps, iterations := 0, 0
	for ; iterations < 400 && time.Now().Before(deadline); iterations++ {
		if err := os.Symlink(v, link); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		swapped := make(chan bool, 1)
		go func() {
			for {
				select {
				case <-stop:
					swapped <- false
					return
				default:
				}
				if st, err := os.Lstat(path); err == nil && st.Mode().Type() == os.ModeSocket {
					swapped <- os.Rename(link, path) == nil
					return
				}
			}
		}()
		reg, err := naming.CheckInWith(path, naming.Options{Shared: true})
		close(stop)
		if <-swapped {
			swaps++
		}
		if err == nil {
			shutdown(t, reg)
		}
		mustBeIntact(t, v)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		os.Remove(link)
	}
	if swaps == 0 {
		t.Fatalf("the socket was never swapped in %d check-ins: the test proved nothing", iterations)
	}
	t.Logf("%d of %d check-ins had their socket swapped for a link", swaps, iterations)
}

// TestCheckInPlantedLockFile: a lock file that is a link, a hard link, a
// FIFO, a directory or another user's file is refused, named in the
// error with what it is, and left as it was; the file a link points to
// is not written.
func TestCheckInPlantedLockFile(t *testing.T) {
	for _, c := range []struct {
		name  string
		plant func(t *testing.T, lock, victim string)
		want  string
	}{
		{"symlink", func(t *testing.T, lock, v string) {
			if err := os.Symlink(v, lock); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link to " + "VICTIM"},
		{"dangling symlink", func(t *testing.T, lock, v string) {
			if err := os.Symlink(v+".new", lock); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"hard link", func(t *testing.T, lock, v string) {
			if err := os.Link(v, lock); err != nil {
				t.Skipf("hard link: %v", err)
			}
		}, "2 links"},
		{"fifo", func(t *testing.T, lock, v string) {
			if err := unix.Mkfifo(lock, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "FIFO"},
		{"directory", func(t *testing.T, lock, v string) {
			if err := os.Mkdir(lock, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "directory"},
		{"another user's file", func(t *testing.T, lock, v string) {
			needRoot(t)
			if err := os.WriteFile(lock, []byte("secret\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(lock, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}, "uid 65534"},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := victim(t)
			// Victim and directory in one, for the hard link.
			dir := filepath.Dir(v)
			path := filepath.Join(dir, "svc.sock")
			c.plant(t, path+".lock", v)
			before, err := os.Lstat(path + ".lock")
			if err != nil {
				t.Fatal(err)
			}
			reg, err := naming.CheckIn(path)
			if err == nil {
				shutdown(t, reg)
				t.Fatalf("CheckIn with a planted %s as its lock file succeeded", c.name)
			}
			want := strings.ReplaceAll(c.want, "VICTIM", v)
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path+".lock") || !strings.Contains(err.Error(), "remove it") {
				t.Errorf("CheckIn: %q; want it to name %s, say %q and what to do", err, path+".lock", want)
			}
			if errors.Is(err, naming.ErrNameInUse) {
				t.Errorf("CheckIn: %v, should not be ErrNameInUse", err)
			}
			mustBeIntact(t, v)
			after, err := os.Lstat(path + ".lock")
			if err != nil || !os.SameFile(before, after) || after.Mode() != before.Mode() || after.Size() != before.Size() {
				t.Errorf("the planted lock file changed: %v, %v (%v)", before, after, err)
			}
			mustNotExist(t, path)
		})
	}
}

// TestCheckInPlantedAtTheSocketPath: a link at the socket path, to a file
// or to a stale socket elsewhere, is neither followed nor removed.
func TestCheckInPlantedAtTheSocketPath(t *testing.T) {
	v := victim(t)
	elsewhere := filepath.Join(t.TempDir(), "stale.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: elsewhere}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	for _, target := range []string{v, elsewhere} {
		path := filepath.Join(t.TempDir(), "svc.sock")
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
		reg, err := naming.CheckIn(path)
		if err == nil {
			shutdown(t, reg)
			t.Fatalf("CheckIn over a link to %s succeeded", target)
		}
		if !strings.Contains(err.Error(), "symbolic link to "+target) || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("CheckIn: %q; want it to say a link to %s is there, not a socket", err, target)
		}
		if got, err := os.Readlink(path); err != nil || got != target {
			t.Errorf("the link at the socket path is now %q (%v)", got, err)
		}
		mustNotExist(t, path+".lock")
	}
	mustBeIntact(t, v)
	if st, err := os.Lstat(elsewhere); err != nil || st.Mode().Type() != os.ModeSocket {
		t.Errorf("the stale socket a link pointed to was removed or changed: %v, %v", st, err)
	}
}

// TestCheckInReleaseRemovesOnlyItsOwnFiles: a socket or lock file put in
// place of the server's is left alone when the server releases the path.
func TestCheckInReleaseRemovesOnlyItsOwnFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svc.sock")
	reg := checkIn(t, path)
	other := path + ".other"
	if err := os.WriteFile(other, []byte("not the lock\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, path+".lock"); err != nil {
		t.Fatal(err)
	}
	if err := reg.Listener.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, []byte("not the socket\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, path); err != nil {
		t.Fatal(err)
	}
	reg.Release()
	for _, p := range []string{path, path + ".lock"} {
		if st, err := os.Lstat(p); err != nil || !st.Mode().IsRegular() {
			t.Errorf("Release removed or changed %s, which was not its own: %v, %v", p, st, err)
		}
	}

	// Its own files it removes, once the listener is closed.
	path = filepath.Join(t.TempDir(), "svc.sock")
	reg = checkIn(t, path)
	reg.Release()
	mustNotExist(t, path+".lock")
	mustMode(t, path, os.ModeSocket, 0o600) // still listening
	roundTrip(t, path, reg.Listener)
}

// TestCheckInDirectoryRules: the socket's directory must be a directory
// nobody else can change. A sticky one others may write to is accepted,
// with a warning, only for a path the operator chose.
func TestCheckInDirectoryRules(t *testing.T) {
	for _, c := range []struct {
		perm     os.FileMode
		explicit bool
		ok, warn bool
		want     string
	}{
		{0o700, false, true, false, ""},
		{0o755, false, true, false, ""},
		{0o711, true, true, false, ""},
		{0o775, false, false, false, "lets other users write"},
		{0o777, true, false, false, "lets other users write"},
		{0o757, true, false, false, "chmod go-w"},
		{os.ModeSticky | 0o777, false, false, false, "MACHQ_RUNTIME_DIR"},
		{os.ModeSticky | 0o777, true, true, true, ""},
		{os.ModeSticky | 0o770, true, true, true, ""},
	} {
		t.Run(fmt.Sprintf("%v/explicit=%v", c.perm, c.explicit), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "d")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, c.perm); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "svc.sock")
			reg, err := naming.CheckInWith(path, naming.Options{ExplicitPath: c.explicit})
			if !c.ok {
				if err == nil {
					shutdown(t, reg)
					t.Fatalf("CheckIn in a %v directory succeeded", c.perm)
				}
				if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), fmt.Sprintf("%04o", unixMode(c.perm))) {
					t.Errorf("CheckIn: %q; want it to name %s, its mode and say %q", err, dir, c.want)
				}
				mustNotExist(t, path)
				mustNotExist(t, path+".lock")
				if st, err := os.Lstat(dir); err != nil || st.Mode() != os.ModeDir|c.perm {
					t.Errorf("the directory is now %v (%v), want it left %v", st.Mode(), err, c.perm)
				}
				return
			}
			if err != nil {
				t.Fatalf("CheckIn in a %v directory: %v", c.perm, err)
			}
			defer shutdown(t, reg)
			roundTrip(t, path, reg.Listener)
			if got := len(reg.Warnings) > 0; got != c.warn {
				t.Errorf("warnings %q; want some: %v", reg.Warnings, c.warn)
			}
			if c.warn && !strings.Contains(reg.Warnings[0], dir) {
				t.Errorf("warning %q does not name the directory", reg.Warnings[0])
			}
		})
	}
}

// TestCheckInDirectoryIsALink: a link as the socket's directory is not
// followed, for a service name's runtime directory or a path given; the
// error says where it points, and nothing is made there.
func TestCheckInDirectoryIsALink(t *testing.T) {
	for _, explicit := range []bool{false, true} {
		real := t.TempDir()
		link := filepath.Join(t.TempDir(), "rt")
		if err := os.Symlink(real, link); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(link, "svc.sock")
		reg, err := naming.CheckInWith(path, naming.Options{ExplicitPath: explicit})
		if err == nil {
			shutdown(t, reg)
			t.Fatalf("CheckIn (explicit %v) in a linked directory succeeded", explicit)
		}
		advice := "MACHQ_RUNTIME_DIR"
		if explicit {
			advice = "give the directory it points to"
		}
		if !strings.Contains(err.Error(), link+" is a symbolic link (to "+real) || !strings.Contains(err.Error(), advice) {
			t.Errorf("CheckIn (explicit %v): %q; want it to say %s links to %s, and %q", explicit, err, link, real, advice)
		}
		if ents, _ := os.ReadDir(real); len(ents) != 0 {
			t.Errorf("CheckIn made %v in the directory the link points to", ents)
		}
	}
}

// TestCheckInFollowsLinksAboveIt: a link above the socket's directory
// (like /var/run to /run) is followed, and the socket is bound at the
// directory's real path.
func TestCheckInFollowsLinksAboveIt(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "var-run")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(link, "machq", "svc.sock")
	reg := checkIn(t, path)
	mustMode(t, filepath.Join(real, "machq"), os.ModeDir, 0o700)
	if got, want := reg.Listener.Addr().String(), filepath.Join(real, "machq", "svc.sock"); got != want {
		t.Errorf("listener address %s, want the real path %s", got, want)
	}
	roundTrip(t, path, reg.Listener)
}

// TestCheckInUnsafeAncestor: a directory above the socket's that another
// user could change is refused, named with its owner and mode; a sticky
// one, like /tmp, is not.
func TestCheckInUnsafeAncestor(t *testing.T) {
	for _, c := range []struct {
		perm  os.FileMode
		owner int
		ok    bool
	}{
		{os.ModeSticky | 0o777, 0, true},
		{0o777, 0, false},
		{0o770, 0, false},
		{0o755, 65534, false},
	} {
		t.Run(fmt.Sprintf("%v-uid%d", c.perm, c.owner), func(t *testing.T) {
			above := filepath.Join(t.TempDir(), "above")
			if err := os.Mkdir(above, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(above, c.perm); err != nil {
				t.Fatal(err)
			}
			if c.owner != 0 {
				needRoot(t)
				if err := os.Chown(above, c.owner, c.owner); err != nil {
					t.Fatal(err)
				}
			} else if os.Geteuid() != 0 {
				t.Skip("the case wants a directory of root's")
			}
			path := filepath.Join(above, "run", "svc.sock")
			if err := os.Mkdir(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			reg, err := naming.CheckInWith(path, naming.Options{ExplicitPath: true})
			if c.ok {
				if err != nil {
					t.Fatal(err)
				}
				shutdown(t, reg)
				return
			}
			if err == nil {
				shutdown(t, reg)
				t.Fatalf("CheckIn below a %v directory of uid %d succeeded", c.perm, c.owner)
			}
			want := fmt.Sprintf("%s, above the socket directory %s, belongs to uid %d with mode %04o", above, filepath.Dir(path), c.owner, unixMode(c.perm))
			if !strings.Contains(err.Error(), want) {
				t.Errorf("CheckIn: %q; want it to say %q", err, want)
			}
			mustNotExist(t, path+".lock")
		})
	}
}

// TestCheckInStickyDirAgainstAnotherUser: in a sticky directory others
// may write to (/tmp), another user plants links at the lock and socket
// paths and tries to rename links over the server's files, in a loop,
// while the server checks in again and again. The file the links point
// to never changes, and every check-in either is refused or holds a
// socket of root's, mode 0666, that answers.
func TestCheckInStickyDirAgainstAnotherUser(t *testing.T) {
	needRoot(t)
	v := victim(t)
	dir := sharedTempDir(t, os.ModeSticky|0o777)
	path := filepath.Join(dir, "svc.sock")
	stop := make(chan struct{})
	rounds := make(chan int, 1)
	goAs(t, 65534, func() {
		n := 0
		defer func() { rounds <- n }()
		tmp := filepath.Join(dir, "planted")
		for ; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			os.Symlink(v, path+".lock")
			os.Remove(tmp)
			os.Symlink(v, tmp)
			os.Rename(tmp, path) // over a socket of root's: refused by the sticky bit
			if n%2 == 0 {
				os.Remove(path) // only its own, in a sticky directory
				os.Remove(path + ".lock")
			}
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	served, refused := 0, 0
	for i := 0; i < 300 && time.Now().Before(deadline); i++ {
		reg, err := naming.CheckInWith(path, naming.Options{Shared: true, ExplicitPath: true})
		if err != nil {
			refused++
			if errors.Is(err, naming.ErrNameInUse) {
				t.Fatalf("check-in %d: %v; nothing else serves there", i, err)
			}
			mustBeIntact(t, v)
			continue
		}
		served++
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Uid != 0 || st.Mode&0o7777 != 0o666 {
			t.Errorf("check-in %d: the socket path holds mode %o of uid %d (%v), want root's 0666 socket", i, st.Mode, st.Uid, err)
		}
		if len(reg.Warnings) == 0 {
			t.Errorf("check-in %d in a sticky directory gave no warning", i)
		}
		roundTrip(t, path, reg.Listener)
		shutdown(t, reg)
		mustBeIntact(t, v)
	}
	close(stop)
	if n := <-rounds; n == 0 {
		t.Fatal("the other user never ran")
	}
	mustBeIntact(t, v)
	t.Logf("%d check-ins served, %d refused", served, refused)
}
