package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"

	"github.com/machq/machq/internal/loadtest"
)

const loadSummary = `Runs many client processes against one server, each storing and retrieving
messages of mixed sizes through its private queue and a named queue, kills
some of them with SIGKILL at random points, and checks that every message a
surviving client stored came back exactly once, in order and unchanged, and
that the server's descriptors, goroutines and stored messages return to
their idle values.

With --ack, producer processes store numbered messages into --queues shared
queues and --clients consumer processes take them in acknowledged delivery
(ReserveWait, holding up to --credit at once), check them and acknowledge
them; the consumers to be killed (--kill) are killed with SIGKILL while they
hold deliveries. Every message stored must then be acknowledged exactly
once, the held ones by other consumers as redeliveries; first deliveries
must come in FIFO order (only a redelivery may come behind a later
message); and no message may be left queued or pending.

Starts its own server unless --socket is given (which must be a server on
this host: its /proc entry is read). Exits 0 when nothing was lost, 1
otherwise.`

func loadCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var cfg loadtest.Config
	var asJSON, quiet bool
	cmd := newCommand("load", loadSummary)
	fs := cmd.fs
	fs.StringVar(&cfg.Socket, "socket", "", "load the server at this socket `path` instead of starting one")
	fs.IntVar(&cfg.Clients, "clients", 200, "client `processes` running at once (with --ack, consumers)")
	fs.IntVar(&cfg.Messages, "messages", 2000, "`messages` each client stores and retrieves (with --ack, each producer stores)")
	fs.IntVar(&cfg.MaxSize, "max-size", 16<<20, "largest payload in `bytes` (most are far smaller)")
	fs.Float64Var(&cfg.KillFraction, "kill", 0.1, "`fraction` of the clients (with --ack, of the consumers) killed with SIGKILL")
	fs.DurationVar(&cfg.KillWindow, "kill-window", 0, "`time` after the start over which the kills are spread (default 2s; 10s with --ack)")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "random `seed`, to repeat a run (default: a new one)")
	fs.DurationVar(&cfg.SigtermAfter, "sigterm", 0, "send the server SIGTERM this `long` after the start, and check that every answer received was whole and the server exited and removed its socket")
	fs.BoolVar(&cfg.Ack, "ack", false, "acknowledged delivery: producers and consumers share queues, consumers are killed holding deliveries")
	fs.IntVar(&cfg.Producers, "producers", 50, "with --ack, producer `processes`")
	fs.IntVar(&cfg.Queues, "queues", 8, "with --ack, shared `queues` (each consumer takes from one)")
	fs.IntVar(&cfg.Credit, "credit", 8, "with --ack, the most `deliveries` a consumer holds unacknowledged")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	fs.BoolVar(&quiet, "quiet", false, "do not report progress on stderr")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	usageErr := func(format string, a ...any) int {
		return fail(stderr, usagef("load", format, a...))
	}
	switch {
	case cfg.Clients <= 0:
		return usageErr("--clients %d: give 1 or more client processes", cfg.Clients)
	case cfg.Messages <= 0:
		return usageErr("--messages %d: give 1 or more messages per client", cfg.Messages)
	case cfg.MaxSize < 16:
		return usageErr("--max-size %d: give 16 bytes or more", cfg.MaxSize)
	case !(cfg.KillFraction >= 0 && cfg.KillFraction <= 1):
		return usageErr("--kill %v: give a fraction from 0 to 1, such as 0.1", cfg.KillFraction)
	case cfg.KillWindow < 0:
		return usageErr("--kill-window %v: must not be negative", cfg.KillWindow)
	case cfg.SigtermAfter < 0:
		return usageErr("--sigterm %v: must not be negative", cfg.SigtermAfter)
	case cfg.Ack && cfg.SigtermAfter > 0:
		return usageErr("--ack and --sigterm cannot be combined")
	case cfg.Ack && cfg.Producers <= 0:
		return usageErr("--producers %d: give 1 or more producer processes", cfg.Producers)
	case cfg.Ack && cfg.Queues <= 0:
		return usageErr("--queues %d: give 1 or more queues", cfg.Queues)
	case cfg.Ack && cfg.Clients < cfg.Queues:
		return usageErr("--clients %d: give at least one consumer for each of the %d queues", cfg.Clients, cfg.Queues)
	case cfg.Ack && cfg.Credit <= 0:
		return usageErr("--credit %d: give 1 or more deliveries", cfg.Credit)
	}
	if cfg.KillFraction == 0 {
		// The load test takes 0 for its default; a fraction this small
		// kills nobody.
		cfg.KillFraction = math.SmallestNonzeroFloat64
	}
	if cfg.Socket != "" {
		p, err := socketPath(cfg.Socket)
		if err != nil {
			return usageErr("--socket %s: %v", cfg.Socket, err)
		}
		cfg.Socket = p
	}
	var err error
	if cfg.Command, err = selfCommand(); err != nil {
		return fail(stderr, err)
	}
	if !quiet {
		cfg.Progress = stderr
	}
	rep, err := loadtest.Run(ctx, cfg)
	if err != nil {
		return runFailed(ctx, stderr, "load", err)
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else if rep.Ack != nil {
		printAckReport(stdout, rep)
	} else {
		fmt.Fprintf(stdout, "clients     %d (%d killed with SIGKILL, %d survived)\n", rep.Clients, rep.Killed, rep.Survivors)
		fmt.Fprintf(stdout, "messages    %d stored by survivors, %d bytes\n", rep.Messages, rep.Bytes)
		fmt.Fprintf(stdout, "losses      %d\nduplicates  %d\nfailures    %d\n", rep.Losses, rep.Duplicates, len(rep.Failures))
		for _, f := range rep.Failures {
			fmt.Fprintf(stdout, "  %s\n", f)
		}
		if rep.Sigterm {
			fmt.Fprintf(stdout, "sigterm     %d clients stopped by the shutdown; server exited: %v; socket removed: %v\n", rep.Stopped, rep.ServerExited, rep.SocketRemoved)
			fmt.Fprintf(stdout, "server      %d MiB RSS and %d fds idle, %d MiB and %d fds at peak\n", rep.Baseline.RSS>>20, rep.Baseline.FDs, rep.Peak.RSS>>20, rep.Peak.FDs)
		} else {
			fmt.Fprintf(stdout, "drained     %d messages left by killed clients\n", rep.Drained)
			fmt.Fprintf(stdout, "server RSS  %d MiB idle, %d MiB peak, %d MiB after\n", rep.Baseline.RSS>>20, rep.Peak.RSS>>20, rep.After.RSS>>20)
			fmt.Fprintf(stdout, "server fds  %d idle, %d peak, %d after\n", rep.Baseline.FDs, rep.Peak.FDs, rep.After.FDs)
			fmt.Fprintf(stdout, "goroutines  %d idle, %d after\n", rep.Baseline.Goroutines, rep.After.Goroutines)
			fmt.Fprintf(stdout, "stored      %d messages, %d bytes after\n", rep.After.Messages, rep.After.Bytes)
		}
		fmt.Fprintf(stdout, "seed        %d\nelapsed     %.1fs\n", rep.Seed, rep.Elapsed)
	}
	if !rep.Ok() {
		fmt.Fprintln(stderr, "machq load: FAILED: something was lost, duplicated or not freed (see above)")
		return exitError
	}
	return exitOK
}

