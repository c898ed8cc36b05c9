package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/machq/machq"
)

// bin holds the paths of the binaries built for this run.
var bin struct {
	machqd, machq string
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "machq-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		goTool, err := exec.LookPath("go")
		if err != nil {
			fmt.Fprintln(os.Stderr, "the go command is not on PATH; the integration tests build the binaries with it")
			return 1
		}
		args := []string{"build", "-o", dir}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "github.com/machq/machq/cmd/machqd", "github.com/machq/machq/cmd/machq")
		cmd := exec.Command(goTool, args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "building the binaries failed: %v\n", err)
			return 1
		}
		// Race-enabled binaries otherwise sleep a second at exit.
		os.Setenv("GORACE", "atexit_sleep_ms=0")
		bin.machqd = filepath.Join(dir, "machqd")
		bin.machq = filepath.Join(dir, "machq")
		return m.Run()
	}()
	os.Exit(code)
}

// syncBuffer is a bytes.Buffer safe for a process to write while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// daemon is a machqd process started by a test.
type daemon struct {
	t      testing.TB
	cmd    *exec.Cmd
	socket string
	logs   *syncBuffer
	exited chan struct{}
	err    error // exit status, valid once exited is closed
}

// startDaemon runs machqd on a socket in a fresh temporary directory (or
// on socket, when not empty) and waits until it answers. It is stopped
// with SIGTERM when the test ends, and must then exit 0.
func startDaemon(t testing.TB, socket string, args ...string) *daemon {
	t.Helper()
	return startDaemonEnv(t, nil, socket, args...)
}

// startDaemonEnv is startDaemon with env added to machqd's environment.
func startDaemonEnv(t testing.TB, env []string, socket string, args ...string) *daemon {
	t.Helper()
	if socket == "" {
		socket = filepath.Join(t.TempDir(), "machq.sock")
	}
	d := &daemon{t: t, socket: socket, logs: &syncBuffer{}, exited: make(chan struct{})}
	d.cmd = exec.Command(bin.machqd, append([]string{"--socket", socket}, args...)...)
	if env != nil {
		d.cmd.Env = append(os.Environ(), env...)
	}
	d.cmd.Stderr = d.logs
	d.cmd.Stdout = d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		if d.running() {
			d.stop()
			if d.err != nil {
				t.Errorf("machqd exited with %v after SIGTERM; logs:\n%s", d.err, d.logs)
			}
		}
		if t.Failed() {
			t.Logf("machqd logs:\n%s", d.logs)
		}
	})
	d.waitReady()
	return d
}

func (d *daemon) running() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

func (d *daemon) waitReady() {
	d.t.Helper()
	waitFor(d.t, "machqd to accept connections", func() bool {
		if !d.running() {
			d.t.Fatalf("machqd exited: %v\n%s", d.err, d.logs)
		}
		c, err := net.Dial("unix", d.socket)
		if err == nil {
			c.Close()
			return true
		}
		return false
	})
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// stop sends SIGTERM and waits for the process to exit.
func (d *daemon) stop() {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		d.t.Fatalf("machqd did not stop within 30s of SIGTERM")
	}
}

// fds returns the number of pages (memfds) and sockets the daemon holds
// open: what clients can make it hold. Descriptors the Go and race
// runtimes open lazily for themselves are not counted.
func (d *daemon) fds() int {
	d.t.Helper()
	n := 0
	for _, f := range d.fdList() {
		if strings.Contains(f, "-> /memfd:") || strings.Contains(f, "-> socket:") {
			n++
		}
	}
	return n
}

// idleFDs waits until the daemon holds only its listening socket, no
// connection and no page, and returns that count: the baseline.
func (d *daemon) idleFDs() int {
	d.t.Helper()
	waitFor(d.t, "server to hold only its listener", func() bool { return d.fds() == 1 })
	return 1
}

// fdList describes each descriptor the daemon holds open.
func (d *daemon) fdList() []string {
	d.t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", d.pid())
	ents, err := os.ReadDir(dir)
	if err != nil {
		d.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		out = append(out, e.Name()+" -> "+target)
	}
	return out
}

// rss returns the daemon's resident memory in bytes, shared memory
// mappings included.
func (d *daemon) rss() int64 {
	d.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.pid()))
	if err != nil {
		d.t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				d.t.Fatal(err)
			}
			return kb << 10
		}
	}
	d.t.Fatal("no VmRSS in /proc/PID/status")
	return 0
}

// stats asks the daemon for its statistics through the library, which
// dials with opts.
func (d *daemon) stats(opts ...machq.Option) *machq.Stats {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := machq.Dial(ctx, d.socket, opts...)
	if err != nil {
		d.t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Stat(ctx)
	if err != nil {
		d.t.Fatal(err)
	}
	return st
}

// result is the outcome of one CLI run.
type result struct {
	stdout, stderr string
	code           int
}

// runCLI runs machq with args and stdin and waits for it.
func runCLI(t testing.TB, stdin io.Reader, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin.machq, args...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("machq %v: %v", args, err)
	}
	return r
}

// shellProc is an interactive machq shell fed line by line.
type shellProc struct {
	t     testing.TB
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *lineReader
	errb  *syncBuffer
	done  chan struct{}
}

// lineReader hands the lines of a process's stdout to the test.
type lineReader struct {
	lines chan string
}

func newLineReader(r io.Reader) *lineReader {
	lr := &lineReader{lines: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 64<<20)
		for sc.Scan() {
			lr.lines <- sc.Text()
		}
		close(lr.lines)
	}()
	return lr
}

// startShell starts "machq shell" against socket with a pipe for stdin.
func startShell(t testing.TB, socket string, args ...string) *shellProc {
	t.Helper()
	cmd := exec.Command(bin.machq, append([]string{"shell", "--socket", socket}, args...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	sp := &shellProc{t: t, cmd: cmd, stdin: stdin, errb: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = sp.errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sp.out = newLineReader(stdout)
	go func() { cmd.Wait(); close(sp.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-sp.done
		if t.Failed() {
			t.Logf("shell stderr:\n%s", sp.errb)
		}
	})
	return sp
}

func (sp *shellProc) send(lines ...string) {
	sp.t.Helper()
	for _, l := range lines {
		if _, err := io.WriteString(sp.stdin, l+"\n"); err != nil {
			sp.t.Fatalf("writing to the shell: %v", err)
		}
	}
}

// expect reads stdout lines until one contains want.
func (sp *shellProc) expect(want string) {
	sp.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-sp.out.lines:
			if !ok {
				sp.t.Fatalf("shell ended before printing %q; stderr:\n%s", want, sp.errb)
			}
			if strings.Contains(l, want) {
				return
			}
		case <-timeout:
			sp.t.Fatalf("shell did not print %q within 30s", want)
		}
	}
}

// waitFor polls cond until it holds, failing the test after 30s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
