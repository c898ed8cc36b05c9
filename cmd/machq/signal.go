package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// interrupted is the cause of a context that a signal ended.
type interrupted struct{ sig syscall.Signal }

func (e *interrupted) Error() string {
	if e.sig == syscall.SIGINT {
		return "interrupted"
	}
	return fmt.Sprintf("terminated (%s)", signalName(e.sig))
}

// status is the exit status for the signal, as a shell reports a process
// the signal killed: 128 + its number (130 for SIGINT, 143 for SIGTERM).
func (e *interrupted) status() int { return 128 + int(e.sig) }

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// signalContext returns a context that SIGINT or SIGTERM ends, with an
// *interrupted cause. stop releases the signals.
func signalContext() (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-ch:
			sig, _ := s.(syscall.Signal)
			cancel(&interrupted{sig: sig})
			// A second signal takes the default action and ends the
			// process, whatever the first one's cleanup waits for.
			signal.Stop(ch)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel(nil)
	}
}

// interruption returns the signal that ended ctx, or nil.
func interruption(ctx context.Context) *interrupted {
	var in *interrupted
	if errors.As(context.Cause(ctx), &in) {
		return in
	}
	return nil
}

// reportInterrupt says, in one line, that a signal ended the command
// (detail, if not empty, says what became of its work) and returns the
// exit status for the signal. ctx must have been interrupted.
func reportInterrupt(ctx context.Context, stderr io.Writer, detail string) int {
	in := interruption(ctx)
	if in == nil {
		in = &interrupted{sig: syscall.SIGINT}
	}
	if detail != "" {
		fmt.Fprintf(stderr, "machq: %s; %s\n", in, detail)
	} else {
		fmt.Fprintf(stderr, "machq: %s\n", in)
	}
	return in.status()
}

// await runs f and returns its result, or ctx's cause (see
// isInterrupt) as soon as ctx ends if f has not returned by then: f may
// be blocked in a system call that no signal interrupts (a read from a
// terminal or a pipe, the open of a FIFO). It is then left running, and
// whatever it returns is dropped: the caller is about to exit.
func await[T any](ctx context.Context, f func() (T, error)) (T, error) {
	return awaitGrace(ctx, 0, f)
}

// awaitGrace is await that, once ctx ends, still waits up to grace for f
// to return.
func awaitGrace[T any](ctx context.Context, grace time.Duration, f func() (T, error)) (T, error) {
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() {
		v, err := f()
		ch <- res{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case r := <-ch: // f finished too: its result stands
		return r.v, r.err
	case <-t.C:
	}
	var zero T
	return zero, context.Cause(ctx)
}

// isInterrupt reports whether err is the cause of a context a signal
// ended.
func isInterrupt(err error) bool {
	var in *interrupted
	return errors.As(err, &in)
}
