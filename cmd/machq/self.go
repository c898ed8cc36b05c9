package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
)

// selfCommand returns a function making commands that run this program
// with prefix and then the given arguments: how bench and load start
// their server and client processes.
func selfCommand(prefix ...string) (func(args ...string) *exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("cannot find this program to start its helper processes: %w", err)
	}
	return func(args ...string) *exec.Cmd {
		return exec.Command(self, append(append([]string(nil), prefix...), args...)...)
	}, nil
}

// runFailed reports the error that ended command cmd and returns its exit
// status: an interrupt is said as such, with the signal's status.
func runFailed(ctx context.Context, stderr io.Writer, cmd string, err error) int {
	if in := interruption(ctx); in != nil {
		fmt.Fprintf(stderr, "machq %s: %s\n", cmd, in)
		return in.status()
	}
	return fail(stderr, err)
}
