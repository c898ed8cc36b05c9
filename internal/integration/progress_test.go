package integration_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY returns a new pseudo-terminal's controlling end and its
// terminal end, closed when the test ends.
func openPTY(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// runOnTerminal runs machq with args, its stderr a terminal, and returns
// what it wrote there.
func runOnTerminal(t *testing.T, args ...string) string {
	t.Helper()
	ptm, pts := openPTY(t)
	cmd := exec.Command(bin.machq, args...)
	cmd.Stderr = pts
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pts.Close() // the child holds the terminal now
	var out bytes.Buffer
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(&out, ptm)
		copied <- err
	}()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("machq %v: %v", args, err)
	}
	// The terminal's end reads EIO once nobody holds the other.
	if err := <-copied; err != nil && !errors.Is(err, syscall.EIO) {
		t.Fatal(err)
	}
	return out.String()
}

// TestIntegrationProgress: send --file and retrieve --out show their
// progress when stderr is a terminal and the payload is large, and never
// when stderr is not a terminal.
func TestIntegrationProgress(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, "", "--log-level", "warn")
	in := filepath.Join(dir, "in.bin")
	data := bytes.Repeat([]byte("0123456789abcdef"), 2<<20) // 32 MiB
	if err := os.WriteFile(in, data, 0o600); err != nil {
		t.Fatal(err)
	}

	shown := runOnTerminal(t, "send", "--socket", d.socket, "--queue", "big", "--file", in)
	if !strings.Contains(shown, "reading "+in) || !strings.Contains(shown, "100%") {
		t.Errorf("send --file to a terminal showed no progress:\n%q", shown)
	}
	out := filepath.Join(dir, "out.bin")
	shown = runOnTerminal(t, "retrieve", "--socket", d.socket, "--queue", "big", "--out", out)
	if !strings.Contains(shown, "writing "+out) || !strings.Contains(shown, "100%") {
		t.Errorf("retrieve --out to a terminal showed no progress:\n%q", shown)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("retrieved %d bytes (%v), want the %d sent", len(got), err, len(data))
	}

	// Not a terminal: nothing but what is asked for.
	r := runCLI(t, nil, "send", "--socket", d.socket, "--queue", "big", "--file", in)
	if r.code != 0 || r.stderr != "" {
		t.Errorf("send --file, stderr a pipe: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "big", "--out", out)
	if r.code != 0 || r.stderr != "" {
		t.Errorf("retrieve --out, stderr a pipe: exit %d, stderr %q", r.code, r.stderr)
	}
	// A small payload shows nothing even on a terminal.
	small := filepath.Join(dir, "small.bin")
	if err := os.WriteFile(small, []byte("small"), 0o600); err != nil {
		t.Fatal(err)
	}
	if shown := runOnTerminal(t, "send", "--socket", d.socket, "--queue", "big", "--file", small); shown != "" {
		t.Errorf("a 5-byte send showed %q on the terminal", shown)
	}
}
