package integration_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/machq/machq/internal/testtool"
)

// tmuxPane is one pane of a tmux server of the test's own (its socket in
// the test's temporary directory), killed when the test ends.
type tmuxPane struct {
	t          *testing.T
	tmux, sock string
}

// startTmux runs script with sh in a new detached tmux session with a
// window of width by height and no status line.
func startTmux(t *testing.T, width, height int, script string) *tmuxPane {
	t.Helper()
	tmux := testtool.Path(t, "tmux", "scripts/install-test-tools.sh installs tmux")
	dir := t.TempDir()
	conf := filepath.Join(dir, "tmux.conf")
	if err := os.WriteFile(conf, []byte("set -g status off\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &tmuxPane{t: t, tmux: tmux, sock: filepath.Join(dir, "tmux.sock")}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the pane at the end:\n%s", p.capture())
		}
		exec.Command(tmux, "-S", p.sock, "kill-server").Run()
	})
	p.run("-f", conf, "new-session", "-d", "-x", fmt.Sprint(width), "-y", fmt.Sprint(height), "-s", "top", "sh", "-c", script)
	return p
}

// run runs a tmux command on the pane's server and returns its output.
func (p *tmuxPane) run(args ...string) string {
	p.t.Helper()
	cmd := exec.Command(p.tmux, append([]string{"-S", p.sock}, args...)...)
	// Not the tmux the tests may run in.
	cmd.Env = append(os.Environ(), "TMUX=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		p.t.Fatalf("tmux %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// capture returns what the pane shows, one line per row, or the error.
func (p *tmuxPane) capture() string {
	out, err := exec.Command(p.tmux, "-S", p.sock, "capture-pane", "-p", "-t", "top").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(capture-pane: %v: %s)", err, out)
	}
	return string(out)
}

// screen returns what the pane shows.
func (p *tmuxPane) screen() string {
	p.t.Helper()
	return p.run("capture-pane", "-p", "-t", "top")
}

// state returns tmux's view of the pane's terminal: whether the
// alternate screen is on, and whether the cursor is shown.
func (p *tmuxPane) state() string {
	p.t.Helper()
	return strings.TrimSpace(p.run("display-message", "-p", "-t", "top", "alternate=#{alternate_on} cursor=#{cursor_flag}"))
}

// waitScreen waits until the pane shows what cond accepts, and returns
// it.
func (p *tmuxPane) waitScreen(what string, cond func(screen string) bool) string {
	p.t.Helper()
	var s string
	waitFor(p.t, what, func() bool {
		s = p.screen()
		return cond(s)
	})
	return s
}

// shQuote quotes s for sh.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// topScript is the script the tmux tests run: machq top on socket, then
// its exit status, the terminal's modes, and END, after which the pane
// stays open (a dead pane's cursor is always reported hidden).
func topScript(socket string) string {
	return fmt.Sprintf(`%s top --socket %s --interval 100ms; echo "top exited $?"; stty -a; echo END; exec sleep 600`,
		shQuote(bin.machq), shQuote(socket))
}

// queueOrder reports whether screen shows a table row for each of
// names, in that order, with the given depths.
func queueOrder(screen string, names []string, depths []int) bool {
	at := -1
	for i, name := range names {
		found := false
		for j, line := range strings.Split(screen, "\n") {
			f := strings.Fields(strings.TrimPrefix(line, "!"))
			if len(f) >= 2 && f[0] == name && f[1] == fmt.Sprint(depths[i]) {
				if j <= at {
					return false
				}
				at, found = j, true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// checkRestored checks that the pane's terminal is back as it was
// before machq top: machq exited with status want, the terminal is in
// canonical mode with echo, the cursor is shown, the normal screen is
// back and holds none of the view.
func checkRestored(t *testing.T, p *tmuxPane, want int, viewText string) {
	t.Helper()
	s := p.waitScreen("machq top to exit and the script to end", func(s string) bool { return strings.Contains(s, "\nEND") })
	if !strings.Contains(s, fmt.Sprintf("top exited %d\n", want)) {
		t.Errorf("want exit status %d; the pane shows:\n%s", want, s)
	}
	modes := " " + strings.Join(strings.Fields(s), " ") + " "
	for _, m := range []string{"icanon", "echo", "isig", "opost", "icrnl"} {
		if !strings.Contains(modes, " "+m+" ") || strings.Contains(modes, " -"+m+" ") {
			t.Errorf("after machq top the terminal's mode %s is not back on; stty -a says:\n%s", m, s)
		}
	}
	if strings.Contains(s, viewText) {
		t.Errorf("the view (%q) is still on the screen: the alternate screen was not left:\n%s", viewText, s)
	}
	if got := p.state(); got != "alternate=0 cursor=1" {
		t.Errorf("after machq top tmux sees %s, want alternate=0 cursor=1", got)
	}
}

// TestIntegrationTopTerminal runs machq top in a real terminal (a tmux
// pane): it shows the named queues deepest first, follows a resized
// window, and q ends it with status 0, the terminal restored.
func TestIntegrationTopTerminal(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	ctx, c := ctxT(t), dial(t, d.socket)
	names, depths := []string{"top-high", "top-mid", "top-low"}, []int{9, 5, 2}
	for i := len(names) - 1; i >= 0; i-- {
		for range depths[i] {
			if _, err := c.Send(ctx, names[i], []byte("job")); err != nil {
				t.Fatal(err)
			}
		}
	}
	p := startTmux(t, 120, 40, topScript(d.socket))
	p.waitScreen("the queues, deepest first", func(s string) bool { return queueOrder(s, names, depths) })
	if got := p.state(); got != "alternate=1 cursor=0" {
		t.Errorf("while machq top runs tmux sees %s, want alternate=1 cursor=0", got)
	}
	// Stores show as a rate.
	for range 50 {
		if _, err := c.Send(ctx, "top-low", []byte("job")); err != nil {
			t.Fatal(err)
		}
	}
	p.waitScreen("top-low to be deepest", func(s string) bool {
		return queueOrder(s, []string{"top-low", "top-high"}, []int{52, 9})
	})

	// A smaller window: every row fits it, and the queues are cut.
	p.run("resize-window", "-t", "top", "-x", "60", "-y", "9")
	s := p.waitScreen("the view to fit 60x9", func(s string) bool {
		lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
		for _, l := range lines {
			if utf8.RuneCountInString(l) > 60 {
				return false
			}
		}
		return len(lines) <= 9 && strings.HasSuffix(lines[0], "~") && queueOrder(s, []string{"top-low"}, []int{52})
	})
	if !strings.Contains(s, "more rows of queues") {
		t.Errorf("at 60x9 the view does not say queues are left out:\n%s", s)
	}
	// Back to 120x40: everything again (the script's lines need the room).
	p.run("resize-window", "-t", "top", "-x", "120", "-y", "40")
	p.waitScreen("the whole view at 120x40", func(s string) bool {
		return queueOrder(s, []string{"top-low", "top-high", "top-mid"}, []int{52, 9, 5}) && strings.Contains(s, "UID ")
	})
	p.run("send-keys", "-t", "top", "q")
	checkRestored(t, p, 0, "QUEUE")
}

// TestIntegrationTopTerminalServerGone: on a terminal, machq top says
// when the server goes away, shows the new one once it is back, and ^C
// ends it with status 130, the terminal restored.
func TestIntegrationTopTerminalServerGone(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	if r := runCLI(t, strings.NewReader("x"), "send", "--socket", d.socket, "--queue", "top-gone"); r.code != 0 {
		t.Fatalf("send: %d %s", r.code, r.stderr)
	}
	p := startTmux(t, 120, 40, topScript(d.socket))
	p.waitScreen("the queue", func(s string) bool { return queueOrder(s, []string{"top-gone"}, []int{1}) })
	d.stop()
	p.waitScreen("the view to say the server is gone", func(s string) bool { return strings.Contains(s, "! NO SERVER since") })
	d2 := startDaemon(t, d.socket, "--log-level", "warn")
	p.waitScreen("the view to show the new server", func(s string) bool {
		return !strings.Contains(s, "NO SERVER") && strings.Contains(s, fmt.Sprintf("pid %d ", d2.pid())) && strings.Contains(s, "no named queues")
	})
	p.run("send-keys", "-t", "top", "C-c")
	checkRestored(t, p, 130, "QUEUE")
}

// topRun is machq top run with stdout and stderr pipes.
type topRun struct {
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	done           chan struct{}
}

func startTop(t *testing.T, args ...string) *topRun {
	t.Helper()
	r := &topRun{stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(bin.machq, append([]string{"top"}, args...)...)
	r.cmd.Stdout, r.cmd.Stderr = r.stdout, r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.done
	})
	return r
}

// wait waits for machq top to exit and returns its status.
func (r *topRun) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("machq top did not exit within 30s; stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	return r.cmd.ProcessState.ExitCode()
}

// TestIntegrationTopPlain: with stdout not a terminal, machq top prints
// plain snapshots, --count of them, and exits non-zero, saying why,
// when the server goes away.
func TestIntegrationTopPlain(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	for _, q := range []string{"plain-a", "plain-b", "plain-b"} {
		if r := runCLI(t, strings.NewReader("x"), "send", "--socket", d.socket, "--queue", q); r.code != 0 {
			t.Fatalf("send: %d %s", r.code, r.stderr)
		}
	}
	r := runCLI(t, nil, "top", "--socket", d.socket, "--count", "2", "--interval", "100ms")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("top --count 2: exit %d, stderr %q", r.code, r.stderr)
	}
	if strings.ContainsRune(r.stdout, 0x1b) {
		t.Errorf("top to a pipe wrote escape sequences:\n%q", r.stdout)
	}
	snaps := strings.Split(r.stdout, "\n\nmachq top ")
	if len(snaps) != 2 || strings.Count(r.stdout, "machq top ") != 2 {
		t.Fatalf("top --count 2 printed %d snapshots, want 2:\n%s", len(snaps), r.stdout)
	}
	for i, s := range snaps {
		if !queueOrder(s, []string{"plain-b", "plain-a"}, []int{2, 1}) {
			t.Errorf("snapshot %d does not list plain-b (2) before plain-a (1):\n%s", i+1, s)
		}
	}
	// The second snapshot has rates, the first cannot.
	if !strings.Contains(snaps[0], "messages 3 (-/s)") || !strings.Contains(snaps[1], "messages 3 (0/s)") {
		t.Errorf("the totals' rate: want - then 0/s:\n%s", r.stdout)
	}

	if r := runCLI(t, nil, "top", "--socket", d.socket, "--interval", "0s"); r.code != 2 || !strings.Contains(r.stderr, "--interval") {
		t.Errorf("--interval 0s: exit %d, stderr %q; want 2 and a usage error", r.code, r.stderr)
	}
	if r := runCLI(t, nil, "top", "--socket", filepath.Join(t.TempDir(), "none.sock"), "--count", "1"); r.code != 4 || r.stdout != "" {
		t.Errorf("no server: exit %d, stdout %q, stderr %q; want 4 and nothing on stdout", r.code, r.stdout, r.stderr)
	}

	// SIGINT ends it, with status 130.
	top := startTop(t, "--socket", d.socket, "--interval", "100ms")
	waitFor(t, "a snapshot", func() bool { return strings.Contains(top.stdout.String(), "plain-a") })
	top.cmd.Process.Signal(syscall.SIGINT)
	if code := top.wait(t); code != 130 {
		t.Errorf("SIGINT: exit %d, want 130; stderr %q", code, top.stderr)
	}

	// The server goes away: an error, and status 4 (nothing answers).
	top = startTop(t, "--socket", d.socket, "--interval", "100ms")
	waitFor(t, "a snapshot", func() bool { return strings.Contains(top.stdout.String(), "plain-a") })
	d.stop()
	if code := top.wait(t); code != 4 || !strings.Contains(top.stderr.String(), "machq: top: lost the server at "+d.socket) {
		t.Errorf("server gone: exit %d, stderr %q; want 4 and what was lost", code, top.stderr)
	}
	if strings.ContainsRune(top.stdout.String(), 0x1b) {
		t.Errorf("top to a pipe wrote escape sequences:\n%q", top.stdout)
	}
}

// TestIntegrationTopLimits: machq top judges what a server holds against
// the limits it reports: a queue near --max-queue-messages is marked,
// naming the queue and the flag, and the totals are shown against
// --max-stored-messages, which is not near.
func TestIntegrationTopLimits(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn", "--max-queue-messages", "10", "--max-stored-messages", "20")
	ctx, c := ctxT(t), dial(t, d.socket)
	for range 9 {
		if _, err := c.Send(ctx, "near-full", []byte("job")); err != nil {
			t.Fatal(err)
		}
	}
	r := runCLI(t, nil, "top", "--socket", d.socket, "--count", "1")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("top --count 1: exit %d, stderr %q", r.code, r.stderr)
	}
	var marked []string
	for _, l := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(l, "!") {
			marked = append(marked, l)
		}
	}
	// 9 of 10: the queue's row, and nothing else.
	if len(marked) != 1 || strings.Fields(strings.TrimPrefix(marked[0], "!"))[0] != "near-full" ||
		!strings.Contains(marked[0], "messages 9 of 10 (90%, machqd --max-queue-messages)") {
		t.Errorf("want one mark, on near-full, naming --max-queue-messages; marked %q in\n%s", marked, r.stdout)
	}
	// 9 of 20 (45%): shown, not marked.
	if !strings.Contains(r.stdout, "\nmessages 9 (-/s) of 20 (45%)  bytes ") || strings.Contains(r.stdout, "--max-stored-messages") {
		t.Errorf("want the total shown against --max-stored-messages and not marked:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "  named queues 1 of ") {
		t.Errorf("want the named queues counted against --max-queues:\n%s", r.stdout)
	}
}
