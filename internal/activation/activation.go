// Package activation takes over listening sockets passed in by a service
// manager (systemd socket activation), so that the manager owns the name
// and the server only answers: the Linux analog of checking a Mach port in
// with launchd.
//
// The protocol is sd_listen_fds(3)'s: LISTEN_PID names the process the
// sockets are for, LISTEN_FDS counts them from descriptor 3 on, and
// LISTEN_FDNAMES optionally names them, separated by colons.
package activation

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ListenFDsStart is the first inherited descriptor; it corresponds to
// SD_LISTEN_FDS_START in sd-daemon.h.
const ListenFDsStart = 3

// ErrNotUnix reports an inherited descriptor that is not a listening Unix
// stream socket.
var ErrNotUnix = errors.New("activation: inherited descriptor is not a listening Unix stream socket")

// ErrBadEnvironment reports LISTEN_FDS or LISTEN_FDNAMES that cannot be
// what a service manager sets for this process.
var ErrBadEnvironment = errors.New("activation: malformed LISTEN_FDS environment")

// maxFDs bounds LISTEN_FDS, so a corrupt value cannot make the server
// adopt every descriptor number it can count. The pages of a restart
// parked in the file descriptor store come this way too: one each.
const maxFDs = 1 << 20

// Names of the descriptors machqd parks in the service manager's file
// descriptor store when it stops for a restart (docs/RESTART.md): the
// state, and the descriptors it names.
const (
	StateName   = "machq-state"
	HandoffName = "machq-handoff"
)

// Passed is what a service manager passed: listening sockets, and what a
// previous machqd parked in its file descriptor store.
type Passed struct {
	Listeners []*net.UnixListener
	State     *os.File   // the descriptor named StateName; nil if none
	Handoff   []*os.File // those named HandoffName
}

// Take returns what the service manager passed, or nothing and no error
// when LISTEN_PID does not name this process. Descriptors named
// StateName and HandoffName (LISTEN_FDNAMES) are returned as they are;
// every other one must be a listening Unix stream socket (ListenStream=
// with a path, Accept=no), returned as a listener in order: anything else
// is an error that names the descriptor, and then every inherited
// descriptor is closed.
//
// The listeners do not remove their socket files on Close: the manager
// owns them. Take unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES so
// that children do not inherit them, and marks the descriptors
// close-on-exec. Call it once.
func Take() (Passed, error) {
	defer func() {
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
	}()
	return take(os.Getenv, os.Getpid(), ListenFDsStart)
}

// take is Take reading the environment from getenv, for process pid, with
// the inherited descriptors numbered from first.
func take(getenv func(string) string, pid, first int) (Passed, error) {
	files, names, err := inherited(getenv, pid, first)
	var p Passed
	if err != nil || len(files) == 0 {
		return p, err
	}
	var sockets []*os.File
	for i, f := range files {
		switch names[i] {
		case StateName:
			if p.State != nil {
				p.State.Close()
			}
			p.State = f
		case HandoffName:
			p.Handoff = append(p.Handoff, f)
		default:
			sockets = append(sockets, f)
		}
	}
	p.Listeners, err = listenersOf(sockets)
	if err != nil {
		if p.State != nil {
			p.State.Close()
		}
		for _, f := range p.Handoff {
			f.Close()
		}
		return Passed{}, err
	}
	return p, nil
}

// listenersOf takes each of files for a listening socket; on an error,
// every one is closed.
func listenersOf(files []*os.File) ([]*net.UnixListener, error) {
	var ls []*net.UnixListener
	for i, f := range files {
		l, err := listener(f)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			for _, f := range files[i:] {
				f.Close()
			}
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// inherited returns the descriptors LISTEN_PID and LISTEN_FDS
// describe, as files named after LISTEN_FDNAMES, each marked
// close-on-exec, and their LISTEN_FDNAMES names ("" where none).
func inherited(getenv func(string) string, pid, first int) ([]*os.File, []string, error) {
	pidText, nText := getenv("LISTEN_PID"), getenv("LISTEN_FDS")
	if pidText == "" || nText == "" {
		return nil, nil, nil
	}
	to, err := strconv.Atoi(pidText)
	if err != nil || to != pid {
		// Meant for another process (a parent that exec'd us without
		// clearing them): not ours to take.
		return nil, nil, nil
	}
	n, err := strconv.Atoi(nText)
	if err != nil || n < 0 || n > maxFDs {
		return nil, nil, fmt.Errorf("%w: LISTEN_FDS=%q is not a count of descriptors", ErrBadEnvironment, nText)
	}
	var names []string
	if v := getenv("LISTEN_FDNAMES"); v != "" {
		names = strings.Split(v, ":")
	}
	files := make([]*os.File, 0, n)
	fdNames := make([]string, n)
	for i := range n {
		fd := first + i
		if i < len(names) {
			fdNames[i] = names[i]
		}
		stored := fdNames[i] == StateName || fdNames[i] == HandoffName
		var err error
		if stored {
			_, err = unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0) // open?
		} else {
			err = unix.SetNonblock(fd, true)
		}
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, nil, fmt.Errorf("%w: LISTEN_FDS=%d but descriptor %d is not open: %v", ErrBadEnvironment, n, fd, err)
		}
		unix.CloseOnExec(fd)
		name := "descriptor " + strconv.Itoa(fd)
		if fdNames[i] != "" {
			name = fmt.Sprintf("descriptor %d (%s)", fd, fdNames[i])
		}
		files = append(files, os.NewFile(uintptr(fd), name))
	}
	return files, fdNames, nil
}

// listener checks that f is a listening Unix stream socket and returns it
// as a listener; f is closed either way.
func listener(f *os.File) (*net.UnixListener, error) {
	defer f.Close()
	fd := int(f.Fd())
	if err := expect(fd, unix.SO_DOMAIN, unix.AF_UNIX, "not a Unix socket: use ListenStream= with a path in the .socket unit"); err != nil {
		return nil, fmt.Errorf("%w: %s is %v", ErrNotUnix, f.Name(), err)
	}
	if err := expect(fd, unix.SO_TYPE, unix.SOCK_STREAM, "not a stream socket: use ListenStream=, not ListenSequentialPacket= or ListenDatagram="); err != nil {
		return nil, fmt.Errorf("%w: %s is %v", ErrNotUnix, f.Name(), err)
	}
	if err := expect(fd, unix.SO_ACCEPTCONN, 1, "a connection, not a listening socket: machqd serves a whole socket, so set Accept=no in the .socket unit"); err != nil {
		return nil, fmt.Errorf("%w: %s is %v", ErrNotUnix, f.Name(), err)
	}
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNotUnix, f.Name(), err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("%w: %s is a %s socket", ErrNotUnix, f.Name(), l.Addr().Network())
	}
	ul.SetUnlinkOnClose(false)
	return ul, nil
}

// expect checks that socket option opt of fd is want, and otherwise
// returns an error saying what fd is instead.
func expect(fd, opt, want int, otherwise string) error {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, opt)
	if errors.Is(err, unix.ENOTSOCK) {
		return errors.New("not a socket: the service manager passed something else; check the .socket unit")
	}
	if err != nil {
		return err
	}
	if v != want {
		return errors.New(otherwise)
	}
	return nil
}
