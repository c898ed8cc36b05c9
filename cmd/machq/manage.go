package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/machq/machq"
)

// Queue management commands: peek, purge, delete, kick.

const kickSummary = `Moves dead letters of --queue (messages TERMed, or delivered the most times
the server allows: they wait in the queue QUEUE.dlq) back to --queue, each at
its original place with a fresh delivery count, and prints how many moved.`

func kickCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	var queue string
	var n int
	cmd := newCommand("kick", kickSummary)
	c.register(cmd, "warn")
	cmd.fs.StringVar(&queue, "queue", "", "named `queue` whose dead letters to move back (required)")
	cmd.fs.IntVar(&n, "n", 0, "move at most this many, oldest first; 0 moves them all")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if err := checkQueue("kick", queue, "dead letters belong to a named queue"); err != nil {
		return fail(stderr, err)
	}
	if n < 0 {
		return fail(stderr, usagef("kick", "-n %d: must not be negative", n))
	}
	if _, err := c.check("kick", stderr); err != nil {
		return fail(stderr, err)
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	defer cl.Close()
	moved, err := cl.Kick(ctx, queue, n)
	if err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	fmt.Fprintf(stdout, "%d dead letters moved from %s.dlq back to %s\n", moved, queue, queue)
	return exitOK
}

const peekSummary = `Writes the oldest message of --queue to stdout without taking it; with --list,
shows the first -n messages in line instead: sequence number, size, times
delivered, and why a dead letter is one. Messages pending with consumers, or
NAKed and waiting out a delay, are not in line. An empty queue exits with
status 3.`

func peekCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	var queue string
	var list bool
	var n int
	cmd := newCommand("peek", peekSummary)
	c.register(cmd, "warn")
	c.registerConsumer(cmd)
	cmd.fs.StringVar(&queue, "queue", "", "named `queue` to look at (required)")
	cmd.fs.BoolVar(&list, "list", false, "list the first messages instead of writing the oldest")
	cmd.fs.IntVar(&n, "n", 10, "with --list, list at most this many `messages`")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if err := checkQueue("peek", queue, "a new connection's private queue is always empty"); err != nil {
		return fail(stderr, err)
	}
	if n < 1 {
		return fail(stderr, usagef("peek", "-n %d: must be at least 1", n))
	}
	if _, err := c.check("peek", stderr); err != nil {
		return fail(stderr, err)
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	defer cl.Close()
	if !list {
		m, err := cl.Peek(ctx, queue, 0)
		if m != nil {
			defer m.Close()
		}
		if err != nil {
			return failOrInterrupted(ctx, stderr, err)
		}
		if _, err := m.WriteTo(stdout); err != nil {
			return fail(stderr, fmt.Errorf("write payload: %w", err))
		}
		return exitOK
	}
	fmt.Fprintf(stdout, "%-12s %14s %10s %-16s %s\n", "SEQ", "BYTES", "DELIVERIES", "DEAD", "NOTE")
	for i := range n {
		m, err := cl.Peek(ctx, queue, i)
		if m != nil {
			m.Close()
		}
		switch {
		case errors.Is(err, machq.ErrEmpty) && i > 0:
			return exitOK
		case errors.Is(err, machq.ErrTampered):
			fmt.Fprintf(stderr, "machq: %s\n", trimPrefix(err))
		case err != nil:
			return failOrInterrupted(ctx, stderr, err)
		}
		dead := "-"
		if m.DeadReason() != machq.NotDead {
			dead = fmt.Sprintf("%s (after %d)", m.DeadReason(), m.DiedAfter())
		}
		fmt.Fprintf(stdout, "%-12d %14d %10d %-16s %q\n", m.Seq, m.Len(), m.Deliveries(), dead, m.Note())
	}
	return exitOK
}

func purgeCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return dropCmd(ctx, "purge", `Frees every message of --queue: those in line and those NAKed and waiting out a
delay at once, those pending with consumers when they come back
unacknowledged. Consumers waiting on the queue go on waiting.`, args, stdout, stderr)
}

func deleteCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return dropCmd(ctx, "delete", `Removes --queue with everything it holds, as purge frees it; consumers waiting
on it are told it was deleted, and its name is free for anyone to create again
(an owned queue may be deleted only by its owner or root).`, args, stdout, stderr)
}

