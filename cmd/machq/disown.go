package main

import (
	"context"
	"fmt"
	"io"
)

const disownSummary = `Gives up the name of an owned named queue (one created with --owned),
which otherwise stays its owner's until the server stops (a restart keeps
it, and so does a durable queue's data directory). The queue must
be empty with no retrieve waiting on it; it is removed, and anyone may then
create the name again. Only its owner, or root, may disown it.`

func disownCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	var queue string
	cmd := newCommand("disown", disownSummary)
	c.register(cmd, "warn")
	cmd.fs.StringVar(&queue, "queue", "", "owned named `queue` to give up (required)")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if err := checkQueue("disown", queue, "name the owned queue to give up"); err != nil {
		return fail(stderr, err)
	}
	if _, err := c.check("disown", stderr); err != nil {
		return fail(stderr, err)
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	defer cl.Close()
	if err := cl.Disown(ctx, queue); err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	fmt.Fprintf(stdout, "queue %s disowned: anyone may create it now\n", queue)
	return exitOK
}
