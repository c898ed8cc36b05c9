package integration_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
)

// restartPayload is the payload of message k of producer p: small ones
// inline, every tenth a page.
func restartPayload(p, k int) []byte {
	head := fmt.Sprintf("p%d-%d;", p, k)
	if k%10 != 9 {
		return []byte(head)
	}
	b := bytes.Repeat([]byte{byte(k)}, 2<<20) // past --max-inline: a page
	copy(b, head)
	return b
}

// restartKey returns the producer and number a payload names.
func restartKey(b []byte) string {
	k, _, _ := bytes.Cut(b, []byte(";"))
	return string(k)
}

// fillKeep stores messages in memory-only queues that nobody takes during
// a restart: a plain queue with inline and page messages, and a queue
// with two consumer groups (one of them consumed part way). It returns a
// check of what must come back.
func fillKeep(t *testing.T, c *machq.Client) func(c *machq.Client) {
	t.Helper()
	ctx := ctxT(t)
	var want [][]byte
	for i := range 6 {
		p := []byte(fmt.Sprintf("keep-%d", i))
		if i%3 == 2 {
			p = bytes.Repeat(p, 100000) // a page
		}
		if _, err := c.Send(ctx, "keep", p); err != nil {
			t.Fatal(err)
		}
		want = append(want, p)
	}
	for _, g := range []string{"a", "b"} {
		if _, _, err := c.CreateGroup(ctx, "fan", g, false); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 {
		if _, err := c.Send(ctx, "fan", []byte(fmt.Sprintf("fan-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	d, err := c.Reserve(ctx, "fan", &machq.AckOptions{Group: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()
	return func(c *machq.Client) {
		t.Helper()
		for i, p := range want {
			m, err := c.Retrieve(ctx, "keep")
			if err != nil {
				t.Fatalf("message %d of the memory-only queue after the restart: %v", i, err)
			}
			if !bytes.Equal(m.Bytes(), p) || m.Seq != uint64(i+1) {
				t.Errorf("message %d came back as %d bytes, seq %d; want %d bytes, seq %d", i, len(m.Bytes()), m.Seq, len(p), i+1)
			}
			m.Close()
		}
		for g, first := range map[string]int{"a": 1, "b": 0} {
			for i := first; i < 4; i++ {
				d, err := c.Reserve(ctx, "fan", &machq.AckOptions{Group: g})
				if err != nil {
					t.Fatalf("group %s, message %d after the restart: %v", g, i, err)
				}
				if want := fmt.Sprintf("fan-%d", i); string(d.Bytes()) != want || d.Seq != uint64(i+1) {
					t.Errorf("group %s got %q seq %d, want %q seq %d", g, d.Bytes(), d.Seq, want, i+1)
				}
				d.Ack(ctx)
				d.Close()
			}
		}
		if seq, err := c.Send(ctx, "keep", []byte("next")); err != nil || seq != uint64(len(want)+1) {
			t.Errorf("a store after the restart got seq %d (%v), want %d: sequence numbers go on", seq, err, len(want)+1)
		}
	}
}

// TestRestartInPlaceUnderLoad restarts machqd with SIGUSR2 several times
// while producers store and consumers take in ack mode through
// reconnecting clients: every store is acknowledged exactly once (no
// store is reported of unknown outcome: the server says what it did not
// read), every message is acknowledged exactly once, the pid stays, and
// memory-only queues nobody touched come back whole.
func TestRestartInPlaceUnderLoad(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	setup := dial(t, d.socket)
	check := fillKeep(t, setup)
	setup.Close()

	const producers, consumers, perProducer, restarts = 3, 2, 300, 3
	var (
		mu       sync.Mutex
		acked    = map[string]int{}
		stored   = map[string]int{}
		failures []string
		wg       sync.WaitGroup
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	var dials sync.Map
	for p := range producers {
		wg.Go(func() {
			r, err := machq.DialReconnecting(ctx, d.socket)
			if err != nil {
				fail("producer %d: %v", p, err)
				return
			}
			defer func() { dials.Store(fmt.Sprint("p", p), r.Dials()); r.Close() }()
			for k := range perProducer {
				b := restartPayload(p, k)
				if _, err := r.Send(ctx, "work", b); err != nil {
					fail("producer %d, message %d: %v", p, k, err)
					return
				}
				mu.Lock()
				stored[restartKey(b)]++
				mu.Unlock()
			}
		})
	}
	consumed := make(chan struct{})
	var cwg sync.WaitGroup
	for i := range consumers {
		cwg.Go(func() {
			r, err := machq.DialReconnecting(ctx, d.socket)
			if err != nil {
				fail("consumer %d: %v", i, err)
				return
			}
			defer r.Close()
			for {
				wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
				dl, err := r.ReserveWait(wctx, "work", nil)
				wcancel()
				if err != nil {
					select {
					case <-consumed:
						return
					default:
					}
					if ctx.Err() != nil {
						fail("consumer %d: %v", i, err)
						return
					}
					continue
				}
				key := restartKey(dl.Bytes())
				want := restartPayload(0, 0)
				var p, k int
				if _, err := fmt.Sscanf(key, "p%d-%d", &p, &k); err == nil {
					want = restartPayload(p, k)
				}
				if !bytes.Equal(dl.Bytes(), want) {
					fail("consumer %d: message %s came with other bytes (%d)", i, key, len(dl.Bytes()))
				}
				if err := dl.Ack(ctx); err == nil {
					mu.Lock()
					acked[key]++
					mu.Unlock()
				} else if !errors.Is(err, machq.ErrClosed) {
					fail("consumer %d: ack of %s: %v", i, key, err)
				}
				dl.Close()
			}
		})
	}

	// Restart while the load runs: each time, once more is stored.
	pid := d.cmd.Process.Pid
	watch := dial(t, d.socket)
	for n := range restarts {
		mark := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(stored)
		}()
		waitFor(t, "more stores before a restart", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(stored) > mark+20 || len(failures) > 0
		})
		if err := d.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		// The old connection ends; a new one is served by the successor.
		waitFor(t, fmt.Sprintf("restart %d to end the connections", n+1), func() bool {
			_, err := watch.Stat(ctx)
			return err != nil
		})
		watch.Close()
		watch = dial(t, d.socket)
		if !d.running() || d.cmd.Process.Pid != pid {
			t.Fatalf("machqd is not running under pid %d after restart %d", pid, n+1)
		}
	}
	watch.Close()
	wg.Wait()
	waitFor(t, "every message to be acknowledged", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= len(stored) || len(failures) > 0
	})
	close(consumed)
	cwg.Wait()

	mu.Lock()
	defer mu.Unlock()
	for _, f := range failures {
		t.Error(f)
	}
	if len(stored) != producers*perProducer {
		t.Errorf("%d messages stored, want %d", len(stored), producers*perProducer)
	}
	for k, n := range stored {
		if n != 1 {
			t.Errorf("message %s stored %d times", k, n)
		}
		if acked[k] != 1 {
			t.Errorf("message %s acknowledged %d times, want once", k, acked[k])
		}
	}
	for k := range acked {
		if stored[k] == 0 {
			t.Errorf("message %s acknowledged but never stored", k)
		}
	}
	reconnected := 0
	dials.Range(func(_, v any) bool {
		if v.(int) > 1 {
			reconnected++
		}
		return true
	})
	if reconnected == 0 {
		t.Errorf("no producer reconnected: the restarts did not happen under load")
	}
	c := dial(t, d.socket)
	defer c.Close()
	check(c)
	st, err := c.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range st.Queues {
		if q.Name == "work" && (q.Messages != 0 || q.Pending != 0) {
			t.Errorf("queue work holds %d messages and %d pending after everything was acknowledged", q.Messages, q.Pending)
		}
	}
	t.Logf("%d restarts under load: %d messages stored and acknowledged once each", restarts, len(acked))
}

// TestRestartRefusedByABadExecutable: SIGUSR2 when the executable cannot
// start with machqd's flags leaves machqd serving, nothing disturbed.
func TestRestartRefusedByABadExecutable(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "machqd")
	copyFile(t, bin.machqd, exe, 0o755)
	socket := filepath.Join(dir, "machq.sock")
	cmd := exec.Command(exe, "--socket", socket)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	c := dialWait(t, socket)
	defer c.Close()
	ctx := ctxT(t)
	if _, err := c.Send(ctx, "q", []byte("x")); err != nil {
		t.Fatal(err)
	}
	// An upgrade that is not a machqd.
	os.Remove(exe)
	if err := os.WriteFile(exe, []byte("#!/bin/sh\necho not machqd >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGUSR2)
	waitFor(t, "machqd to refuse the restart", func() bool {
		return strings.Contains(logs.String(), "not restarting")
	})
	if !strings.Contains(logs.String(), "not machqd") {
		t.Errorf("the refusal does not say what the executable said:\n%s", logs)
	}
	// The same connection goes on.
	if m, err := c.Retrieve(ctx, "q"); err != nil || string(m.Bytes()) != "x" {
		t.Fatalf("after a refused restart: %v", err)
	}
}

// dialWait dials socket until a server answers there.
func dialWait(t *testing.T, socket string) *machq.Client {
	t.Helper()
	var c *machq.Client
	waitFor(t, "machqd to answer", func() bool {
		var err error
		c, err = machq.Dial(ctxT(t), socket)
		return err == nil
	})
	return c
}

// TestRestartThroughTheFileDescriptorStore stops machqd as systemd does
// for a restart of a unit with FileDescriptorStoreMax=, against a test
// double of the service manager's notification socket (no service
// manager runs here): SIGTERM parks the state and the descriptors it
// names (FDSTORE=1, FDPOLL=0); the double starts the next machqd with
// them as systemd would (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID), and it
// takes them over, asks the store to forget them, and serves the same
// socket with every memory-only message.
func TestRestartThroughTheFileDescriptorStore(t *testing.T) {
	ns := newNotifySocket(t)
	socket := filepath.Join(t.TempDir(), "machq.sock")
	env := append(os.Environ(), "NOTIFY_SOCKET="+ns.path, "FDSTORE=64")
	cmd := exec.Command(bin.machqd, "--socket", socket)
	cmd.Env = env
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if kv, _ := ns.storedFDs(t); kv["READY"] != "1" {
		t.Fatalf("first notification %v, want READY=1\n%s", kv, logs)
	}
	c := dial(t, socket)
	check := fillKeep(t, c)
	c.Close()

	cmd.Process.Signal(syscall.SIGTERM)
	var stored, state []int
	for state == nil {
		kv, fds := ns.storedFDs(t)
		switch {
		case kv["STOPPING"] == "1", kv["FDSTOREREMOVE"] == "1":
		case kv["FDSTORE"] == "1" && kv["FDPOLL"] != "0":
			t.Fatalf("%v: descriptors stored without FDPOLL=0; memfds cannot be polled", kv)
		case kv["FDSTORE"] == "1" && kv["FDNAME"] == "machq-handoff":
			stored = append(stored, fds...)
		case kv["FDSTORE"] == "1" && kv["FDNAME"] == "machq-state" && len(fds) == 1:
			state = fds
		default:
			t.Fatalf("unexpected notification %v with %d descriptors\n%s", kv, len(fds), logs)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("machqd parking its queues: %v\n%s", err, logs)
	}
	// 1 listening socket, its lock and directory, 2 pages.
	if len(stored) != 5 {
		t.Errorf("%d descriptors parked besides the state, want 5", len(stored))
	}
	if _, err := os.Stat(socket); err != nil {
		t.Errorf("the socket file is gone while its listener is parked: %v", err)
	}

	// Start again as systemd does: descriptors from 3 on, named.
	files := make([]*os.File, 0, len(stored)+1)
	names := make([]string, 0, len(stored)+1)
	for _, fd := range stored {
		files = append(files, os.NewFile(uintptr(fd), "stored"))
		names = append(names, "machq-handoff")
	}
	files = append(files, os.NewFile(uintptr(state[0]), "state"))
	names = append(names, "machq-state")
	next := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, bin.machqd, "--socket", socket)
	next.Env = append(env, "LISTEN_FDS="+strconv.Itoa(len(files)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	next.ExtraFiles = files
	nextLogs := &syncBuffer{}
	next.Stderr = nextLogs
	if err := next.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close() // the double's copies; the store would keep them until told
	}
	defer func() { next.Process.Kill(); next.Wait() }()
	readyForgetting(t, func() map[string]string { kv, _ := ns.storedFDs(t); return kv }, nextLogs)
	c = dial(t, socket)
	defer c.Close()
	check(c)
	if !strings.Contains(nextLogs.String(), "took over from the previous server") {
		t.Errorf("the new machqd does not say it took over:\n%s", nextLogs)
	}
}

// TestMachqRestart: machq restart restarts machqd in place and waits for
// it, and what memory-only queues held is still there; against a machqd
// that refuses (the executable on disk cannot take over), it fails
// saying so, and the server goes on.
func TestMachqRestart(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	c := dial(t, d.socket)
	ctx := ctxT(t)
	if _, err := c.Send(ctx, "kept", []byte("through the restart")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	r := runCLI(t, nil, "restart", "--socket", d.socket)
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("machqd (pid %d) restarted in place", d.cmd.Process.Pid)) {
		t.Fatalf("machq restart: exit %d\nstdout %s\nstderr %s\n%s", r.code, r.stdout, r.stderr, d.logs)
	}
	c = dial(t, d.socket)
	defer c.Close()
	if m, err := c.Retrieve(ctx, "kept"); err != nil || string(m.Bytes()) != "through the restart" {
		t.Fatalf("after machq restart: %v", err)
	}

	// A machqd whose executable on disk is no longer one.
	dir := t.TempDir()
	exe := filepath.Join(dir, "machqd")
	copyFile(t, bin.machqd, exe, 0o755)
	socket := filepath.Join(dir, "machq.sock")
	cmd := exec.Command(exe, "--socket", socket, "--log-level", "warn")
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	dialWait(t, socket).Close()
	os.Remove(exe)
	if err := os.WriteFile(exe, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, nil, "restart", "--socket", socket, "--timeout", "2s")
	if r.code != 1 || !strings.Contains(r.stderr, "refused to restart") {
		t.Fatalf("machq restart of a machqd that refuses: exit %d, stderr %q", r.code, r.stderr)
	}
	dialWait(t, socket).Close() // still serving
}

// TestStopDuringRestart: a SIGTERM that comes while machqd restarts in
// place (here, while the executable on disk is being checked) is not
// lost across execve: the successor takes over, then stops, as asked.
func TestStopDuringRestart(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "machqd")
	copyFile(t, bin.machqd, exe, 0o755)
	socket := filepath.Join(dir, "machq.sock")
	cmd := exec.Command(exe, "--socket", socket)
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
	dialWait(t, socket).Close()
	// The executable on disk now holds its check until told to go on.
	script := fmt.Sprintf(`#!/bin/sh
for a in "$@"; do
  if [ "$a" = "--check-restart" ]; then
    : > %[1]s/probing
    while [ ! -e %[1]s/go ]; do sleep 0.01; done
  fi
done
exec %[2]s "$@"
`, dir, bin.machqd)
	os.Remove(exe)
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGUSR2)
	waitFor(t, "the restart's check of the executable", func() bool {
		_, err := os.Stat(filepath.Join(dir, "probing"))
		return err == nil
	})
	cmd.Process.Signal(syscall.SIGTERM)
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("machqd: %v\n%s", err, logs)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("machqd still runs a minute after a SIGTERM sent during its restart\n%s", logs)
	}
	if !strings.Contains(logs.String(), "a stop signal came during the restart") {
		t.Errorf("the successor does not say it stops for the signal:\n%s", logs)
	}
}

// TestUnusableParkedStateIsGivenBack: a state in the descriptor store
// that cannot be read (here, not a state at all) is reported, the store
// is told to forget it, and machqd starts afresh on its socket.
func TestUnusableParkedStateIsGivenBack(t *testing.T) {
	ns := newNotifySocket(t)
	socket := filepath.Join(t.TempDir(), "machq.sock")
	junk, err := unix.MemfdCreate("junk", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(junk, []byte("not a machq state")); err != nil {
		t.Fatal(err)
	}
	state := os.NewFile(uintptr(junk), "junk")
	defer state.Close()
	next := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, bin.machqd, "--socket", socket)
	next.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns.path, "LISTEN_FDS=1", "LISTEN_FDNAMES=machq-state")
	next.ExtraFiles = []*os.File{state}
	logs := &syncBuffer{}
	next.Stderr = logs
	if err := next.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { next.Process.Kill(); next.Wait() }()
	readyForgetting(t, func() map[string]string { kv, _ := ns.next(t); return kv }, logs)
	if !strings.Contains(logs.String(), "cannot take over") {
		t.Errorf("machqd does not report the unusable state:\n%s", logs)
	}
	dial(t, socket).Close()
}

// readyForgetting reads a restarted machqd's notifications, from recv,
// up to READY=1, and checks that before it the descriptor store was asked
// to forget both parked descriptors, machq-state and machq-handoff.
func readyForgetting(t *testing.T, recv func() map[string]string, logs fmt.Stringer) {
	t.Helper()
	removed := map[string]bool{}
	for {
		kv := recv()
		if kv["FDSTOREREMOVE"] == "1" {
			removed[kv["FDNAME"]] = true
			continue
		}
		if kv["READY"] != "1" {
			t.Fatalf("unexpected notification %v\n%s", kv, logs)
		}
		break
	}
	if !removed["machq-state"] || !removed["machq-handoff"] {
		t.Errorf("before READY=1 the store was asked to forget %v, want machq-state and machq-handoff", removed)
	}
}