// printAckReport prints the report of a load run in ack mode.
func printAckReport(w io.Writer, rep *loadtest.Report) {
	a := rep.Ack
	fmt.Fprintf(w, "processes   %d producers, %d consumers on %d queues, credit %d\n", a.Producers, a.Consumers, a.Queues, a.Credit)
	fmt.Fprintf(w, "killed      %d consumers with SIGKILL holding %d deliveries (%d chosen, %d found nothing to hold)\n", rep.Killed, a.Held, a.Victims, a.Spared)
	fmt.Fprintf(w, "messages    %d stored, %d bytes; %d acknowledged (%d acks)\n", rep.Messages, rep.Bytes, a.Acked, a.Acks)
	fmt.Fprintf(w, "redelivered %d acknowledged after an earlier delivery (at most %d deliveries)\n", a.Redelivered, a.MaxDeliveries)
	fmt.Fprintf(w, "losses      %d\nduplicates  %d\n", rep.Losses, rep.Duplicates)
	fmt.Fprintf(w, "order       %d violations; %d redeliveries came behind a later message\n", a.OrderViolations, a.Behind)
	fmt.Fprintf(w, "mismatches  %d\n", a.Mismatches)
	fmt.Fprintf(w, "server      %d acked, %d delivered, %d redelivered, %d dead-lettered\n", a.ServerAcked, a.ServerDelivered, a.ServerRedelivered, a.ServerDeadLettered)
	if a.Stalled {
		fmt.Fprintln(w, "stalled     no acknowledgement for too long; the rest counted as lost")
	}
	fmt.Fprintf(w, "failures    %d\n", len(rep.Failures))
	for _, f := range rep.Failures {
		fmt.Fprintf(w, "  %s\n", f)
	}
	for _, p := range a.Problems {
		fmt.Fprintf(w, "  %s\n", p)
	}
	for _, q := range a.QueuesLeft {
		fmt.Fprintf(w, "  left in %s\n", q)
	}
	fmt.Fprintf(w, "server RSS  %d MiB idle, %d MiB peak, %d MiB after (not checked: the heap the consumers left waits for a collection)\n", rep.Baseline.RSS>>20, rep.Peak.RSS>>20, rep.After.RSS>>20)
	fmt.Fprintf(w, "server fds  %d idle, %d peak, %d after\n", rep.Baseline.FDs, rep.Peak.FDs, rep.After.FDs)
	fmt.Fprintf(w, "goroutines  %d idle, %d after\n", rep.Baseline.Goroutines, rep.After.Goroutines)
	fmt.Fprintf(w, "stored      %d messages (%d pending), %d bytes after\n", rep.After.Messages, rep.After.Pending, rep.After.Bytes)
	fmt.Fprintf(w, "seed        %d\nelapsed     %.1fs\n", rep.Seed, rep.Elapsed)
}

