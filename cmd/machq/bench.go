package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/bench"
)

const benchSummary = `Measures machq's store + retrieve round trip against the bare kernel
mechanisms (a sealed memfd passed with SCM_RIGHTS, a copy through a stream
socket), Redis lists over a Unix socket and POSIX message queues, in one
run, interleaved, and reports each as a ratio to machq; machq-spin, machq
whose server (a machqd of its own, --spin) and clients (WithSpin) spin for
up to --spin on a read before they park, up to 64 KiB and in the
small-message throughput; machq-metrics, machq whose server counts
Prometheus metrics as machqd --metrics does and gathers them every second,
likewise; and machq's ack mode (store + reserve + ack)
against Redis Streams (XADD + XREADGROUP + XACK). Then the zero-copy view;
a stream of --stream-size frames from a producer process through a named
queue to a consumer process reading every byte, in frames per second with
NewPage + SendPage and with Send from a reused buffer, and the first over
the second (target 1.3 or more); where the time goes, digest costs,
small-message throughput with many clients and with pipelining, and the
server's memory with many messages stored. The small-message comparison
(round trips up to 4 KiB, throughput) runs unpinned and, with --pin both
(the default on 2 CPUs or more), again with the servers on one CPU and the
benchmark on another. Last, the durable runs: small durable stores per
second with machqd --data-dir against Redis with appendfsync always, a
64 MiB durable store against a kernel copy into a file and its sync, and
machqd's recovery of --recovery-messages stored messages, all in
--durable-dir. Every system runs as its own server process; redis-server
is used when installed.`

func benchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var (
		cfg                bench.Config
		sizes, systems     string
		clients, skip, dig string
		asJSON, quiet      bool
		plotFile, saveFile string
		durableSize        string
		streamSize         string
	)
	cmd := newCommand("bench", benchSummary)
	fs := cmd.fs
	fs.StringVar(&cfg.Socket, "socket", "", "measure the machq server at this socket `path` instead of starting one")
	fs.StringVar(&sizes, "sizes", "0,64,4K,64K,1M,16M,64M,256M", "payload `sizes`, comma-separated, with optional K, M or G (binary) suffix")
	fs.StringVar(&systems, "systems", "", "comma-separated `systems` to measure (default all): "+strings.Join(bench.SystemNames(), ", "))
	fs.DurationVar(&cfg.Time, "time", 500*time.Millisecond, "time `budget` of each system at each size")
	fs.IntVar(&cfg.Rounds, "rounds", 5, "`rounds` the systems are rotated through at each size")
	fs.IntVar(&cfg.MinIters, "min-iters", 5, "fewest round trips per system and size")
	fs.StringVar(&clients, "clients", "1,8,64", "client `counts` of the throughput test, and producer counts of the durable stores")
	fs.IntVar(&cfg.Depth, "depth", 16, "pipeline `depth` of the pipelined throughput test")
	fs.StringVar(&dig, "digest", "none", "digest machq computes and verifies during the comparison: none (transport alone, like the other systems), sha256 or blake3")
	fs.DurationVar(&cfg.Spin, "spin", bench.DefaultSpin, "spin `budget` of machq-spin alone, machq spinning before it parks on a read: its machqd runs with --spin of it and its clients dial with WithSpin of it; the other systems do not spin")
	fs.StringVar(&cfg.Pin, "pin", "", "`placement` of the small-message comparison (round trips up to 4K, throughput): unpinned (left to the scheduler), pinned (servers on one CPU, every thread of the benchmark on another) or both (default: both on 2 CPUs or more without --socket, else unpinned)")
	fs.StringVar(&skip, "skip", "", "comma-separated `parts` to leave out: zero-copy, stream, phases, throughput, memory, durable")
	fs.StringVar(&streamSize, "stream-size", "8M", "frame `size` of the streaming run")
	fs.IntVar(&cfg.StreamFrames, "stream-frames", bench.DefaultStreamFrames, "`frames` each streaming run sends, per variant and round")
	fs.IntVar(&cfg.SmallMessages, "small-messages", 1_000_000, "64-byte messages stored by the memory test (and by the recovery run, unless --recovery-messages)")
	fs.IntVar(&cfg.LargeMessages, "large-messages", 1000, "16 MiB messages stored by the memory test")
	fs.StringVar(&cfg.DurableDir, "durable-dir", os.TempDir(), "`directory` on the disk to measure where the durable runs keep their data (in a temporary directory, removed at the end)")
	fs.DurationVar(&cfg.DurableTime, "durable-time", 0, "time `budget` of each system at each producer count of the durable stores (0: 4 × --time)")
	fs.StringVar(&durableSize, "durable-size", "64M", "payload `size` of the large durable store")
	fs.IntVar(&cfg.RecoveryMessages, "recovery-messages", 0, "64-byte durable `messages` stored before timing machqd's recovery (0: --small-messages)")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON instead of tables")
	fs.StringVar(&plotFile, "plot", "", "draw latency against size, log-log, to this `file` (.png, .svg or .pdf)")
	fs.StringVar(&saveFile, "save", "", "also write the report as JSON to this `file`")
	fs.BoolVar(&quiet, "quiet", false, "do not report progress on stderr")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	usageErr := func(format string, a ...any) int {
		return fail(stderr, usagef("bench", format, a...))
	}
	switch {
	case cfg.Time <= 0:
		return usageErr("--time %v: give a time budget above 0, such as 500ms", cfg.Time)
	case cfg.Rounds <= 0:
		return usageErr("--rounds %d: give 1 or more rounds", cfg.Rounds)
	case cfg.MinIters <= 0:
		return usageErr("--min-iters %d: give 1 or more round trips", cfg.MinIters)
	case cfg.Depth <= 0:
		return usageErr("--depth %d: give a pipeline depth of 1 or more", cfg.Depth)
	case cfg.SmallMessages <= 0:
		return usageErr("--small-messages %d: give 1 or more (or --skip memory)", cfg.SmallMessages)
	case cfg.LargeMessages <= 0:
		return usageErr("--large-messages %d: give 1 or more (or --skip memory)", cfg.LargeMessages)
	case cfg.Spin <= 0 || cfg.Spin > bench.MaxSpin:
		return usageErr("--spin %v: give a budget above 0 and at most %v, such as 50µs (or leave machq-spin out with --systems)", cfg.Spin, bench.MaxSpin)
	case cfg.StreamFrames <= 0:
		return usageErr("--stream-frames %d: give 1 or more (or --skip stream)", cfg.StreamFrames)
	case cfg.DurableTime < 0:
		return usageErr("--durable-time %v: give a time budget above 0, or 0 for 4 × --time", cfg.DurableTime)
	case cfg.RecoveryMessages < 0:
		return usageErr("--recovery-messages %d: give 1 or more, or 0 for --small-messages", cfg.RecoveryMessages)
	}
	if cfg.Socket != "" {
		p, err := socketPath(cfg.Socket)
		if err != nil {
			return usageErr("--socket %s: %v", cfg.Socket, err)
		}
		cfg.Socket = p
	}
	var err error
	if cfg.Sizes, err = parseSizes(sizes); err != nil {
		return usageErr("--sizes: %v", err)
	}
	if cfg.Clients, err = parseInts(clients); err != nil {
		return usageErr("--clients: %v", err)
	}
	ds, err := parseSizes(durableSize)
	if err != nil || len(ds) != 1 || ds[0] <= 0 {
		return usageErr("--durable-size %s: give one size above 0, such as 64M", durableSize)
	}
	cfg.DurableLargeSize = ds[0]
	ss, err := parseSizes(streamSize)
	if err != nil || len(ss) != 1 || ss[0] <= 0 {
		return usageErr("--stream-size %s: give one size above 0, such as 8M", streamSize)
	}
	cfg.StreamSize = ss[0]
	if systems != "" {
		cfg.Systems = strings.Split(systems, ",")
		for _, name := range cfg.Systems {
			if !slices.Contains(bench.SystemNames(), name) {
				return usageErr("--systems: unknown system %q; choose from %s", name, strings.Join(bench.SystemNames(), ", "))
			}
		}
	}
	if cfg.Digest, err = machq.ParseDigest(dig); err != nil {
		return usageErr("--digest: %v", trimPrefix(err))
	}
	switch {
	case cfg.Pin != "" && !slices.Contains(bench.PinModes(), cfg.Pin):
		return usageErr("--pin %s: use %s", cfg.Pin, strings.Join(bench.PinModes(), ", "))
	case cfg.Socket != "" && (cfg.Pin == bench.PinPinned || cfg.Pin == bench.PinBoth):
		return usageErr("--pin %s: the benchmark cannot place a server it did not start (--socket); use --pin unpinned", cfg.Pin)
	}
	for part := range strings.SplitSeq(skip, ",") {
		switch strings.TrimSpace(part) {
		case "":
		case "zero-copy":
			cfg.SkipZeroCopy = true
		case "stream":
			cfg.SkipStream = true
		case "phases":
			cfg.SkipPhases = true
		case "throughput":
			cfg.SkipThroughput = true
		case "memory":
			cfg.SkipMemory = true
		case "durable":
			cfg.SkipDurable = true
		default:
			return usageErr("--skip: unknown part %q; use zero-copy, stream, phases, throughput, memory or durable", part)
		}
	}
	if plotFile != "" {
		switch strings.ToLower(plotFile[strings.LastIndex(plotFile, ".")+1:]) {
		case "png", "svg", "pdf":
		default:
			return usageErr("--plot %s: use a .png, .svg or .pdf file name", plotFile)
		}
	}
	if cfg.PeerCommand, err = selfCommand("bench-peer"); err != nil {
		return fail(stderr, err)
	}
	if !quiet {
		cfg.Progress = stderr
	}
	r, err := bench.Run(ctx, cfg)
	if err != nil {
		return runFailed(ctx, stderr, "bench", err)
	}
	if asJSON {
		err = r.WriteJSON(stdout)
	} else {
		err = r.WriteText(stdout)
	}
	if err != nil {
		return fail(stderr, err)
	}
	if saveFile != "" {
		f, err := os.Create(saveFile)
		if err == nil {
			err = r.WriteJSON(f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return fail(stderr, fmt.Errorf("--save: %w", err))
		}
	}
	if plotFile != "" {
		if err := r.WritePlot(plotFile); err != nil {
			return fail(stderr, err)
		}
	}
	return exitOK
}

// benchPeerCmd runs one of the benchmark's server processes.
func benchPeerCmd(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if err := bench.RunPeer(ctx, args, stdin, stdout); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "machq bench-peer: %v\n", err)
		return exitError
	}
	return exitOK
}

// parseSizes parses a comma-separated list of byte counts such as
// "0,64,4K,1M".
func parseSizes(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		mult := 1
		switch {
		case strings.HasSuffix(f, "K"):
			mult, f = 1<<10, strings.TrimSuffix(f, "K")
		case strings.HasSuffix(f, "M"):
			mult, f = 1<<20, strings.TrimSuffix(f, "M")
		case strings.HasSuffix(f, "G"):
			mult, f = 1<<30, strings.TrimSuffix(f, "G")
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 || n > (1<<40)/mult {
			return nil, fmt.Errorf("%q is not a size; write bytes, or a number with K, M or G", f)
		}
		out = append(out, n*mult)
	}
	if len(out) == 0 {
		return nil, errors.New("no sizes")
	}
	return out, nil
}

// parseInts parses a comma-separated list of positive integers.
func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}
