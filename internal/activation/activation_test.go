package activation

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// firstFD is where the tests place "inherited" descriptors: high enough
// not to collide with anything the test binary has open.
const firstFD = 200

// inherit places the descriptors of fs at firstFD, firstFD+1, ... as a
// service manager would at 3, 4, ..., and closes them when the test ends
// (those not already closed by the code under test).
func inherit(t *testing.T, fs ...*os.File) {
	t.Helper()
	for i, f := range fs {
		if err := unix.Dup3(int(f.Fd()), firstFD+i, unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		f.Close()
		fd := firstFD + i
		var placed unix.Stat_t
		if err := unix.Fstat(fd, &placed); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// Close it unless the code under test did (the number may
			// have been reused since, for something else).
			var st unix.Stat_t
			if unix.Fstat(fd, &st) == nil && st.Dev == placed.Dev && st.Ino == placed.Ino {
				unix.Close(fd)
			}
		})
	}
}

// env returns a getenv for the given LISTEN_* values.
func env(pid int, fds, names string) func(string) string {
	vars := map[string]string{"LISTEN_PID": strconv.Itoa(pid), "LISTEN_FDS": fds, "LISTEN_FDNAMES": names}
	return func(k string) string { return vars[k] }
}

// unixListener returns the file of a fresh listening Unix stream socket
// and its path.
func unixListener(t *testing.T, name string) (*os.File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	return f, path
}

// isOpen reports whether fd is an open descriptor.
func isOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

func TestListenersServeEveryInheritedSocket(t *testing.T) {
	a, pathA := unixListener(t, "a.sock")
	b, pathB := unixListener(t, "b.sock")
	inherit(t, a, b)
	ls, err := listeners(env(os.Getpid(), "2", "machq:other"), os.Getpid(), firstFD)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 {
		t.Fatalf("got %d listeners, want 2", len(ls))
	}
	for i, path := range []string{pathA, pathB} {
		l := ls[i]
		if got := l.Addr().String(); got != path {
			t.Errorf("listener %d is %s, want %s (in LISTEN_FDS order)", i, got, path)
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("dial %s: %v", path, err)
		}
		s, err := l.Accept()
		if err != nil {
			t.Fatalf("accept on %s: %v", path, err)
		}
		s.Close()
		c.Close()
		l.Close()
		// The manager owns the socket file: closing leaves it.
		if _, err := os.Stat(path); err != nil {
			t.Errorf("closing the listener removed %s: %v", path, err)
		}
	}
	// The descriptors at firstFD were handed over (and closed with
	// the listeners' own duplicates), so none is left behind.
	for fd := firstFD; fd < firstFD+2; fd++ {
		if isOpen(fd) {
			t.Errorf("descriptor %d still open after its listener closed", fd)
		}
	}
}

func TestListenersNotForThisProcess(t *testing.T) {
	f, _ := unixListener(t, "s.sock")
	inherit(t, f)
	for _, tc := range []struct {
		name   string
		getenv func(string) string
	}{
		{"another pid", env(os.Getpid()+1, "1", "")},
		{"no LISTEN_PID", func(k string) string {
			if k == "LISTEN_FDS" {
				return "1"
			}
			return ""
		}},
		{"no LISTEN_FDS", env(os.Getpid(), "", "")},
		{"garbage pid", func(k string) string {
			return map[string]string{"LISTEN_PID": "self", "LISTEN_FDS": "1"}[k]
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ls, err := listeners(tc.getenv, os.Getpid(), firstFD)
			if err != nil || ls != nil {
				t.Fatalf("got %v, %v; want nothing taken", ls, err)
			}
			if !isOpen(firstFD) {
				t.Fatal("a descriptor meant for someone else was closed")
			}
		})
	}
	if ls, err := listeners(env(os.Getpid(), "0", ""), os.Getpid(), firstFD); err != nil || ls != nil {
		t.Fatalf("LISTEN_FDS=0: got %v, %v; want nothing", ls, err)
	}
}

