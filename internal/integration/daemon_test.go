package integration_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/procfs"
	"github.com/machq/machq/internal/wire"
	"golang.org/x/sys/unix"
)

// TestDaemonLogs: every step is logged at info with the peer's
// credentials from SO_PEERCRED, and --log-level warn keeps only problems.
func TestDaemonLogs(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "info")
	ctx := ctxT(t)
	c := dial(t, d.socket)
	if _, err := c.Send(ctx, "logged", []byte("x")); err != nil {
		t.Fatal(err)
	}
	m, err := c.Retrieve(ctx, "logged")
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	c.Close()
	creds := fmt.Sprintf("pid=%d uid=%d gid=%d", os.Getpid(), os.Getuid(), os.Getgid())
	for _, step := range []string{`"client connected"`, `"received a message"`, "enqueued", "dequeued", "responded", `"client gone; private queue freed"`} {
		waitFor(t, "the log of "+step, func() bool {
			for line := range strings.Lines(d.logs.String()) {
				if strings.Contains(line, "level=INFO msg="+step) && strings.Contains(line, creds) {
					return true
				}
			}
			return false
		})
	}

	quiet := startDaemon(t, "", "--log-level", "warn")
	c = dial(t, quiet.socket)
	if _, err := c.Send(ctx, "quiet", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Retrieve(ctx, "nothing-here"); !errors.Is(err, machq.ErrEmpty) {
		t.Fatal(err)
	}
	c.Close()
	quiet.stop()
	if logs := quiet.logs.String(); strings.Contains(logs, "level=INFO") || strings.Contains(logs, "level=DEBUG") {
		t.Errorf("--log-level warn logged info lines:\n%s", logs)
	}
}

// TestDaemonFlagErrors: a bad flag is one line naming the flag and what
// it wants, exit 2; --socket in a missing directory does not create it.
func TestDaemonFlagErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no", "such")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--bogus"}, 2, "unknown flag --bogus"},
		{[]string{"--max-message", "0"}, 2, "--max-message 0: must be at least 1 byte"},
		{[]string{"--max-inline", "2000000"}, 2, "--max-inline 2000000: must be from 0 to 1048576"},
		{[]string{"--shutdown-timeout", "soon"}, 2, "not a duration"},
		{[]string{"--max-queues", "many"}, 2, "--max-queues \"many\": not a whole number"},
		{[]string{"--socket", filepath.Join(missing, "s.sock")}, 1, "does not exist"},
		{[]string{"--sync", "nope"}, 2, "unknown sync policy"},
		{[]string{"--sync", "lossy-interval=2h", "--data-dir", t.TempDir()}, 2, "out of bounds"},
		{[]string{"--check-restart", "--max-message", "0"}, 2, "--max-message 0"},
	} {
		cmd := exec.Command(bin.machqd, append([]string{"--log-level", "warn"}, tc.args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("machqd %v: %v, stderr %q; want exit %d saying %q", tc.args, err, stderr.String(), tc.code, tc.want)
		}
		if n := strings.Count(strings.TrimSpace(stderr.String()), "\n"); n > 0 {
			t.Errorf("machqd %v: %d lines on stderr, want one:\n%s", tc.args, n+1, stderr.String())
		}
	}
	if _, err := os.Stat(filepath.Dir(missing)); !os.IsNotExist(err) {
		t.Errorf("machqd created the directory of a --socket path: %v", err)
	}
	out, err := exec.Command(bin.machqd, "--help").Output()
	if err != nil || !strings.Contains(string(out), "\n  --max-queues N") && !strings.Contains(string(out), "\n  --max-queues ") {
		t.Errorf("machqd --help: %v, %s", err, out)
	}
	if strings.Contains(string(out), "\n  -max-queues") {
		t.Errorf("machqd --help writes flags as -flag, not --flag as the README does:\n%s", out)
	}
}

// TestDaemonNoInline: --max-inline 0 makes every non-empty payload a page.
func TestDaemonNoInline(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn", "--max-inline", "0")
	ctx := ctxT(t)
	c := dial(t, d.socket)
	if c.MaxInline() != 0 {
		t.Fatalf("client learned max inline %d, want 0", c.MaxInline())
	}
	for _, p := range [][]byte{nil, []byte("x"), []byte("tiny")} {
		if _, err := c.Send(ctx, "q", p); err != nil {
			t.Fatalf("send %d bytes: %v", len(p), err)
		}
	}
	if st := d.stats(); st.Messages != 3 || st.Pages != 2 {
		t.Errorf("stats %+v; want 3 messages, the two non-empty ones as pages", st)
	}
}

