package integration_test

import (
	"net"
	"os"
	"os/exec"
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
	socket := filepath.Join(t.TempDir(), "machq.sock")
	cmd := exec.Command(bin.machqd, "--socket", socket)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns.path)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()

	kv, pid := ns.next(t)
	if kv["READY"] != "1" || kv["MAINPID"] != strconv.Itoa(cmd.Process.Pid) || pid != cmd.Process.Pid {
		t.Fatalf("first notification %v from pid %d; want READY=1 and MAINPID from machqd (pid %d)\n%s", kv, pid, cmd.Process.Pid, logs)
	}
	// Ready means served: a client gets through at once.
	c := dial(t, socket)
	if _, err := c.Send(ctxT(t), "ready", []byte("x")); err != nil {
		t.Fatalf("a store right after READY=1: %v", err)
	}
	c.Close()

	cmd.Process.Signal(syscall.SIGTERM)
	if kv, _ := ns.next(t); kv["STOPPING"] != "1" {
		t.Fatalf("after SIGTERM machqd sent %v, want STOPPING=1", kv)
	}
	if err := <-exited; err != nil {
		t.Fatalf("machqd: %v\n%s", err, logs)
	}
	exited <- nil
}

// TestDaemonNotifiesReload restarts machqd in place (SIGUSR2, what the
// unit's ExecReload sends) under a notification socket: RELOADING=1, with
// the MONOTONIC_USEC Type=notify-reload requires, comes before the
// restart, and READY=1 from the same pid once the executable taking over
// serves, so systemctl reload returns only then.
func TestDaemonNotifiesReload(t *testing.T) {
	ns := newNotifySocket(t)
	socket := filepath.Join(t.TempDir(), "machq.sock")
	cmd := exec.Command(bin.machqd, "--socket", socket)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns.path)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	if kv, _ := ns.next(t); kv["READY"] != "1" {
		t.Fatalf("first notification %v, want READY=1\n%s", kv, logs)
	}
	before := time.Now()
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	cmd.Process.Signal(syscall.SIGUSR2)
	kv, pid := ns.next(t)
	usec, err := strconv.ParseInt(kv["MONOTONIC_USEC"], 10, 64)
	if kv["RELOADING"] != "1" || err != nil || usec < ts.Sec*1e6+ts.Nsec/1e3 || pid != cmd.Process.Pid {
		t.Fatalf("after SIGUSR2 machqd sent %v from pid %d, want RELOADING=1 and MONOTONIC_USEC of now\n%s", kv, pid, logs)
	}
	for {
		kv, pid = ns.next(t)
		if kv["READY"] == "1" {
			break
		}
		if time.Since(before) > 30*time.Second {
			t.Fatalf("no READY=1 after the restart\n%s", logs)
		}
	}
	if pid != cmd.Process.Pid || kv["MAINPID"] != strconv.Itoa(cmd.Process.Pid) {
		t.Fatalf("READY=1 after the restart from pid %d (MAINPID %s), want machqd's %d", pid, kv["MAINPID"], cmd.Process.Pid)
	}
	c := dial(t, socket)
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
		socket := filepath.Join(t.TempDir(), "machq.sock")
		cmd := exec.Command(bin.machqd, "--socket", socket)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns.path, "WATCHDOG_USEC=100000")
		if forOther {
			cmd.Env = append(cmd.Env, "WATCHDOG_PID=1")
		}
		logs := &syncBuffer{}
		cmd.Stderr = logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		if kv, _ := ns.next(t); kv["READY"] != "1" {
			t.Fatalf("first notification %v, want READY=1", kv)
		}
		if !forOther {
			for range 3 {
				if kv, pid := ns.next(t); kv["WATCHDOG"] != "1" || pid != cmd.Process.Pid {
					t.Fatalf("machqd sent %v from pid %d, want WATCHDOG=1 every 50ms", kv, pid)
				}
			}
		} else {
			// Ten intervals without a ping, then the STOPPING=1 of a
			// SIGTERM: nothing came in between.
			deadline := time.Now().Add(500 * time.Millisecond)
			ns.c.SetReadDeadline(deadline)
			b := make([]byte, 512)
			if n, _, err := ns.c.ReadFrom(b); err == nil {
				t.Fatalf("machqd sent %q for a watchdog of another process", b[:n])
			}
		}
		cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			t.Fatalf("machqd: %v\n%s", err, logs)
		}
	}
}