func TestListenersRefuseWhatIsNotAListeningUnixStreamSocket(t *testing.T) {
	connected := func(t *testing.T) *os.File {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fds[1])
		return os.NewFile(uintptr(fds[0]), "connected")
	}
	socket := func(domain, typ int) func(t *testing.T) *os.File {
		return func(t *testing.T) *os.File {
			fd, err := unix.Socket(domain, typ, 0)
			if err != nil {
				t.Fatal(err)
			}
			if domain == unix.AF_UNIX && typ == unix.SOCK_SEQPACKET {
				if err := unix.Bind(fd, &unix.SockaddrUnix{Name: filepath.Join(t.TempDir(), "p.sock")}); err != nil {
					t.Fatal(err)
				}
				if err := unix.Listen(fd, 1); err != nil {
					t.Fatal(err)
				}
			}
			if domain == unix.AF_INET {
				if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
					t.Fatal(err)
				}
				if err := unix.Listen(fd, 1); err != nil {
					t.Fatal(err)
				}
			}
			return os.NewFile(uintptr(fd), "socket")
		}
	}
	for _, tc := range []struct {
		name string
		file func(t *testing.T) *os.File
		want string
	}{
		{"Accept=yes connection", connected, "Accept=no"},
		{"sequential packet", socket(unix.AF_UNIX, unix.SOCK_SEQPACKET), "ListenStream="},
		{"datagram", socket(unix.AF_UNIX, unix.SOCK_DGRAM), "ListenStream="},
		{"TCP", socket(unix.AF_INET, unix.SOCK_STREAM), "not a Unix socket"},
		{"regular file", func(t *testing.T) *os.File {
			f, err := os.CreateTemp(t.TempDir(), "f")
			if err != nil {
				t.Fatal(err)
			}
			return f
		}, "not a socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			good, _ := unixListener(t, "good.sock")
			// A good socket first, the bad one second: the good one
			// must be closed too, so nothing half-adopted stays open.
			inherit(t, good, tc.file(t))
			ls, err := listeners(env(os.Getpid(), "2", "machq:bad"), os.Getpid(), firstFD)
			if !errors.Is(err, ErrNotUnix) {
				t.Fatalf("got %v, %v; want ErrNotUnix", ls, err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "bad") {
				t.Errorf("error %q should name the descriptor (bad) and say %q", err, tc.want)
			}
			for fd := firstFD; fd < firstFD+2; fd++ {
				if isOpen(fd) {
					t.Errorf("descriptor %d left open after refusing", fd)
				}
			}
		})
	}
}

func TestListenersMalformedEnvironment(t *testing.T) {
	for _, fds := range []string{"-1", "two", "100000"} {
		if ls, err := listeners(env(os.Getpid(), fds, ""), os.Getpid(), firstFD); !errors.Is(err, ErrBadEnvironment) {
			t.Errorf("LISTEN_FDS=%s: got %v, %v; want ErrBadEnvironment", fds, ls, err)
		}
	}
	// LISTEN_FDS counts past what is open.
	f, _ := unixListener(t, "s.sock")
	inherit(t, f)
	ls, err := listeners(env(os.Getpid(), "3", ""), os.Getpid(), firstFD)
	if !errors.Is(err, ErrBadEnvironment) || !strings.Contains(err.Error(), "not open") {
		t.Fatalf("LISTEN_FDS beyond the open descriptors: got %v, %v", ls, err)
	}
	if isOpen(firstFD) {
		t.Error("the open descriptor was left open after the environment was refused")
	}
}

func TestListenersUnsetsTheEnvironment(t *testing.T) {
	t.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()+1))
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_FDNAMES", "machq")
	if p, err := Take(); p.Listeners != nil || p.State != nil || err != nil {
		t.Fatalf("got %+v, %v for another process's sockets", p, err)
	}
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if v, ok := os.LookupEnv(k); ok {
			t.Errorf("%s=%q still set; children would inherit it", k, v)
		}
	}
}

// listeners is take's listeners, for the tests of sockets alone.
func listeners(getenv func(string) string, pid, first int) ([]*net.UnixListener, error) {
	p, err := take(getenv, pid, first)
	return p.Listeners, err
}

// TestTakeSetsParkedDescriptorsApart: descriptors a previous machqd
// parked come back by their names, not taken for sockets; the others are
// the listeners.
func TestTakeSetsParkedDescriptorsApart(t *testing.T) {
	sock, path := unixListener(t, "a.sock")
	memfd := func(name string) *os.File {
		fd, err := unix.MemfdCreate(name, 0)
		if err != nil {
			t.Fatal(err)
		}
		return os.NewFile(uintptr(fd), name)
	}
	inherit(t, memfd("page"), sock, memfd("state"))
	p, err := take(env(os.Getpid(), "3", "machq-handoff:machq:machq-state"), os.Getpid(), firstFD)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Listeners) != 1 || p.Listeners[0].Addr().String() != path {
		t.Fatalf("listeners %v, want the one socket at %s", p.Listeners, path)
	}
	p.Listeners[0].Close()
	if p.State == nil || int(p.State.Fd()) != firstFD+2 || len(p.Handoff) != 1 || int(p.Handoff[0].Fd()) != firstFD {
		t.Fatalf("state %v, handoff %v: want descriptor %d named machq-state and %d named machq-handoff", p.State, p.Handoff, firstFD+2, firstFD)
	}
}
