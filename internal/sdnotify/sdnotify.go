// Package sdnotify tells the service manager that started the server how
// it is doing, by sd_notify(3)'s protocol: datagrams of newline-separated
// KEY=VALUE assignments sent to the Unix datagram socket NOTIFY_SOCKET
// names, with descriptors attached for the manager to keep (the file
// descriptor store). Under systemd a unit of Type=notify learns from
// READY=1 that the socket is served, from RELOADING=1 that a restart in
// place began, from STOPPING=1 that a shutdown began, and from WATCHDOG=1
// that the server still responds; without NOTIFY_SOCKET every call does
// nothing.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnsupported: NOTIFY_SOCKET names an address this package cannot
// reach (an AF_VSOCK one).
var ErrUnsupported = errors.New("sdnotify: unsupported NOTIFY_SOCKET address")

// Notifier sends notifications to one service manager.
type Notifier struct {
	addr *net.UnixAddr // nil: nobody to notify
}

// FromEnv returns the notifier NOTIFY_SOCKET names: an absolute path, or
// an abstract socket written with a leading '@'. Without NOTIFY_SOCKET it
// returns a notifier whose calls do nothing.
func FromEnv() (*Notifier, error) {
	v := os.Getenv("NOTIFY_SOCKET")
	switch {
	case v == "":
		return &Notifier{}, nil
	case v[0] == '/' || v[0] == '@':
		// The net package reads a leading '@' as the abstract namespace.
		return &Notifier{addr: &net.UnixAddr{Name: v, Net: "unixgram"}}, nil
	default:
		return nil, fmt.Errorf("%w: %q (give an absolute path or @abstract)", ErrUnsupported, v)
	}
}

// Enabled reports whether there is a manager to notify.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != nil }

// Send sends one notification, state being newline-separated KEY=VALUE
// assignments, with fds attached (for FDSTORE=1). The descriptors stay
// the caller's: the manager receives duplicates.
func (n *Notifier) Send(state string, fds ...int) error {
	if !n.Enabled() {
		return nil
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sdnotify: %w", os.NewSyscallError("socket", err))
	}
	defer unix.Close(fd)
	name := n.addr.Name
	if name[0] == '@' {
		name = "\x00" + name[1:] // the abstract namespace
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for {
		err = unix.Sendmsg(fd, []byte(state), oob, &unix.SockaddrUnix{Name: name}, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("sdnotify: sending to %s: %w", n.addr.Name, os.NewSyscallError("sendmsg", err))
	}
	return nil
}

// Ready says the server is serving, with a status line for systemctl
// status.
func (n *Notifier) Ready(status string) error {
	return n.Send("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()) + "\nSTATUS=" + oneLine(status))
}

// Reloading says the service is reloading (for machqd, restarting in
// place): the manager holds systemctl reload until the next Ready.
// MONOTONIC_USEC, which Type=notify-reload requires, is sent with it.
func (n *Notifier) Reloading(status string) error {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return err
	}
	usec := ts.Sec*1_000_000 + ts.Nsec/1_000
	return n.Send("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(usec, 10) + "\nSTATUS=" + oneLine(status))
}

// Stopping says a shutdown began.
func (n *Notifier) Stopping(status string) error {
	return n.Send("STOPPING=1\nSTATUS=" + oneLine(status))
}

// Status updates the status line.
func (n *Notifier) Status(status string) error {
	return n.Send("STATUS=" + oneLine(status))
}

// StoreFDs asks the manager to keep fds under name in its file descriptor
// store (the unit needs FileDescriptorStoreMax= above 0): it passes them
// back, in LISTEN_FDS and LISTEN_FDNAMES, when it starts the service
// again. They go in messages of at most MaxFDsPerMessage descriptors,
// with FDPOLL=0: the manager must not drop a file it cannot poll (a
// memfd, a directory) for looking idle.
func (n *Notifier) StoreFDs(name string, fds ...int) error {
	if err := checkName(name); err != nil {
		return err
	}
	for len(fds) > 0 {
		k := min(len(fds), MaxFDsPerMessage)
		if err := n.Send("FDSTORE=1\nFDPOLL=0\nFDNAME="+name, fds[:k]...); err != nil {
			return err
		}
		fds = fds[k:]
	}
	return nil
}

// MaxFDsPerMessage is the most descriptors one message carries: the
// kernel's limit on SCM_RIGHTS (SCM_MAX_FD) is 253.
const MaxFDsPerMessage = 253

// RemoveFDs asks the manager to close and forget the descriptors it keeps
// under name.
func (n *Notifier) RemoveFDs(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	return n.Send("FDSTOREREMOVE=1\nFDNAME=" + name)
}

// checkName enforces sd_pid_notify_with_fds(3)'s rule for FDNAME: at most
// 255 printable ASCII characters, no colon.
func checkName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("sdnotify: descriptor name of %d bytes: give 1 to 255", len(name))
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return fmt.Errorf("sdnotify: descriptor name %q: printable ASCII without spaces or ':' only", name)
		}
	}
	return nil
}

// oneLine keeps a status to its first line: a newline would start another
// assignment.
func oneLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// WatchdogInterval returns how often the service manager wants to hear
// WATCHDOG=1 (WatchdogSec=): half the timeout WATCHDOG_USEC gives, when
// WATCHDOG_PID is unset or names this process; 0 when it wants nothing.
func WatchdogInterval() time.Duration {
	if p := os.Getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(os.Getpid()) {
		return 0
	}
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}

// Watchdog tells the manager the service is alive (WATCHDOG=1).
func (n *Notifier) Watchdog() error {
	return n.Send("WATCHDOG=1")
}
