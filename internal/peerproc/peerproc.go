// Package peerproc runs the server processes the benchmark and the load
// test start: a child that writes "ready" on its stdout once it serves,
// and stops when its stdin reaches end of file.
package peerproc

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StartTimeout bounds how long a process may take to say it is ready.
const StartTimeout = 15 * time.Second

// Process is a running peer process.
type Process struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
	err   error
	log   *tailBuffer
}

// Start runs cmd and waits until it writes "ready", it exits, StartTimeout
// passes or ctx ends. name says what it is in errors.
func Start(ctx context.Context, name string, cmd *exec.Cmd) (*Process, error) {
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p := &Process{name: name, cmd: cmd, stdin: stdin, done: make(chan struct{}), log: &tailBuffer{}}
	cmd.Stderr = p.log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
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
	timer := time.NewTimer(StartTimeout)
	defer timer.Stop()
	select {
	case line := <-lines:
		if line == "ready" {
			return p, nil
		}
		p.Stop()
		return nil, fmt.Errorf("%s said %q instead of ready", name, line)
	case <-p.done:
		return nil, fmt.Errorf("%s exited before serving (%v): %s", name, p.err, p.log.String())
	case <-timer.C:
		p.Stop()
		return nil, fmt.Errorf("%s did not start within %s: %s", name, StartTimeout, p.log.String())
	case <-ctx.Done():
		p.Stop()
		return nil, ctx.Err()
	}
}

// PID returns the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Stop ends the process: end of stdin, then SIGTERM, then SIGKILL. It is
// safe to call more than once and after the process exited.
func (p *Process) Stop() {
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

// tailBuffer keeps the last few KiB written to it: a process's stderr.
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