// TestDaemonLargestPayload stores a payload of exactly the server's
// maximum (4 GiB by default) and takes it back; one byte more is refused
// before anything is sent. The payload is a sparse sealed memfd sent
// without a digest, so the test moves a descriptor, not 4 GiB.
func TestDaemonLargestPayload(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	ctx := ctxT(t)
	c, err := machq.Dial(ctx, d.socket, machq.WithDigest(machq.DigestNone))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const max = 4 << 30
	if got := c.MaxMessageSize(); got != max {
		t.Fatalf("server's maximum is %d, want the documented default %d", got, max)
	}
	n, _, err := c.SendFile(ctx, "huge", sealedSparse(t, max, "first", "last"))
	if err != nil || n != max {
		t.Fatalf("send %d bytes: %d, %v", max, n, err)
	}
	if st := d.stats(); st.Bytes != max || st.Pages != 1 {
		t.Errorf("stats %+v; want one page of %d bytes", st, max)
	}
	if rss := d.rss(); rss > 256<<20 {
		t.Errorf("server RSS %d MiB holding a 4 GiB page; it must not map it", rss>>20)
	}
	m, err := c.Retrieve(ctx, "huge")
	if err != nil {
		t.Fatal(err)
	}
	got := m.Bytes() // mapped lazily: only the pages read are touched
	if m.Len() != max || string(got[:5]) != "first" || string(got[max-4:]) != "last" {
		t.Errorf("retrieved %d bytes starting %q ending %q", m.Len(), got[:5], got[max-4:])
	}
	m.Close()

	if _, _, err := c.SendFile(ctx, "huge", sealedSparse(t, max+1, "", "")); !errors.Is(err, machq.ErrTooLarge) {
		t.Fatalf("send a %d-byte memfd: %v, want ErrTooLarge", max+1, err)
	}
	if _, _, err := c.SendFile(ctx, "huge", sparseFile(t, max+1)); !errors.Is(err, machq.ErrTooLarge) {
		t.Fatalf("SendFile of a %d-byte file: %v, want ErrTooLarge", max+1, err)
	}
	if st := d.stats(); st.Messages != 0 {
		t.Errorf("stats %+v after refused sends; want nothing stored", st)
	}
}

// sealedSparse returns a memfd of size bytes, sealed against write, grow
// and shrink, holding head at its start and tail at its end and nothing
// else: it occupies two pages of memory at most.
func sealedSparse(t *testing.T, size int64, head, tail string) *os.File {
	fd, err := unix.MemfdCreate("machq-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "sparse-memfd")
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(head), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(tail), size-int64(len(tail))); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		t.Fatal(err)
	}
	return f
}

