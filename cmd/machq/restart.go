package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/machq/machq"
)

const restartSummary = `Restarts the server in place, keeping its memory-only named queues
(docs/RESTART.md): sends machqd SIGUSR2 and waits until it serves again,
under the same pid. machqd first checks that the executable now on disk
(an upgrade, say) starts with its flags; if not, it logs why and goes on
serving as it was, and this command says so once --timeout has passed.
Only the server's user, or root, may restart it.`

func restartCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	var timeout time.Duration
	cmd := newCommand("restart", restartSummary)
	c.register(cmd, "warn")
	cmd.fs.DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the server to serve again")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if timeout <= 0 {
		return fail(stderr, usagef("restart", "--timeout %v: must be positive", timeout))
	}
	if _, err := c.check("restart", stderr); err != nil {
		return fail(stderr, err)
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	defer cl.Close()
	pid := cl.ServerPID()
	if pid <= 0 {
		return fail(stderr, errors.New("restart: the server did not say its pid at the handshake (an older machqd?): send it SIGUSR2 yourself"))
	}
	start := time.Now()
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		if errors.Is(err, syscall.EPERM) {
			return fail(stderr, fmt.Errorf("restart: may not signal machqd (pid %d): run as its user or root", pid))
		}
		return fail(stderr, fmt.Errorf("restart: signal machqd (pid %d): %w", pid, err))
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A restart ends this connection (the server answers the wait with
	// SHUTTING_DOWN); one the server refused leaves it, and the wait runs
	// out.
	_, err = cl.RetrieveWait(wctx, "")
	switch {
	case ctx.Err() != nil:
		return failOrInterrupted(ctx, stderr, ctx.Err())
	case errors.Is(err, context.DeadlineExceeded):
		return fail(stderr, fmt.Errorf("restart: machqd (pid %d) still serves the same connection after %v: it refused to restart; its log says why (the executable on disk did not start with its flags)", pid, timeout))
	case err != nil && !errors.Is(err, machq.ErrClosed) && !errors.Is(err, machq.ErrShuttingDown):
		return fail(stderr, fmt.Errorf("restart: %w", err))
	}
	// The listening socket stayed open: this dial waits in its backlog
	// until the new server accepts.
	var again *machq.Client
	for {
		again, err = c.dial(wctx)
		if err == nil || wctx.Err() != nil {
			break
		}
		select { // the server may be between two states; try again
		case <-wctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err != nil {
		return failOrInterrupted(ctx, stderr, fmt.Errorf("restart: machqd did not serve again within %v: %w", timeout, err))
	}
	defer again.Close()
	if got := again.ServerPID(); got != pid {
		return fail(stderr, fmt.Errorf("restart: the server now answering is pid %d, not machqd pid %d restarted in place", got, pid))
	}
	fmt.Fprintf(stdout, "machqd (pid %d) restarted in place in %v\n", pid, time.Since(start).Round(time.Millisecond))
	return exitOK
}