// loadClientCmd is one client process of machq load.
func loadClientCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var cfg loadtest.ClientConfig
	var ack loadtest.AckClientConfig
	cmd := newCommand("load-client", "One client process of machq load.")
	fs := cmd.fs
	fs.StringVar(&cfg.Socket, "socket", "", "server socket path")
	fs.IntVar(&cfg.ID, "id", 0, "client number")
	fs.IntVar(&cfg.Messages, "messages", 100, "messages to store and retrieve")
	fs.IntVar(&cfg.MaxSize, "max-size", 1<<20, "largest payload in bytes")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "random seed")
	fs.BoolVar(&cfg.ShutdownOK, "shutdown-ok", false, "the server stopping is an expected end")
	fs.StringVar(&ack.Role, "role", "", "ack mode: producer or consumer")
	fs.IntVar(&ack.Producers, "producers", 1, "ack mode: producers in the run")
	fs.IntVar(&ack.Queues, "queues", 1, "ack mode: shared queues in the run")
	fs.IntVar(&ack.Queue, "queue", 0, "ack mode: the queue a consumer takes from")
	fs.IntVar(&ack.Credit, "credit", 1, "ack mode: deliveries a consumer holds at most")
	fs.BoolVar(&ack.Victim, "victim", false, "ack mode: hold deliveries after --hold-after, to be killed")
	fs.DurationVar(&ack.HoldAfter, "hold-after", 0, "ack mode: when a victim starts holding")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	var err error
	if ack.Role != "" {
		ack.Socket, ack.ID, ack.Messages, ack.MaxSize, ack.Seed = cfg.Socket, cfg.ID, cfg.Messages, cfg.MaxSize, cfg.Seed
		err = loadtest.RunAckClient(ctx, ack, os.Stdin, stdout)
	} else {
		err = loadtest.RunClient(ctx, cfg, stdout)
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return exitError
		}
		fmt.Fprintf(stderr, "machq load-client: %v\n", err)
		return exitError
	}
	return exitOK
}
