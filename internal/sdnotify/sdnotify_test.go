package sdnotify

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// manager is a test double of a service manager's notification socket:
// a Unix datagram socket that receives what a notifier sends, with the
// descriptors attached.
type manager struct {
	c *net.UnixConn
}

func newManager(t *testing.T, name string) *manager {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return &manager{c: c}
}

// next returns the next notification's assignments and descriptors,
// waiting at most 10 s.
func (m *manager) next(t *testing.T) (map[string]string, []int) {
	t.Helper()
	m.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(16*4))
	n, oobn, _, _, err := m.c.ReadMsgUnix(b, oob)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	kv := map[string]string{}
	for line := range strings.SplitSeq(string(b[:n]), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("notification line %q is not KEY=VALUE", line)
		}
		kv[k] = v
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		for _, msg := range msgs {
			got, err := unix.ParseUnixRights(&msg)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, got...)
		}
	}
	for _, fd := range fds {
		t.Cleanup(func() { unix.Close(fd) })
	}
	return kv, fds
}

func TestReadyStoppingStatus(t *testing.T) {
	m := newManager(t, filepath.Join(t.TempDir(), "notify"))
	n, err := FromEnv()
	if err != nil || !n.Enabled() {
		t.Fatalf("FromEnv: %v, enabled %v", err, n.Enabled())
	}
	if err := n.Ready("serving /run/machq.sock\nsecond line"); err != nil {
		t.Fatal(err)
	}
	kv, _ := m.next(t)
	if kv["READY"] != "1" || kv["MAINPID"] == "" || kv["STATUS"] != "serving /run/machq.sock" {
		t.Fatalf("ready sent %v", kv)
	}
	if err := n.Status("3 queues"); err != nil {
		t.Fatal(err)
	}
	if kv, _ := m.next(t); kv["STATUS"] != "3 queues" {
		t.Fatalf("status sent %v", kv)
	}
	if err := n.Stopping("draining"); err != nil {
		t.Fatal(err)
	}
	if kv, _ := m.next(t); kv["STOPPING"] != "1" {
		t.Fatalf("stopping sent %v", kv)
	}
}

func TestAbstractSocket(t *testing.T) {
	m := newManager(t, "@machq-sdnotify-test-"+filepath.Base(t.TempDir()))
	n, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Status("abstract"); err != nil {
		t.Fatal(err)
	}
	if kv, _ := m.next(t); kv["STATUS"] != "abstract" {
		t.Fatalf("sent %v", kv)
	}
}

// TestStoreFDsPassesTheSameFiles: the manager receives descriptors of the
// very files stored, under the name given.
func TestStoreFDsPassesTheSameFiles(t *testing.T) {
	m := newManager(t, filepath.Join(t.TempDir(), "notify"))
	n, _ := FromEnv()
	f, err := os.CreateTemp(t.TempDir(), "page")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := n.StoreFDs("queue-jobs", int(f.Fd()), int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	kv, fds := m.next(t)
	if kv["FDSTORE"] != "1" || kv["FDNAME"] != "queue-jobs" || len(fds) != 2 {
		t.Fatalf("stored %v with %d descriptors", kv, len(fds))
	}
	var want, got unix.Stat_t
	unix.Fstat(int(f.Fd()), &want)
	unix.Fstat(fds[0], &got)
	if want.Dev != got.Dev || want.Ino != got.Ino {
		t.Fatal("the descriptor received is not of the file stored")
	}
	if err := n.RemoveFDs("queue-jobs"); err != nil {
		t.Fatal(err)
	}
	if kv, _ := m.next(t); kv["FDSTOREREMOVE"] != "1" || kv["FDNAME"] != "queue-jobs" {
		t.Fatalf("remove sent %v", kv)
	}
	for _, bad := range []string{"", "a:b", "with space", strings.Repeat("x", 256)} {
		if err := n.StoreFDs(bad, int(f.Fd())); err == nil {
			t.Errorf("descriptor name %q accepted", bad)
		}
	}
}

func TestWithoutAManagerNothingHappens(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n, err := FromEnv()
	if err != nil || n.Enabled() {
		t.Fatalf("FromEnv without NOTIFY_SOCKET: %v, enabled %v", err, n.Enabled())
	}
	if err := n.Ready("x"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", "vsock:2:1234")
	if _, err := FromEnv(); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("a vsock address: %v, want ErrUnsupported", err)
	}
}

func TestReloadingAndWatchdog(t *testing.T) {
	m := newManager(t, filepath.Join(t.TempDir(), "notify"))
	n, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	if err := n.Reloading("restarting"); err != nil {
		t.Fatal(err)
	}
	kv, _ := m.next(t)
	usec, err := strconv.ParseInt(kv["MONOTONIC_USEC"], 10, 64)
	if kv["RELOADING"] != "1" || kv["STATUS"] != "restarting" || err != nil || usec < ts.Sec*1e6+ts.Nsec/1e3 {
		t.Fatalf("reloading sent %v, want MONOTONIC_USEC of now", kv)
	}
	if err := n.Watchdog(); err != nil {
		t.Fatal(err)
	}
	if kv, _ := m.next(t); kv["WATCHDOG"] != "1" {
		t.Fatalf("watchdog sent %v", kv)
	}
}

func TestWatchdogInterval(t *testing.T) {
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
	}{
		{"", "", 0},
		{"30000000", "", 15 * time.Second},
		{"30000000", strconv.Itoa(os.Getpid()), 15 * time.Second},
		{"30000000", strconv.Itoa(os.Getpid() + 1), 0}, // meant for another process
		{"0", "", 0},
		{"garbage", "", 0},
	} {
		t.Setenv("WATCHDOG_USEC", tc.usec)
		t.Setenv("WATCHDOG_PID", tc.pid)
		if got := WatchdogInterval(); got != tc.want {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v, want %v", tc.usec, tc.pid, got, tc.want)
		}
	}
}