// dropCmd is purge or delete.
func dropCmd(ctx context.Context, name, summary string, args []string, stdout, stderr io.Writer) int {
	var c common
	var queue string
	cmd := newCommand(name, summary)
	c.register(cmd, "warn")
	cmd.fs.StringVar(&queue, "queue", "", "named `queue` to "+name+" (required)")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if err := checkQueue(name, queue, "a new connection's private queue is always empty"); err != nil {
		return fail(stderr, err)
	}
	if _, err := c.check(name, stderr); err != nil {
		return fail(stderr, err)
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	defer cl.Close()
	var d machq.Purged
	if name == "purge" {
		d, err = cl.Purge(ctx, queue)
	} else {
		d, err = cl.Delete(ctx, queue)
	}
	if err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	verb := "purged"
	if name == "delete" {
		verb = "deleted"
	}
	fmt.Fprintf(stdout, "%s %s: %d messages freed", verb, queue, d.Freed)
	if d.Pending > 0 {
		fmt.Fprintf(stdout, "; %d pending with consumers are freed when they come back unacknowledged", d.Pending)
	}
	fmt.Fprintln(stdout)
	return exitOK
}

const groupSummary = `Creates or deletes a consumer group of --queue:

  machq group create --queue Q --group G [--from-oldest]
  machq group delete --queue Q --group G

Once a queue has groups, every message stored into it goes to each group,
and is freed once every group has acknowledged it; the consumers of one
group compete for its messages (machq retrieve --queue Q --group G). A
group receives the messages stored after it was created; --from-oldest
also gives it every message in line in the queue (its own line and its
other groups' lines, each once). Deleting a group frees what only it held.`

func groupCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "create" && args[0] != "delete" && args[0] != "-h" && args[0] != "--help" && args[0] != "-help") {
		return printUsageError(stderr, &usageError{msg: "group: say create or delete: machq group create --queue Q --group G", hint: true, cmd: "group"})
	}
	action := "create"
	if args[0] == "create" || args[0] == "delete" {
		action, args = args[0], args[1:]
	}
	var c common
	var queue, group string
	var fromOldest bool
	cmd := newCommand("group", groupSummary)
	c.register(cmd, "warn")
	cmd.fs.StringVar(&queue, "queue", "", "named `queue` (required)")
	cmd.fs.StringVar(&group, "group", "", "consumer `group` name (required): the rules of queue names")
	cmd.fs.BoolVar(&fromOldest, "from-oldest", false, "create: also give the group every message in line in the queue and its other groups")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if err := checkQueue("group", queue, "consumer groups belong to a named queue"); err != nil {
		return fail(stderr, err)
	}
	if group == "" {
		return fail(stderr, usagef("group", "--group is required"))
	}
	if err := machq.ValidQueueName(group); err != nil {
		return fail(stderr, usagef("group", "--group: %s", trimPrefix(err)))
	}
	if action == "delete" && fromOldest {
		return fail(stderr, usagef("group", "--from-oldest is for create"))
	}
	if _, err := c.check("group", stderr); err != nil {
		return fail(stderr, err)
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	defer cl.Close()
	if action == "create" {
		adopted, created, err := cl.CreateGroup(ctx, queue, group, fromOldest)
		switch {
		case err != nil:
			return failOrInterrupted(ctx, stderr, err)
		case !created:
			fmt.Fprintf(stdout, "queue %s has a group %s already\n", queue, group)
		case fromOldest:
			fmt.Fprintf(stdout, "created group %s of %s with the %d messages in line\n", group, queue, adopted)
		default:
			fmt.Fprintf(stdout, "created group %s of %s\n", group, queue)
		}
		return exitOK
	}
	p, err := cl.DeleteGroup(ctx, queue, group)
	if err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	fmt.Fprintf(stdout, "deleted group %s of %s: %d messages freed", group, queue, p.Freed)
	if p.Pending > 0 {
		fmt.Fprintf(stdout, "; %d pending with its consumers are freed when they come back unacknowledged", p.Pending)
	}
	fmt.Fprintln(stdout)
	return exitOK
}

const configSummary = `Sets a named queue's own acknowledged-delivery settings, which its consumer
groups share: how many deliveries a message may have before it becomes a dead
letter, and the lease of a retrieve that asks for none. 0 (the default of each
flag) takes the server's setting. The queue is created if need be.`

func configCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	var queue string
	var maxDeliveries int
	var lease time.Duration
	var noLease bool
	cmd := newCommand("config", configSummary)
	c.register(cmd, "warn")
	cmd.fs.StringVar(&queue, "queue", "", "named `queue` to configure (required)")
	cmd.fs.IntVar(&maxDeliveries, "max-deliveries", 0, "deliveries in ack mode before a message becomes a dead letter (0: the server's)")
	cmd.fs.DurationVar(&lease, "lease", 0, "lease of an ack-mode retrieve that asks for none (0: the server's)")
	cmd.fs.BoolVar(&noLease, "no-lease", false, "no lease at all, whatever the server's default")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if err := checkQueue("config", queue, "settings belong to a named queue"); err != nil {
		return fail(stderr, err)
	}
	if maxDeliveries < 0 || lease < 0 {
		return fail(stderr, usagef("config", "--max-deliveries and --lease must not be negative"))
	}
	if noLease && lease != 0 {
		return fail(stderr, usagef("config", "--lease and --no-lease contradict each other"))
	}
	if _, err := c.check("config", stderr); err != nil {
		return fail(stderr, err)
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	defer cl.Close()
	cfg := machq.QueueConfig{MaxDeliveries: maxDeliveries, Lease: lease}
	if noLease {
		cfg.Lease = -1
	}
	if err := cl.Configure(ctx, queue, cfg); err != nil {
		return failOrInterrupted(ctx, stderr, err)
	}
	fmt.Fprintf(stdout, "configured %s\n", queue)
	return exitOK
}
