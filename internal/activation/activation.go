// Package activation takes over listening sockets passed in by a service
// manager (systemd socket activation), so that the manager owns the name
// and the server only answers: the Linux analog of checking a Mach port in
// with launchd.
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

// ErrNotUnix reports an inherited socket that is not a listening Unix
// stream socket.
var ErrNotUnix = errors.New("activation: inherited socket is not a listening Unix stream socket")

// Files returns the descriptors passed by the service manager, as files
// named after LISTEN_FDNAMES, or nil when LISTEN_PID does not name this
// process. It unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES so children
// do not inherit them, and marks every descriptor close-on-exec.
func Files() []*os.File {
	defer func() {
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
	}()
	pid, err := strconv.Atoi(os.Getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return nil
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		return nil
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	files := make([]*os.File, 0, n)
	for i := 0; i < n; i++ {
		fd := ListenFDsStart + i
		unix.CloseOnExec(fd)
		name := "LISTEN_FD_" + strconv.Itoa(fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		files = append(files, os.NewFile(uintptr(fd), name))
	}
	return files
}

// UnixListener returns the first socket passed by the service manager as
// a Unix listener, or nil and no error when none was passed. The listener
// does not remove its socket file on Close: the manager owns it. Any other
// inherited descriptors are closed.
func UnixListener() (*net.UnixListener, error) {
	files := Files()
	if len(files) == 0 {
		return nil, nil
	}
	for _, f := range files[1:] {
		f.Close()
	}
	f := files[0]
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNotUnix, f.Name(), err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok || l.Addr().Network() != "unix" {
		l.Close()
		return nil, fmt.Errorf("%w: %s is a %s socket; use ListenStream= with a path in the .socket unit", ErrNotUnix, f.Name(), l.Addr().Network())
	}
	ul.SetUnlinkOnClose(false)
	return ul, nil
}
