package integration_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/machq/machq"
)

// runCmd runs cmd, a machq command set up by the test, like runCLI.
func runCmd(t testing.TB, cmd *exec.Cmd) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%v did not end within 2 minutes", cmd.Args)
	}
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return r
}

// store puts payload into queue through the library.
func store(t testing.TB, socket, queue string, payload []byte) {
	t.Helper()
	if _, err := dial(t, socket).Send(ctxT(t), queue, payload); err != nil {
		t.Fatal(err)
	}
}

// queueStats returns the named queue's statistics, or zeroes if the
// server does not list it.
func queueStats(d *daemon, name string) machq.QueueStats {
	for _, q := range d.stats().Queues {
		if q.Name == name {
			return q
		}
	}
	return machq.QueueStats{Name: name}
}

func TestIntegrationCLIRetrieveOut(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	dir := t.TempDir()
	noTemp := func(t *testing.T) {
		t.Helper()
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.Contains(e.Name(), ".machq-") {
				t.Errorf("temporary file left behind: %s", e.Name())
			}
		}
	}
	retrieve := func(t *testing.T, out string, payload []byte) {
		t.Helper()
		store(t, d.socket, "out", payload)
		if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "out", "--out", out); r.code != 0 {
			t.Fatalf("retrieve --out %s: exit %d: %s", out, r.code, r.stderr)
		}
	}

	t.Run("fifo", func(t *testing.T) {
		fifo := filepath.Join(dir, "fifo")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		// Out of line, and more than a pipe holds: written in several
		// goes while the reader reads.
		payload := bytes.Repeat([]byte("fifo payload "), 20<<10)
		type read struct {
			b   []byte
			err error
		}
		got := make(chan read, 1)
		go func() {
			f, err := os.Open(fifo) // waits for the writer
			if err != nil {
				got <- read{err: err}
				return
			}
			b, err := io.ReadAll(f)
			f.Close()
			got <- read{b, err}
		}()
		// Whatever happens, the reader must not stay blocked in open:
		// a writer that opens and closes lets it go.
		release := func() {
			if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				f.Close()
			}
		}
		store(t, d.socket, "out", payload)
		r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "out", "--out", fifo)
		if r.code != 0 {
			release()
			t.Fatalf("retrieve --out FIFO: exit %d: %s", r.code, r.stderr)
		}
		var res read
		select {
		case res = <-got:
		case <-time.After(30 * time.Second):
			release()
			t.Fatal("the FIFO's reader got nothing within 30s")
		}
		if res.err != nil || !bytes.Equal(res.b, payload) {
			release()
			t.Fatalf("the FIFO's reader got %d bytes, err %v; want %d bytes", len(res.b), res.err, len(payload))
		}
		fi, err := os.Lstat(fifo)
		if err != nil || fi.Mode().Type() != os.ModeNamedPipe {
			t.Fatalf("--out replaced the FIFO: %v, %v", fi.Mode(), err)
		}
		noTemp(t)
	})

	t.Run("symlink", func(t *testing.T) {
		target := filepath.Join(dir, "target.txt")
		if err := os.WriteFile(target, []byte("old content"), 0o640); err != nil {
			t.Fatal(err)
		}
		os.Chmod(target, 0o640) // whatever the umask
		link := filepath.Join(dir, "link")
		if err := os.Symlink("target.txt", link); err != nil {
			t.Fatal(err)
		}
		retrieve(t, link, []byte("through the link"))
		if l, err := os.Readlink(link); err != nil || l != "target.txt" {
			t.Fatalf("the symlink was replaced: %q, %v", l, err)
		}
		expectFile(t, target, 0o640, "through the link")

		// A link to nothing yet: its target is created, as by the shell.
		dangling := filepath.Join(dir, "dangling")
		if err := os.Symlink("created.txt", dangling); err != nil {
			t.Fatal(err)
		}
		retrieve(t, dangling, []byte("created"))
		if fi, err := os.Lstat(dangling); err != nil || fi.Mode().Type() != os.ModeSymlink {
			t.Fatalf("the dangling link was replaced: %v", err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "created.txt")); err != nil || string(b) != "created" {
			t.Fatalf("created.txt holds %q, %v", b, err)
		}
		noTemp(t)
	})

	t.Run("new file under umask", func(t *testing.T) {
		out := filepath.Join(dir, "new.bin")
		store(t, d.socket, "out", []byte("new file"))
		// The umask is set in a shell that then runs machq, so that this
		// process's own stays as it is.
		cmd := exec.Command("/bin/sh", "-c", `umask 027 && exec "$0" "$@"`, bin.machq,
			"retrieve", "--socket", d.socket, "--queue", "out", "--out", out)
		if r := runCmd(t, cmd); r.code != 0 {
			t.Fatalf("retrieve: exit %d: %s", r.code, r.stderr)
		}
		expectFile(t, out, 0o640, "new file") // 0666 less umask 027
		noTemp(t)
	})

	t.Run("existing 0600 file", func(t *testing.T) {
		out := filepath.Join(dir, "secret")
		if err := os.WriteFile(out, []byte("a longer old secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		retrieve(t, out, []byte("new secret"))
		expectFile(t, out, 0o600, "new secret") // its old mode kept
		noTemp(t)
	})

	t.Run("directory", func(t *testing.T) {
		store(t, d.socket, "kept-out", []byte("kept"))
		r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "kept-out", "--out", dir)
		if r.code != 1 || !strings.Contains(r.stderr, "is a directory") {
			t.Fatalf("retrieve --out DIR: exit %d, %q", r.code, r.stderr)
		}
		if q := queueStats(d, "kept-out"); q.Messages != 1 {
			t.Fatalf("the message was taken although --out could not be written: %+v", q)
		}
	})
}

