package naming_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/machq/machq/internal/naming"
	"golang.org/x/sys/unix"
)

// checkIn checks in at path and undoes it at cleanup.
func checkIn(t testing.TB, path string) *naming.Registration {
	t.Helper()
	reg, err := naming.CheckIn(path)
	if err != nil {
		t.Fatalf("CheckIn(%s): %v", path, err)
	}
	t.Cleanup(func() {
		reg.Listener.Close()
		reg.Release()
	})
	return reg
}

// shutdown closes reg's listener and releases it, as a server does.
func shutdown(t testing.TB, reg *naming.Registration) {
	t.Helper()
	if err := reg.Listener.Close(); err != nil {
		t.Errorf("close listener: %v", err)
	}
	reg.Release()
}

// mustMode fails unless path exists with the given type and permissions.
func mustMode(t testing.TB, path string, typ, perm os.FileMode) {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	if st.Mode().Type() != typ || st.Mode().Perm() != perm {
		t.Errorf("%s has mode %v, want type %v perm %v", path, st.Mode(), typ, perm)
	}
}

// mustNotExist fails if path exists.
func mustNotExist(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists (lstat: %v), want it gone", path, err)
	}
}

// roundTrip dials path and checks that ln accepts the connection.
func roundTrip(t testing.TB, path string, ln net.Listener) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept on %s: %v", path, err)
	}
	defer s.Close()
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if _, err := s.Read(b); err != nil || string(b) != "hi" {
		t.Errorf("read %q, %v; want hi", b, err)
	}
}

func TestCheckInCreatesDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "run")
	path := filepath.Join(dir, "svc.sock")
	reg := checkIn(t, path)
	if reg.Path != path {
		t.Errorf("Path = %q, want %q", reg.Path, path)
	}
	mustMode(t, dir, os.ModeDir, 0o700)
	mustMode(t, filepath.Dir(dir), os.ModeDir, 0o700) // ancestors it created too
	mustMode(t, path, os.ModeSocket, 0o600)
	mustMode(t, path+".lock", 0, 0o600)
	pid, err := os.ReadFile(path + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	if string(pid) != strconv.Itoa(os.Getpid())+"\n" {
		t.Errorf("lock file holds %q, want our pid", pid)
	}
	roundTrip(t, path, reg.Listener)

	shutdown(t, reg)
	mustNotExist(t, path)
	mustNotExist(t, path+".lock")
}

func TestCheckInShared(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "run")
	path := filepath.Join(dir, "svc.sock")
	reg, err := naming.CheckInWith(path, naming.Options{Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, reg) })
	// Others may pass through what it created and connect; the server
	// checks who they are.
	mustMode(t, dir, os.ModeDir, 0o711)
	mustMode(t, filepath.Dir(dir), os.ModeDir, 0o711)
	mustMode(t, path, os.ModeSocket, 0o666)
	roundTrip(t, path, reg.Listener)
}

func TestCheckInNoCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "svc.sock")
	_, err := naming.CheckInWith(path, naming.Options{NoCreate: true})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("CheckInWith NoCreate in a missing directory: %v", err)
	}
	mustNotExist(t, filepath.Dir(path))
}

func TestCheckInReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svc.sock")
	// A socket file nobody listens on: what a server killed with SIGKILL
	// leaves behind.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	reg := checkIn(t, path)
	if !reg.ReplacedStale {
		t.Error("ReplacedStale not set after replacing a stale socket")
	}
	roundTrip(t, path, reg.Listener)
	if fresh := checkIn(t, filepath.Join(t.TempDir(), "fresh.sock")); fresh.ReplacedStale {
		t.Error("ReplacedStale set for a fresh path")
	}
}

func TestCheckInExistingDir(t *testing.T) {
	// A directory that exists keeps its mode, whatever it is, unless it
	// is a per-user machq- directory.
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "svc.sock")
	reg := checkIn(t, path)
	mustMode(t, dir, os.ModeDir, 0o755)
	mustMode(t, path, os.ModeSocket, 0o600)
	roundTrip(t, path, reg.Listener)
}

