package main

import (
	"context"
	"fmt"
	"io"

	"github.com/machq/machq"
)

const versionSummary = "Prints this machq's version and, from the handshake, the server's: its build, the\nprotocol version the two agree on, and its pid. Without a server it prints its own\nand exits with status 4. machq --version prints only its own."

// versionLine is what machq --version prints.
func versionLine() string { return "machq " + machq.Version() }

func versionCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	cmd := newCommand("version", versionSummary)
	c.register(cmd, "warn")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if _, err := c.check("version", stderr); err != nil {
		return fail(stderr, err)
	}
	fmt.Fprintln(stdout, versionLine())
	cl, err := c.dial(ctx)
	if err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	defer cl.Close()
	sw := cl.ServerVersion()
	if sw == "" {
		sw = "machqd (a version that does not say which)"
	}
	fmt.Fprintf(stdout, "server %s, protocol %d, pid %d, at %s\n", sw, cl.ProtocolVersion(), cl.ServerPID(), cl.Path())
	return exitOK
}
