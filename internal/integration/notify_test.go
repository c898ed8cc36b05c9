package integration_test

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// notifySocket is a test double of systemd's notification socket: a Unix
// datagram socket that learns each sender's pid from its credentials, as
// the service manager does.
type notifySocket struct {
	path string
	c    *net.UnixConn
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if err != nil {
		t.Fatal(err)
	}
	return &notifySocket{path: path, c: c}
}

// next returns the next notification's assignments and its sender's pid.
func (n *notifySocket) next(t *testing.T) (map[string]string, int) {
	t.Helper()
	kv, pid, fds := n.receive(t)
	for _, fd := range fds {
		unix.Close(fd)
	}
	return kv, pid
}

// storedFDs returns the next notification's assignments and the
// descriptors it carries.
func (n *notifySocket) storedFDs(t *testing.T) (map[string]string, []int) {
	t.Helper()
	kv, _, fds := n.receive(t)
	return kv, fds
}

// receive reads the next notification: its assignments, its sender's pid
// and the descriptors it carries (FDSTORE=1).
func (n *notifySocket) receive(t *testing.T) (map[string]string, int, []int) {
	t.Helper()
	n.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(253*4)+unix.CmsgSpace(unix.SizeofUcred))
	k, oobn, _, _, err := n.c.ReadMsgUnix(b, oob)
	if err != nil {
		t.Fatalf("no notification from machqd: %v", err)
	}
	pid := 0
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if cred, err := unix.ParseUnixCredentials(&m); err == nil {
				pid = int(cred.Pid)
			}
			if r, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, r...)
			}
		}
	}
	kv := map[string]string{}
	for line := range strings.SplitSeq(string(b[:k]), "\n") {
		key, v, _ := strings.Cut(line, "=")
		kv[key] = v
	}
	return kv, pid, fds
}

// TestDaemonNotifiesTheServiceManager runs machqd as systemd runs a
// Type=notify unit: READY=1 comes from machqd itself once its socket
// serves, and STOPPING=1 when SIGTERM begins the shutdown.
func TestDaemonNotifiesTheServiceManager(t *testing.T) {
	ns := newNotifySocket(t)
	d := startDaemonEnv(t, []string{"NOTIFY_SOCKET=" + ns.path}, "")
	kv, pid := ns.next(t)
	if kv["READY"] != "1" || kv["MAINPID"] != strconv.Itoa(d.pid()) || pid != d.pid() {
		t.Fatalf("first notification %v from pid %d; want READY=1 and MAINPID from machqd (pid %d)\n%s", kv, pid, d.pid(), d.logs)
	}
	// Ready means served: a client gets through at once.
	c := dial(t, d.socket)
	if _, err := c.Send(ctxT(t), "ready", []byte("x")); err != nil {
		t.Fatalf("a store right after READY=1: %v", err)
	}
	c.Close()

	d.cmd.Process.Signal(syscall.SIGTERM)
	if kv, _ := ns.next(t); kv["STOPPING"] != "1" {
		t.Fatalf("after SIGTERM machqd sent %v, want STOPPING=1", kv)
	}
	<-d.exited
	if d.err != nil {
		t.Fatalf("machqd: %v\n%s", d.err, d.logs)
	}
}

// TestDaemonNotifiesReload restarts machqd in place (SIGUSR2, what the
// unit's ExecReload sends) under a notification socket: RELOADING=1, with
// the MONOTONIC_USEC Type=notify-reload requires, comes before the
// restart, and READY=1 from the same pid once the executable taking over
// serves, so systemctl reload returns only then.
func TestDaemonNotifiesReload(t *testing.T) {
	ns := newNotifySocket(t)
	d := startDaemonEnv(t, []string{"NOTIFY_SOCKET=" + ns.path}, "")
	if kv, _ := ns.next(t); kv["READY"] != "1" {
		t.Fatalf("first notification %v, want READY=1\n%s", kv, d.logs)
	}
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	d.cmd.Process.Signal(syscall.SIGUSR2)
	kv, pid := ns.next(t)
	usec, err := strconv.ParseInt(kv["MONOTONIC_USEC"], 10, 64)
	if kv["RELOADING"] != "1" || err != nil || usec < ts.Sec*1e6+ts.Nsec/1e3 || pid != d.pid() {
		t.Fatalf("after SIGUSR2 machqd sent %v from pid %d, want RELOADING=1 and MONOTONIC_USEC of now\n%s", kv, pid, d.logs)
	}
	// Status lines may come between; ns.next fails after 30 s without.
	for kv["READY"] != "1" {
		kv, pid = ns.next(t)
	}
	if pid != d.pid() || kv["MAINPID"] != strconv.Itoa(d.pid()) {
		t.Fatalf("READY=1 after the restart from pid %d (MAINPID %s), want machqd's %d", pid, kv["MAINPID"], d.pid())
	}
	c := dial(t, d.socket)
	if _, err := c.Send(ctxT(t), "after-reload", []byte("x")); err != nil {
		t.Fatalf("a store after the reload's READY=1: %v", err)
	}
}

// TestDaemonWatchdog runs machqd as systemd runs a unit with
// WatchdogSec=: it sends WATCHDOG=1 every half of WATCHDOG_USEC while it
// responds, and none when WATCHDOG_PID names another process.
func TestDaemonWatchdog(t *testing.T) {
	for _, forOther := range []bool{false, true} {
		ns := newNotifySocket(t)
		env := []string{"NOTIFY_SOCKET=" + ns.path, "WATCHDOG_USEC=100000"}
		if forOther {
			env = append(env, "WATCHDOG_PID=1")
		}
		d := startDaemonEnv(t, env, "")
		if kv, _ := ns.next(t); kv["READY"] != "1" {
			t.Fatalf("first notification %v, want READY=1", kv)
		}
		if !forOther {
			for range 3 {
				if kv, pid := ns.next(t); kv["WATCHDOG"] != "1" || pid != d.pid() {
					t.Fatalf("machqd sent %v from pid %d, want WATCHDOG=1 every 50ms", kv, pid)
				}
			}
		} else {
			// Ten of its intervals and nothing came: no ping is awaited,
			// so the absence is checked over a set time.
			ns.c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			b := make([]byte, 512)
			if n, _, err := ns.c.ReadFrom(b); err == nil {
				t.Fatalf("machqd sent %q for a watchdog of another process", b[:n])
			}
		}
		d.stop()
		if d.err != nil {
			t.Fatalf("machqd: %v\n%s", d.err, d.logs)
		}
	}
}