func TestCheckInTwice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svc.sock")
	reg := checkIn(t, path)

	second, err := naming.CheckIn(path)
	if err == nil {
		second.Listener.Close()
		second.Release()
		t.Fatal("second CheckIn on a held path succeeded")
	}
	if !errors.Is(err, naming.ErrNameInUse) {
		t.Fatalf("second CheckIn: %v, want ErrNameInUse", err)
	}
	if want := "pid " + strconv.Itoa(os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("second CheckIn: %q does not mention %q", err, want)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("second CheckIn: %q does not mention the path", err)
	}

	// The failed attempt disturbed nothing.
	mustMode(t, path, os.ModeSocket, 0o600)
	mustMode(t, path+".lock", 0, 0o600)
	roundTrip(t, path, reg.Listener)
	if _, err := naming.CheckIn(path); !errors.Is(err, naming.ErrNameInUse) {
		t.Errorf("third CheckIn: %v, want ErrNameInUse", err)
	}
}

func TestCheckInConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svc.sock")
	const n = 8
	regs := make([]*naming.Registration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			regs[i], errs[i] = naming.CheckIn(path)
		}()
	}
	close(start)
	wg.Wait()
	won := 0
	for i := range n {
		switch {
		case errs[i] == nil:
			won++
			t.Cleanup(func() { shutdown(t, regs[i]) })
		case !errors.Is(errs[i], naming.ErrNameInUse):
			t.Errorf("CheckIn %d: %v, want ErrNameInUse", i, errs[i])
		}
	}
	if won != 1 {
		t.Errorf("%d CheckIns succeeded, want exactly 1", won)
	}
}

func TestCheckInStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svc.sock")
	// A server that died leaves its socket file behind.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(path)
	if err != nil || st.Mode().Type() != os.ModeSocket {
		t.Fatalf("the stale socket is not there: %v, %v", st, err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		t.Fatal("the stale socket answers")
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}

	reg := checkIn(t, path)
	// A new socket, answering, with CheckIn's mode.
	mustMode(t, path, os.ModeSocket, 0o600)
	roundTrip(t, path, reg.Listener)
}

func TestCheckInForeignServer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svc.sock")
	// Something that does not take the lock answers on the path.
	foreign, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()

	reg, err := naming.CheckIn(path)
	if err == nil {
		reg.Listener.Close()
		reg.Release()
		t.Fatal("CheckIn over a live foreign server succeeded")
	}
	if !errors.Is(err, naming.ErrNameInUse) {
		t.Fatalf("CheckIn: %v, want ErrNameInUse", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("CheckIn: %q does not mention the path", err)
	}
	// The foreign server keeps its socket, and no lock is left behind.
	// (Its own dial was accepted by the kernel; take it off the backlog.)
	c, err := foreign.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	roundTrip(t, path, foreign)
	mustNotExist(t, path+".lock")
}

func TestCheckInAfterRelease(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svc.sock")
	first, err := naming.CheckIn(path)
	if err != nil {
		t.Fatal(err)
	}
	shutdown(t, first)

	second := checkIn(t, path)
	roundTrip(t, path, second.Listener)

	// Releasing the first registration again must not touch the
	// second's lock.
	first.Release()
	mustMode(t, path+".lock", 0, 0o600)
	if _, err := naming.CheckIn(path); !errors.Is(err, naming.ErrNameInUse) {
		t.Errorf("CheckIn while the second registration holds the path: %v, want ErrNameInUse", err)
	}
}

func TestCheckInReleasedButListening(t *testing.T) {
	// Releasing the lock while the listener still answers does not let
	// a newcomer steal the socket.
	path := filepath.Join(t.TempDir(), "svc.sock")
	reg, err := naming.CheckIn(path)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Listener.Close()
	reg.Release()
	mustNotExist(t, path+".lock")

	if r2, err := naming.CheckIn(path); !errors.Is(err, naming.ErrNameInUse) {
		if err == nil {
			r2.Listener.Close()
			r2.Release()
		}
		t.Fatalf("CheckIn: %v, want ErrNameInUse", err)
	}
	// The connection the check made is queued; the listener still works.
	c, err := reg.Listener.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	roundTrip(t, path, reg.Listener)
}