// TestIntegrationCLIRelativeSocket checks that a --socket without a slash
// is a path relative to the working directory, not a service name.
func TestIntegrationCLIRelativeSocket(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	dir := filepath.Dir(d.socket)
	rel := filepath.Base(d.socket)
	// No server answers under the service name, whatever the machine runs.
	runtime := t.TempDir()
	cli := func(stdin io.Reader, args ...string) result {
		t.Helper()
		cmd := exec.Command(bin.machq, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "MACHQ_RUNTIME_DIR="+runtime)
		cmd.Stdin = stdin
		return runCmd(t, cmd)
	}
	if r := cli(strings.NewReader("relative"), "send", "--socket", rel, "--queue", "rel"); r.code != 0 {
		t.Fatalf("send --socket %s: exit %d: %s", rel, r.code, r.stderr)
	}
	r := cli(nil, "stat", "--socket", rel)
	if r.code != 0 || !strings.Contains(r.stdout, d.socket) {
		t.Fatalf("stat --socket %s: exit %d, stdout %q, stderr %q; want the absolute path %s", rel, r.code, r.stdout, r.stderr, d.socket)
	}
	if r := cli(nil, "retrieve", "--socket", rel, "--queue", "rel"); r.code != 0 || r.stdout != "relative" {
		t.Fatalf("retrieve --socket %s: %+v", rel, r)
	}
	if r := cli(strings.NewReader("1\nshell\n2\n3\n"), "shell", "--socket", rel, "--log-level", "warn"); r.code != 0 || !strings.Contains(r.stdout, "shell\nintegrity confirmed") {
		t.Fatalf("shell --socket %s: %+v", rel, r)
	}
	// Not there: the error names the absolute path looked at.
	if r := cli(nil, "stat", "--socket", "absent.sock"); r.code != 4 || !strings.Contains(r.stderr, filepath.Join(dir, "absent.sock")) {
		t.Fatalf("stat --socket absent.sock: %+v", r)
	}
}

func TestIntegrationCLIHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		r := runCLI(t, nil, args...)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("machq %v: exit %d, stderr %q", args, r.code, r.stderr)
		}
		for _, cmd := range []string{"shell", "send", "retrieve", "stat", "bench", "load", "help"} {
			if !strings.Contains(r.stdout, "\n  "+cmd+" ") {
				t.Errorf("machq %v does not list %s:\n%s", args, cmd, r.stdout)
			}
		}
		for _, status := range []string{"0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "130 "} {
			if !strings.Contains(r.stdout, "\n  "+status) {
				t.Errorf("machq %v does not give exit status %s:\n%s", args, status, r.stdout)
			}
		}
		if strings.Contains(r.stdout, "Flags:") || strings.Contains(r.stdout, "--log-level") {
			t.Errorf("machq %v shows the shell's flags:\n%s", args, r.stdout)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"shell", "--help"}, "Usage: machq shell"},
		{[]string{"send", "--help"}, "Usage: machq send"},
		{[]string{"retrieve", "-h"}, "--wait duration"},
		{[]string{"stat", "--help"}, "--json"},
		{[]string{"bench", "--help"}, "--sizes"},
		{[]string{"load", "--help"}, "--clients"},
		{[]string{"help", "retrieve"}, "--out file"},
	} {
		r := runCLI(t, nil, tc.args...)
		if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, tc.want) || !strings.Contains(r.stdout, "Flags:") {
			t.Errorf("machq %v: exit %d, stderr %q, stdout:\n%s\nwant the usage, mentioning %q, on stdout", tc.args, r.code, r.stderr, r.stdout, tc.want)
		}
	}
	if r := runCLI(t, nil, "shell", "--help"); !strings.Contains(r.stdout, "--queue") {
		t.Errorf("machq shell --help lacks the shell's flags:\n%s", r.stdout)
	}
}

// exitWithin waits for the process cmd (started) to exit, failing the
// test if it takes longer than limit, and returns its exit status.
func exitWithin(t *testing.T, done <-chan struct{}, cmd *exec.Cmd, limit time.Duration) int {
	t.Helper()
	select {
	case <-done:
	case <-time.After(limit):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%v did not exit within %v of the signal", cmd.Args, limit)
	}
	return cmd.ProcessState.ExitCode()
}