// sparseFile returns a file of size bytes that occupies no disk.
func sparseFile(t *testing.T, size int64) *os.File {
	f, err := os.Create(filepath.Join(t.TempDir(), "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestDaemonAllowUID runs machqd with --allow-uid: the socket (and the
// directory machqd creates for it) let the allowed user through, who is
// served, while any other user is refused with DENIED. The clients are
// the real CLI run as those users.
func TestDaemonAllowUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run clients as other users")
	}
	const allowed, other = 65534, 65533
	// A directory every user may enter, holding the CLI binary and the
	// runtime directory machqd creates.
	shared := sharedDir(t, 0o755)
	cli := filepath.Join(shared, "machq")

	runtime := filepath.Join(shared, "run")
	cmd := exec.Command(bin.machqd, "--name", "shared", "--allow-uid", fmt.Sprint(allowed), "--log-level", "info")
	cmd.Env = append(os.Environ(), "MACHQ_RUNTIME_DIR="+runtime)
	logs := runCheckedIn(t, cmd)
	socket := filepath.Join(runtime, "shared.sock")

	mode := func(p string) os.FileMode {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode().Perm()
	}
	if m := mode(socket); m != 0o666 {
		t.Errorf("socket mode %04o with --allow-uid, want 0666", m)
	}
	if m := mode(runtime); m != 0o711 {
		t.Errorf("runtime directory mode %04o with --allow-uid, want 0711", m)
	}

	as := func(uid uint32, args ...string) (string, int) {
		c := exec.Command(cli, append(args, "--socket", socket, "--log-level", "warn")...)
		c.Stdin = strings.NewReader("from uid " + fmt.Sprint(uid))
		return runAs(t, c, uid)
	}
	if out, code := as(allowed, "send", "--queue", "shared"); code != 0 {
		t.Fatalf("allowed uid's send: exit %d: %s", code, out)
	}
	out, code := as(other, "send", "--queue", "shared")
	if code == 0 || !strings.Contains(strings.ToLower(out), "denied") {
		t.Fatalf("other uid's send: exit %d: %s; want a refusal saying denied", code, out)
	}
	if !strings.Contains(logs.String(), fmt.Sprintf("uid=%d", other)) {
		t.Errorf("the refusal of uid %d was not logged:\n%s", other, logs)
	}
	if out, code := as(allowed, "retrieve", "--queue", "shared"); code != 0 || out != fmt.Sprint("from uid ", allowed) {
		t.Fatalf("allowed uid's retrieve: exit %d: %q", code, out)
	}
}

// sharedDir returns a new directory with mode perm holding copies of the
// binaries every user may run, removed when the test ends.
func sharedDir(t *testing.T, perm os.FileMode) string {
	dir, err := os.MkdirTemp("", "machq-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	copyFile(t, bin.machq, filepath.Join(dir, "machq"), 0o755)
	copyFile(t, bin.machqd, filepath.Join(dir, "machqd"), 0o755)
	return dir
}

// TestDaemonRuntimeDirOfAUser: for a user other than root with neither
// MACHQ_RUNTIME_DIR nor XDG_RUNTIME_DIR, machqd checks in under
// machq-UID in the temporary directory, private to that user, and the
// CLI run by the same user finds it by name.
func TestDaemonRuntimeDirOfAUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the server as another user")
	}
	const uid = 65534
	tmp := sharedDir(t, os.ModeSticky|0o777) // a TMPDIR like /tmp
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MACHQ_RUNTIME_DIR=") && !strings.HasPrefix(kv, "XDG_RUNTIME_DIR=") && !strings.HasPrefix(kv, "TMPDIR=") {
			env = append(env, kv)
		}
	}
	env = append(env, "TMPDIR="+tmp)
	as := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}

	cmd := exec.Command(filepath.Join(tmp, "machqd"), "--name", "svc", "--log-level", "info")
	cmd.Env, cmd.SysProcAttr = env, as
	logs := runCheckedIn(t, cmd)
	dir := filepath.Join(tmp, fmt.Sprint("machq-", uid))
	socket := filepath.Join(dir, "svc.sock")
	if !strings.Contains(logs.String(), "socket="+socket) {
		t.Fatalf("machqd did not check in at %s:\n%s", socket, logs)
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); st.Mode().Perm() != 0o700 || sys.Uid != uid {
		t.Errorf("runtime directory mode %04o owner %d; want 0700 owned by %d", st.Mode().Perm(), sys.Uid, uid)
	}

	cli := exec.Command(filepath.Join(tmp, "machq"), "stat", "--name", "svc", "--json")
	cli.Env, cli.SysProcAttr = env, as
	if out, err := cli.CombinedOutput(); err != nil || !strings.Contains(string(out), `"clients":1`) {
		t.Errorf("machq stat --name svc as uid %d: %v: %s", uid, err, out)
	}
}

// runAs runs c as user uid (group uid) and returns its combined output
// and exit status.
func runAs(t *testing.T, c *exec.Cmd, uid uint32) (string, int) {
	t.Helper()
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err := c.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return string(out), exit.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// runCheckedIn starts cmd, a machqd checking in under a --name, and
// waits until it has. It is stopped with SIGTERM when the test ends, and
// must then exit 0. It returns the logs.
func runCheckedIn(t *testing.T, cmd *exec.Cmd) *syncBuffer {
	t.Helper()
	return runUntilLogged(t, cmd, "checked in")
}

// runUntilLogged starts cmd, a machqd logging at info level, and waits
// until its logs hold ready. It is stopped with SIGTERM when the test
// ends, and must then exit 0. It returns the logs.
func runUntilLogged(t *testing.T, cmd *exec.Cmd, ready string) *syncBuffer {
	t.Helper()
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			t.Errorf("machqd: %v\n%s", err, logs)
		}
	})
	waitFor(t, "machqd to log "+ready, func() bool { return strings.Contains(logs.String(), ready) })
	return logs
}