func TestCheckInStaleLockFile(t *testing.T) {
	// A lock file left by a dead server, with its pid, is taken over.
	path := filepath.Join(t.TempDir(), "svc.sock")
	if err := os.WriteFile(path+".lock", []byte("999999999 and more junk\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := checkIn(t, path)
	b, err := os.ReadFile(path + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != strconv.Itoa(os.Getpid())+"\n" {
		t.Errorf("lock file holds %q, want our pid alone", b)
	}
	roundTrip(t, path, reg.Listener)
}

func TestCheckInPrivateDir(t *testing.T) {
	for _, c := range []struct {
		name string
		perm os.FileMode
		ok   bool
	}{
		{"machq-1000", 0o700, true},
		{"machq-world", 0o777, false},
		{"machq-shared", 0o711, true}, // a shared server's: others pass, nobody else writes
		{"machq-group-writable", 0o770, false},
		{"machq-other-writable", 0o703, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), c.name)
			if err := os.Mkdir(dir, c.perm); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, c.perm); err != nil { // past the umask
				t.Fatal(err)
			}
			path := filepath.Join(dir, "machq.sock")
			reg, err := naming.CheckIn(path)
			if c.ok {
				if err != nil {
					t.Fatalf("CheckIn in a %v %s: %v", c.perm, c.name, err)
				}
				shutdown(t, reg)
				return
			}
			if err == nil {
				shutdown(t, reg)
				t.Fatalf("CheckIn in a %v %s succeeded", c.perm, c.name)
			}
			if errors.Is(err, naming.ErrNameInUse) {
				t.Errorf("CheckIn: %v, should not be ErrNameInUse", err)
			}
			if !strings.Contains(err.Error(), "not private") || !strings.Contains(err.Error(), dir) {
				t.Errorf("CheckIn: %q should say %s is not private", err, dir)
			}
			mustNotExist(t, path)
			mustNotExist(t, path+".lock")
		})
	}
}

func TestCheckInForeignOwnedDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory away")
	}
	dir := filepath.Join(t.TempDir(), "machq-someone")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Skipf("chown: %v", err)
	}
	path := filepath.Join(dir, "machq.sock")
	reg, err := naming.CheckIn(path)
	if err == nil {
		shutdown(t, reg)
		t.Fatal("CheckIn in a directory owned by another user succeeded")
	}
	if !strings.Contains(err.Error(), "owner 65534") {
		t.Errorf("CheckIn: %q should name the owner", err)
	}
	mustNotExist(t, path)
}

func TestCheckInParentNotDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	reg, err := naming.CheckIn(filepath.Join(file, "svc.sock"))
	if err == nil {
		shutdown(t, reg)
		t.Fatal("CheckIn under a regular file succeeded")
	}
	if !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("CheckIn: %q should say the parent is not a directory", err)
	}
	if errors.Is(err, naming.ErrNameInUse) {
		t.Errorf("CheckIn: %v, should not be ErrNameInUse", err)
	}
}

func TestCheckInPathTooLong(t *testing.T) {
	// sun_path holds 108 bytes; a longer path cannot be listened on, and
	// CheckIn must say so and leave no lock behind.
	dir := t.TempDir()
	path := filepath.Join(dir, strings.Repeat("p", 120)+".sock")
	reg, err := naming.CheckIn(path)
	if err == nil {
		shutdown(t, reg)
		t.Fatal("CheckIn on a 120-byte socket name succeeded")
	}
	if errors.Is(err, naming.ErrNameInUse) {
		t.Errorf("CheckIn: %v, should not be ErrNameInUse", err)
	}
	mustNotExist(t, path+".lock")
}

func TestCheckInUnderRuntimeDir(t *testing.T) {
	// The path a service name resolves to is one CheckIn can take.
	t.Setenv("MACHQ_RUNTIME_DIR", filepath.Join(t.TempDir(), "rt"))
	path, err := naming.Resolve("svc")
	if err != nil {
		t.Fatal(err)
	}
	reg := checkIn(t, path)
	mustMode(t, naming.RuntimeDir(), os.ModeDir, 0o700)
	roundTrip(t, path, reg.Listener)
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil || int(st.Uid) != os.Geteuid() {
		t.Errorf("socket owner %d (%v), want %d", st.Uid, err, os.Geteuid())
	}
}