// started runs cmd in the background; done closes when it has exited.
func started(t *testing.T, cmd *exec.Cmd) (done chan struct{}, stdout, stderr *syncBuffer) {
	t.Helper()
	stdout, stderr = &syncBuffer{}, &syncBuffer{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done = make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	return done, stdout, stderr
}

func TestIntegrationCLIInterrupt(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	const deadline = 10 * time.Second
	// connected waits until n clients besides the watcher are connected.
	// One watcher asks every time: a connection per question would leave
	// the last one's still counted while the server tears it down, and
	// the count would be met before the command had connected.
	watcher := dial(t, d.socket)
	connected := func(n int) {
		t.Helper()
		waitFor(t, fmt.Sprintf("%d clients to connect", n), func() bool {
			st, err := watcher.Stat(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			return st.Clients == n+1
		})
	}

	// heldSend starts a send whose stdin the test holds open, and waits
	// until it is connected.
	heldSend := func(t *testing.T) (*exec.Cmd, io.WriteCloser, chan struct{}, *syncBuffer) {
		cmd := exec.Command(bin.machq, "send", "--socket", d.socket, "--queue", "interrupted")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		connected(0) // the last subtest's command is gone
		done, _, stderr := started(t, cmd)
		t.Cleanup(func() { stdin.Close() }) // before started's cleanup, which waits for the exit
		connected(1)
		return cmd, stdin, done, stderr
	}

	t.Run("send reading stdin", func(t *testing.T) {
		cmd, stdin, done, stderr := heldSend(t)
		// Half a payload, and the pipe held open.
		if _, err := io.WriteString(stdin, "half a payload"); err != nil {
			t.Fatal(err)
		}
		cmd.Process.Signal(syscall.SIGINT)
		if code := exitWithin(t, done, cmd, deadline); code != 130 {
			t.Fatalf("send after SIGINT: exit %d, want 130; stderr %q", code, stderr)
		}
		if s := stderr.String(); strings.Count(s, "\n") != 1 || !strings.Contains(s, "interrupted") || strings.Contains(s, "context canceled") {
			t.Errorf("send after SIGINT: stderr %q, want one line saying it was interrupted", s)
		}
		connected(0)
		if st := d.stats(); st.Messages != 0 {
			t.Fatalf("an interrupted send stored something: %+v", st)
		}
	})

	t.Run("send terminated", func(t *testing.T) {
		cmd, _, done, stderr := heldSend(t)
		cmd.Process.Signal(syscall.SIGTERM)
		if code := exitWithin(t, done, cmd, deadline); code != 143 {
			t.Fatalf("send after SIGTERM: exit %d, want 143; stderr %q", code, stderr)
		}
		connected(0)
		if st := d.stats(); st.Messages != 0 {
			t.Fatalf("a terminated send stored something: %+v", st)
		}
	})

	t.Run("shell waiting for a line", func(t *testing.T) {
		for _, tc := range []struct {
			sig   syscall.Signal
			lines []string
			code  int
		}{
			{syscall.SIGINT, nil, 130},            // at the menu
			{syscall.SIGINT, []string{"1"}, 130},  // at data>
			{syscall.SIGTERM, []string{"2"}, 143}, // after a command
		} {
			sh := startShell(t, d.socket)
			waitFor(t, "the shell to connect", func() bool { return strings.Contains(sh.errb.String(), "connected") })
			sh.send(tc.lines...)
			if len(tc.lines) > 0 && tc.lines[0] == "2" {
				sh.expect("nothing stored")
			}
			sh.cmd.Process.Signal(tc.sig)
			if code := exitWithin(t, sh.done, sh.cmd, deadline); code != tc.code {
				t.Fatalf("shell after %v with %q typed: exit %d, want %d; stderr:\n%s", tc.sig, tc.lines, code, tc.code, sh.errb)
			}
		}
		connected(0)
		if st := d.stats(); st.Messages != 0 {
			t.Fatalf("an interrupted shell stored something: %+v", st)
		}
	})

	t.Run("retrieve waiting", func(t *testing.T) {
		cmd := exec.Command(bin.machq, "retrieve", "--socket", d.socket, "--queue", "waited", "--wait", "10m")
		done, stdout, stderr := started(t, cmd)
		waitFor(t, "the retrieve to wait", func() bool { return queueStats(d, "waited").Waiting == 1 })
		cmd.Process.Signal(syscall.SIGINT)
		if code := exitWithin(t, done, cmd, deadline); code != 130 {
			t.Fatalf("retrieve --wait after SIGINT: exit %d, want 130; stderr %q", code, stderr)
		}
		if s := stderr.String(); strings.Count(s, "\n") != 1 || !strings.Contains(s, "interrupted") || strings.Contains(s, "empty") {
			t.Errorf("retrieve --wait after SIGINT: stderr %q, want one line saying it was interrupted", s)
		}
		if stdout.String() != "" {
			t.Errorf("retrieve --wait after SIGINT wrote %q", stdout)
		}
		// The abandoned wait takes nothing stored after it.
		store(t, d.socket, "waited", []byte("after the interrupt"))
		if q := queueStats(d, "waited"); q.Messages != 1 || q.Waiting != 0 {
			t.Fatalf("queue after an interrupted wait and a store: %+v, want the message there", q)
		}
		if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "waited"); r.stdout != "after the interrupt" {
			t.Fatalf("retrieve: %+v", r)
		}
	})

	t.Run("stat", func(t *testing.T) {
		// A server that accepts and never answers: stat waits for it.
		dir := t.TempDir()
		l, err := net.Listen("unix", filepath.Join(dir, "mute.sock"))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		cmd := exec.Command(bin.machq, "stat", "--socket", filepath.Join(dir, "mute.sock"))
		done, _, stderr := started(t, cmd)
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cmd.Process.Signal(syscall.SIGINT)
		if code := exitWithin(t, done, cmd, deadline); code != 130 || !strings.Contains(stderr.String(), "interrupted") {
			t.Fatalf("stat after SIGINT: exit %d, want 130; stderr %q", code, stderr)
		}
	})
}

// TestIntegrationCLIInterruptAfterHandover interrupts a waiting retrieve
// after the server has handed it a message that it has not yet read: the
// message must not be lost. Either it is written (exit 0) or it is still
// in the queue.
func TestIntegrationCLIInterruptAfterHandover(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	for i := range 3 {
		queue := fmt.Sprintf("handed-%d", i)
		payload := fmt.Sprintf("handed over %d", i)
		cmd := exec.Command(bin.machq, "retrieve", "--socket", d.socket, "--queue", queue, "--wait", "10m")
		done, stdout, stderr := started(t, cmd)
		waitFor(t, "the retrieve to wait", func() bool { return queueStats(d, queue).Waiting == 1 })
		// Stopped, it cannot read what the server hands it.
		if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		store(t, d.socket, queue, []byte(payload))
		if q := queueStats(d, queue); q.Messages != 0 || q.Waiting != 0 {
			t.Fatalf("the message was not handed to the waiting retrieve: %+v", q)
		}
		// The interrupt and the message are both there when it resumes.
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Process.Signal(syscall.SIGCONT)
		code := exitWithin(t, done, cmd, 30*time.Second)
		left := queueStats(d, queue).Messages
		switch {
		case code == 0 && stdout.String() == payload:
		case code == 130 && left == 1:
		default:
			t.Fatalf("retrieve interrupted after the handover: exit %d, stdout %q, stderr %q, %d left in the queue: the message is lost", code, stdout, stderr, left)
		}
	}
}

func TestIntegrationCLIStatOmittedQueues(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	// More named queues, with the longest names, than one STATS frame
	// (1 MiB) can list.
	const n = 3600
	c := dial(t, d.socket)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 64)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			name := fmt.Sprintf("%s-%05d", strings.Repeat("q", 249), i)
			if _, err := c.Send(ctx, name, []byte("x")); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := d.stats()
	if st.QueuesOmitted == 0 {
		t.Fatalf("the server listed all %d queues: the test needs more", len(st.Queues))
	}
	r := runCLI(t, nil, "stat", "--socket", d.socket)
	if r.code != 0 {
		t.Fatalf("stat: exit %d: %s", r.code, r.stderr)
	}
	want := fmt.Sprintf("and %d more named queues", st.QueuesOmitted)
	if !strings.Contains(r.stdout, want) {
		t.Fatalf("stat does not say %q; its last lines:\n%s", want, lastLines(r.stdout, 3))
	}
	if listed := strings.Count(r.stdout, strings.Repeat("q", 249)+"-"); listed+st.QueuesOmitted != n {
		t.Errorf("stat lists %d queues and says %d more; there are %d", listed, st.QueuesOmitted, n)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestIntegrationShellServerGone checks what the shell says when the
// server goes away: plainly, on stdout with its results, never the
// library's advice to its callers.
func TestIntegrationShellServerGone(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "gone.sock")
	d := startDaemon(t, socket, "--log-level", "warn")
	sh := startShell(t, socket, "--log-level", "error")
	sh.send("1", "before")
	sh.expect("stored")

	d.stop()
	sh.send("2")
	expectLines(t, sh, "connection lost: the server went away", "could not reconnect: no server")

	startDaemon(t, socket, "--log-level", "warn")
	sh.send("2")
	expectLines(t, sh, "connection lost: the server went away", "reconnected", "nothing stored")
	sh.send("1", "after", "2")
	expectLines(t, sh, "stored 5 bytes", "after", "integrity confirmed")
}

// expectLines reads the shell's stdout until a line contains each of
// wants in turn, failing on a line that talks like the library.
func expectLines(t *testing.T, sh *shellProc, wants ...string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for _, want := range wants {
		for found := false; !found; {
			select {
			case l, ok := <-sh.out.lines:
				if !ok {
					t.Fatalf("shell ended before printing %q; stderr:\n%s", want, sh.errb)
				}
				if strings.Contains(l, "Dial again") || strings.Contains(l, "machq: ") {
					t.Errorf("shell printed library wording: %q", l)
				}
				found = strings.Contains(l, want)
			case <-timeout:
				t.Fatalf("shell did not print %q within 30s", want)
			}
		}
	}
}

// TestIntegrationCLIWaitEndsAsAMessageArrives runs many short
// `retrieve --wait`s while messages arrive at random moments, so that
// some arrive just as a wait runs out. Every message sent must be either
// written by a retrieve or still in the queue: none may be taken by a
// retrieve that then reports the queue empty.
func TestIntegrationCLIWaitEndsAsAMessageArrives(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	ctx := ctxT(t)
	producer := dial(t, d.socket)
	const rounds = 150
	stop := make(chan struct{})
	sentc := make(chan int, 1)
	go func() {
		sent := 0
		defer func() { sentc <- sent }()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(i%5) * 10 * time.Millisecond): // pacing, not synchronisation
			}
			if _, err := producer.Send(ctx, "edge", []byte(fmt.Sprint("m", i))); err != nil {
				t.Error(err)
				return
			}
			sent++
		}
	}()
	got := 0
	for range rounds {
		r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "edge", "--wait", "15ms")
		switch r.code {
		case 0:
			got++
		case 3: // stayed empty for the whole wait
		default:
			t.Fatalf("retrieve: exit %d: %s", r.code, r.stderr)
		}
	}
	close(stop)
	sent := <-sentc
	left := int(queueStats(d, "edge").Messages)
	if got+left != sent {
		t.Fatalf("%d messages sent, %d retrieved and %d left: %d lost", sent, got, left, sent-got-left)
	}
	t.Logf("%d sent, %d retrieved by %d waits, %d left", sent, got, rounds, left)
}

