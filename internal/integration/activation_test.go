package integration_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/testtool"
)

// socketActivate runs machqd under systemd-socket-activate listening on
// sockets, and waits until every socket listens. machqd itself starts only
// when the first client connects, as under systemd.
func socketActivate(t *testing.T, flags []string, sockets []string, args ...string) (*exec.Cmd, *syncBuffer, func() error) {
	t.Helper()
	tool := testtool.Path(t, "systemd-socket-activate", "apt-get install systemd")
	var argv []string
	argv = append(argv, flags...)
	for _, s := range sockets {
		argv = append(argv, "--listen="+s)
	}
	argv = append(argv, bin.machqd)
	argv = append(argv, args...)
	cmd := exec.Command(tool, argv...)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	wait := func() error { <-exited; return waitErr }
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("systemd-socket-activate and machqd logs:\n%s", logs)
		}
	})
	waitFor(t, "systemd-socket-activate to listen", func() bool {
		return strings.Count(logs.String(), "Listening on") == len(sockets)
	})
	return cmd, logs, wait
}

// TestIntegrationSystemdSocketActivate runs machqd the way systemd does,
// with the real systemd-socket-activate: the manager binds two sockets
// and starts machqd when the first client connects; machqd serves both
// (one server, one set of queues), and on SIGTERM exits 0 and leaves the
// manager's socket files in place.
func TestIntegrationSystemdSocketActivate(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	cmd, logs, wait := socketActivate(t, nil, []string{a, b}, "--log-level", "info", "--socket", filepath.Join(dir, "ignored.sock"))
	if strings.Contains(logs.String(), "serving") {
		t.Fatal("machqd started before any client connected")
	}

	// The first client's connection starts the server.
	ctx := ctxT(t)
	ca := dial(t, a)
	if _, err := ca.Send(ctx, "shared", []byte("through a")); err != nil {
		t.Fatalf("send through the first socket: %v", err)
	}
	cb := dial(t, b)
	m, err := cb.Retrieve(ctx, "shared")
	if err != nil || string(m.Bytes()) != "through a" {
		t.Fatalf("retrieve through the second socket: %v", err)
	}
	m.Close()
	st, err := cb.Stat(ctx)
	if err != nil || st.Clients != 2 {
		t.Fatalf("stat through the second socket: %+v, %v; want both clients on one server", st, err)
	}
	if n := strings.Count(logs.String(), "using the socket passed by the service manager"); n != 2 {
		t.Errorf("machqd logged %d inherited sockets, want 2", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "ignored.sock")); err == nil {
		t.Error("machqd bound --socket although the service manager passed sockets")
	}

	// systemd-socket-activate execs machqd in its own process: SIGTERM
	// reaches the server, which stops gracefully.
	ca.Close()
	cb.Close()
	cmd.Process.Signal(syscall.SIGTERM)
	if err := wait(); err != nil {
		t.Fatalf("machqd exited with %v after SIGTERM", err)
	}
	if !strings.Contains(logs.String(), "stopped") {
		t.Error("machqd did not log a graceful stop")
	}
	for _, s := range []string{a, b} {
		if _, err := os.Stat(s); err != nil {
			t.Errorf("the service manager's socket %s was removed: %v", s, err)
		}
	}
}

// TestIntegrationSystemdAcceptRefused: with Accept=yes the manager passes
// a connection instead of the listening socket. machqd must say so and
// what to change, not serve one client or spin on accept.
func TestIntegrationSystemdAcceptRefused(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "per-connection.sock")
	_, logs, _ := socketActivate(t, []string{"--accept"}, []string{socket})
	_, err := machq.Dial(ctxT(t), socket)
	if err == nil {
		t.Fatal("a client got through machqd started with Accept=yes")
	}
	waitFor(t, "machqd to explain the refusal", func() bool {
		return strings.Contains(logs.String(), "Accept=no")
	})
}
