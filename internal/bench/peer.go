package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/machq/machq/internal/bench/floor"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/server"
)

// peerStartTimeout bounds how long a peer process may take to report
// that it is serving.
const peerStartTimeout = 15 * time.Second

// Peer kinds, the first argument of RunPeer.
const (
	peerMachq = "machqd"
	peerFloor = "floor"
	peerMq    = "mqueue"
)

// RunPeer is the body of a peer process: it serves the kind of server
// args[0] names until ctx ends, stdin reaches end of file (the benchmark
// exited) or SIGTERM arrives. It writes "ready" on stdout once serving.
//
//	machqd SOCKET        a machq server (inline limit 1 MiB)
//	floor copy|memfd SOCKET  a bare store/echo server
//	mqueue CONTROL       a POSIX message queue store/echo server
func RunPeer(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("bench peer: which kind? machqd, floor or mqueue")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		io.Copy(io.Discard, stdin)
		cancel()
	}()
	ready := func() { fmt.Fprintln(stdout, "ready") }
	switch args[0] {
	case peerMachq:
		if len(args) != 2 {
			return errors.New("bench peer: usage: machqd SOCKET")
		}
		return serveMachq(ctx, args[1], ready)
	case peerFloor:
		if len(args) != 3 {
			return errors.New("bench peer: usage: floor copy|memfd SOCKET")
		}
		mech, err := floorMechanism(args[1])
		if err != nil {
			return err
		}
		return serveFloor(ctx, mech, args[2], ready)
	case peerMq:
		return serveMqueue(ctx, args[1:], ready)
	}
	return fmt.Errorf("bench peer: unknown kind %q", args[0])
}

func serveMachq(ctx context.Context, path string, ready func()) error {
	s, err := server.New(server.Config{MaxInline: wire.MaxInline})
	if err != nil {
		return err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(l) }()
	ready()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Shutdown(sctx)
	return nil
}

func floorMechanism(name string) (floor.Mechanism, error) {
	for _, m := range []floor.Mechanism{floor.Copy, floor.Memfd} {
		if m.String() == name {
			return m, nil
		}
	}
	return 0, fmt.Errorf("bench peer: unknown floor mechanism %q; use copy or memfd", name)
}

// peer is a running peer process.
type peer struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
	err   error
	log   *tailBuffer
}

// startPeer runs a peer process and waits until it is serving.
func (e *environment) startPeer(ctx context.Context, args ...string) (*peer, error) {
	cmd := e.cfg.PeerCommand(args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p := &peer{cmd: cmd, stdin: stdin, done: make(chan struct{}), log: &tailBuffer{}}
	cmd.Stderr = p.log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s peer: %w", args[0], err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	timer := time.NewTimer(peerStartTimeout)
	defer timer.Stop()
	select {
	case line := <-lines:
		if line == "ready" {
			e.peers = append(e.peers, p)
			return p, nil
		}
		p.stop()
		return nil, fmt.Errorf("bench: %s peer said %q instead of ready", args[0], line)
	case <-p.done:
		return nil, fmt.Errorf("bench: %s peer exited before serving (%v): %s", args[0], p.err, p.log.String())
	case <-timer.C:
		p.stop()
		return nil, fmt.Errorf("bench: %s peer did not start within %s: %s", args[0], peerStartTimeout, p.log.String())
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
}

// pid returns the peer's process id.
func (p *peer) pid() int { return p.cmd.Process.Pid }

// stop ends the peer: end of stdin, then SIGTERM, then SIGKILL.
func (p *peer) stop() {
	p.stdin.Close()
	select {
	case <-p.done:
		return
	case <-time.After(2 * time.Second):
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(5 * time.Second):
	}
	p.cmd.Process.Kill()
	<-p.done
}

// tailBuffer keeps the last few KiB written to it: a peer's stderr.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}