// expectFile fails t unless path is a regular file (not a link) with
// permissions perm holding want.
func expectFile(t *testing.T, path string, perm os.FileMode, want string) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != perm {
		t.Errorf("%s: mode %v, want a regular file with %v", path, fi.Mode(), perm)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != want {
		t.Errorf("%s holds %q (%v), want %q", path, b, err, want)
	}
}

// TestIntegrationVersion: both binaries say which build they are, with
// --version and as a version command; machq version also names the
// server's build, from the handshake, and says when there is no server.
func TestIntegrationVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		out, err := exec.Command(bin.machqd, args...).Output()
		if err != nil || !regexp.MustCompile(`^machqd \S+.* \(go1\.\d+`).Match(out) {
			t.Errorf("machqd %v: %q, %v", args, out, err)
		}
	}
	r := runCLI(t, nil, "--version")
	if r.code != 0 || !regexp.MustCompile(`^machq \S+.* \(go1\.\d+.*\)\n$`).MatchString(r.stdout) {
		t.Errorf("machq --version: exit %d, %q, %q", r.code, r.stdout, r.stderr)
	}
	client := strings.TrimSpace(r.stdout)

	socket := filepath.Join(t.TempDir(), "v.sock")
	r = runCLI(t, nil, "version", "--socket", socket)
	if r.code != 4 || !strings.HasPrefix(r.stdout, client+"\n") || !strings.Contains(r.stderr, "no server") {
		t.Errorf("machq version without a server: exit %d, stdout %q, stderr %q; want its own version and exit 4", r.code, r.stdout, r.stderr)
	}
	d := startDaemon(t, socket)
	r = runCLI(t, nil, "version", "--socket", socket)
	want := regexp.MustCompile(fmt.Sprintf(`(?m)^server machqd \S+.* \(go1\.\d+.*\), protocol \d+, pid %d, at %s$`, d.pid(), regexp.QuoteMeta(socket)))
	if r.code != 0 || !strings.HasPrefix(r.stdout, client+"\n") || !want.MatchString(r.stdout) {
		t.Errorf("machq version: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}