// copyFile copies src to dst with mode.
func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestDaemonSecondSignal: a graceful shutdown waits for responses to be
// flushed, here to a client that never reads; a second SIGTERM cuts it
// short, and machqd still exits 0 and removes its socket.
func TestDaemonSecondSignal(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "info", "--log-rate", "0", "--shutdown-timeout", "1h")
	conn, err := net.Dial("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// HELLO, then far more STATs than the socket buffers hold answers
	// for, never reading one.
	reqs := wire.AppendHello(nil, 0, wire.Hello{MinVersion: wire.Version, MaxVersion: wire.Version})
	for id := uint64(1); id <= 50000; id++ {
		reqs = wire.AppendStat(reqs, id)
	}
	go conn.Write(reqs) // blocks once the server stops reading; ends with conn
	waitFor(t, "the server to stop reading a client that does not read", func() bool {
		return strings.Count(d.logs.String(), "op=STAT") > 1000
	})

	d.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, "the graceful shutdown to begin", func() bool { return strings.Contains(d.logs.String(), "signal received") })
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.exited
	if d.err != nil {
		t.Fatalf("machqd exited with %v after a second SIGTERM", d.err)
	}
	for _, want := range []string{"second signal", "shutdown cut short"} {
		if !strings.Contains(d.logs.String(), want) {
			t.Errorf("logs lack %q", want)
		}
	}
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Errorf("socket file left after the second signal: %v", err)
	}
}

// TestDaemonNeverMapsPages: storing and handing back 256 MiB of pages
// does not raise the server's peak resident memory, which a server that
// mapped or read a page even briefly (to check a digest, say) would: the
// peak, reset before the work, catches memory released before it could
// be sampled.
func TestDaemonNeverMapsPages(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	ctx := ctxT(t)
	c := dial(t, d.socket)
	if err := procfs.ResetPeak(d.pid()); err != nil {
		t.Skipf("cannot reset the server's peak memory: %v", err)
	}
	before, err := procfs.PeakRSS(d.pid())
	if err != nil {
		t.Fatal(err)
	}
	const n, size = 4, 64 << 20
	for i := range n {
		p, err := machq.NewPage(size)
		if err != nil {
			t.Fatal(err)
		}
		p.Bytes()[i] = byte(i + 1)
		if _, err := c.SendPage(ctx, "big", p); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		m, err := c.Retrieve(ctx, "big")
		if err != nil {
			t.Fatal(err)
		}
		if m.Len() != size || m.Bytes()[i] != byte(i+1) {
			t.Errorf("message %d: %d bytes, wrong content", i, m.Len())
		}
		m.Close()
	}
	after, err := procfs.PeakRSS(d.pid())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("server peak RSS %d MiB before, %d MiB after passing %d MiB of pages through", before>>20, after>>20, n*size>>20)
	if after-before > 32<<20 {
		t.Errorf("server peak RSS rose %d MiB passing %d MiB of pages: it must never map or read them", (after-before)>>20, n*size>>20)
	}
}

// TestDaemonSmallMaxMessage: a --max-message below the default inline
// limit brings that default down with it.
func TestDaemonSmallMaxMessage(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn", "--max-message", "1000")
	ctx := ctxT(t)
	c := dial(t, d.socket)
	if c.MaxMessageSize() != 1000 || c.MaxInline() > 1000 {
		t.Fatalf("max message %d, max inline %d; want 1000 and at most 1000", c.MaxMessageSize(), c.MaxInline())
	}
	if _, err := c.Send(ctx, "q", make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, "q", make([]byte, 1001)); !errors.Is(err, machq.ErrTooLarge) {
		t.Fatalf("send past --max-message: %v, want ErrTooLarge", err)
	}
}
