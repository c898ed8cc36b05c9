// Package bench measures machq against the alternatives a user would
// otherwise pick, in one run, so that drift of a shared machine cancels
// out: the bare kernel mechanisms machq is built on (a sealed memfd passed
// with SCM_RIGHTS, and bytes copied through a Unix stream socket), Redis
// lists over a Unix socket, and POSIX message queues; machq with its
// server and clients spinning before they park on a read (machq-spin), at
// the small sizes; machq's ack mode against Redis Streams read through a
// consumer group; and machq's durable queues against Redis with its
// append-only file synced always, and against the bare cost of writing a
// page to a file and syncing it. It is the engine of `machq bench`;
// docs/PERFORMANCE.md explains what each figure means.
//
// Every system runs as a separate server process, started by the
// benchmark through Config.PeerCommand (machq re-executes itself), and is
// driven from the benchmark process. One round trip is the same for all:
// store a payload and wait for the acknowledgement, then retrieve it and
// read every byte. The ack-mode systems (machq-ack, redis-streams) then
// also acknowledge the message and wait for the answer. Latencies are
// measured in rounds that rotate through the systems at each size, and
// each system's median is reported as a ratio to machq's and, for the
// ack-mode systems, to machq-ack's.
//
// The streaming run sends a stream of large frames from a producer
// process through a named queue to a consumer process, both started
// through Config.PeerCommand like the servers, once filling pages made
// with machq.NewPage and sending them with SendPage, once filling a
// reused buffer and sending it with Send, and compares their frame
// rates.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/machq/machq"
)

// DefaultSpin is the default of Config.Spin.
const DefaultSpin = 50 * time.Microsecond

// MaxSpin is the longest Config.Spin, as machqd's --spin allows.
const MaxSpin = time.Second

// Sizes are the payload sizes measured by default.
var Sizes = []int{0, 64, 4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20, 256 << 20}

// Config configures a benchmark run. The zero value of each field means
// its documented default.
type Config struct {
	// Sizes are the payload sizes in bytes; default Sizes.
	Sizes []int
	// Time is the time budget of each system at each size, split over
	// Rounds; default 500ms. At least MinIters round trips run whatever
	// the budget.
	Time time.Duration
	// Rounds is how many times the systems are rotated through at each
	// size; default 5.
	Rounds int
	// MinIters is the fewest round trips per system and size; default 5.
	MinIters int
	// Systems selects systems by name (see SystemNames); default all.
	Systems []string
	// Spin is the spin budget of machq-spin, its only difference from
	// machq: its server, a machqd of its own, runs with server.Config.Spin
	// set to it (machqd --spin; SpinReaders left to its default) and its
	// clients dial with machq.WithSpin of it. The other systems do not
	// spin. Default DefaultSpin; at most MaxSpin.
	Spin time.Duration
	// Socket, when set, is a running machq server to measure instead of
	// one the benchmark starts. The memory figures need a server of their
	// own and are skipped, and so is machq-spin.
	Socket string
	// Digest is the digest machq computes and verifies during the
	// comparison. The default, DigestNone, measures transport alone, as
	// the bare mechanisms have no digest; the cost of each digest is
	// reported beside the comparison either way.
	Digest machq.Digest
	// Clients are the client counts of the throughput test; default 1, 8
	// and 64. An empty list after defaults (Clients = []int{}) cannot be
	// expressed: use SkipThroughput.
	Clients []int
	// Depth is the pipeline depth of the pipelined throughput test;
	// default 16.
	Depth int
	// SkipThroughput, SkipZeroCopy, SkipPhases, SkipMemory and
	// SkipStream leave out those parts of the run.
	SkipThroughput, SkipZeroCopy, SkipPhases, SkipMemory, SkipStream bool
	// StreamSize and StreamFrames set the streaming run: a producer
	// process sends StreamFrames frames of StreamSize bytes through a
	// named queue to a consumer process, once with NewPage + SendPage and
	// once with Send, in each of Rounds; default DefaultStreamSize (8
	// MiB) and DefaultStreamFrames.
	StreamSize, StreamFrames int
	// SmallMessages and LargeMessages set the memory test: how many
	// 64-byte and how many 16 MiB messages are stored; default 1,000,000
	// and 1,000.
	SmallMessages, LargeMessages int
	// SkipDurable leaves out the durable runs: machq's durable queues
	// (a machqd with a data directory) against Redis with its
	// append-only file synced always, a large durable store against a
	// kernel copy into a file and its sync, and recovery. They run when
	// Systems selects machq, and compare with Redis when it selects
	// redis; with Socket set they are skipped, since they need machqd
	// processes of their own.
	SkipDurable bool
	// DurableDir is where the durable runs keep their data (machq's data
	// directories, Redis's append-only file, the floor's file), in a
	// temporary directory removed at the end; default os.TempDir(). It
	// should be on the disk to measure: on tmpfs a sync costs nothing.
	DurableDir string
	// DurableTime is the time budget of each system at each producer
	// count of the durable store runs, split over Rounds; default 4 ×
	// Time (2 s).
	DurableTime time.Duration
	// DurableProducers are the producer counts of the durable store
	// runs, each storing 64 bytes at a time; default Clients.
	DurableProducers []int
	// DurableLargeSize is the payload of the large durable store; default
	// 64 MiB. DurableLargeIters is how many times machq and the floor
	// each store it, spread over Rounds; default 2 × Rounds.
	DurableLargeSize, DurableLargeIters int
	// RecoveryMessages is how many 64-byte messages the recovery run
	// stores before timing a machqd's start on them; default
	// SmallMessages (1,000,000).
	RecoveryMessages int
	// Pin places the processes of the small-message comparison (the
	// end-to-end round trips up to 4 KiB and the throughput test):
	// PinUnpinned leaves them to the scheduler; PinPinned runs that
	// comparison instead with the servers and peers on one CPU and every
	// thread of the benchmark on another, against servers started for it;
	// PinBoth runs it both ways. Default PinBoth when the benchmark may
	// run on 2 CPUs or more and Socket is empty, PinUnpinned otherwise.
	Pin string
	// PeerCommand returns the command that runs a peer process: the
	// program must call RunPeer with args. Required.
	PeerCommand func(args ...string) *exec.Cmd
	// Progress receives a line per step; nil discards them.
	Progress io.Writer
}

func (c *Config) setDefaults() error {
	if len(c.Sizes) == 0 {
		c.Sizes = Sizes
	}
	for _, s := range c.Sizes {
		if s < 0 {
			return fmt.Errorf("bench: size %d is negative", s)
		}
	}
	if c.Time <= 0 {
		c.Time = 500 * time.Millisecond
	}
	if c.Rounds <= 0 {
		c.Rounds = 5
	}
	if c.MinIters <= 0 {
		c.MinIters = 5
	}
	if len(c.Clients) == 0 {
		c.Clients = []int{1, 8, 64}
	}
	if c.Depth <= 0 {
		c.Depth = 16
	}
	if c.Spin <= 0 {
		c.Spin = DefaultSpin
	}
	if c.Spin > MaxSpin {
		return fmt.Errorf("bench: spin %v is longer than %v", c.Spin, MaxSpin)
	}
	if c.StreamSize <= 0 {
		c.StreamSize = DefaultStreamSize
	}
	if c.StreamFrames <= 0 {
		c.StreamFrames = DefaultStreamFrames
	}
	if c.SmallMessages <= 0 {
		c.SmallMessages = 1_000_000
	}
	if c.LargeMessages <= 0 {
		c.LargeMessages = 1000
	}
	if c.DurableDir == "" {
		c.DurableDir = os.TempDir()
	}
	if c.DurableTime <= 0 {
		c.DurableTime = 4 * c.Time
	}
	if len(c.DurableProducers) == 0 {
		c.DurableProducers = c.Clients
	}
	if c.DurableLargeSize <= 0 {
		c.DurableLargeSize = 64 << 20
	}
	if c.DurableLargeIters <= 0 {
		c.DurableLargeIters = 2 * c.Rounds
	}
	if c.RecoveryMessages <= 0 {
		c.RecoveryMessages = c.SmallMessages
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.PeerCommand == nil {
		return errors.New("bench: Config.PeerCommand is required")
	}
	for _, name := range c.Systems {
		if !knownSystem(name) {
			return fmt.Errorf("bench: unknown system %q; choose from %s", name, strings.Join(SystemNames(), ", "))
		}
	}
	return nil
}

func (c *Config) progress(format string, args ...any) {
	fmt.Fprintf(c.Progress, format+"\n", args...)
}

// progress reports a step of the run.
func (e *environment) progress(format string, args ...any) {
	e.cfg.progress(e.label+format, args...)
}

// Run runs the benchmark and returns its report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "machq-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)

	unpinned, pl, pinNote, err := cfg.choosePlacement()
	if err != nil {
		return nil, err
	}
	r := &Report{Machine: describeMachine(), Digest: cfg.Digest.String(), Started: time.Now().UTC(), Placement: PinUnpinned}
	switch {
	case pl != nil && unpinned:
		r.Placement = PinBoth
	case pl != nil:
		r.Placement = PinPinned
	}
	if pinNote != "" {
		r.note("%s", pinNote)
	}
	env := &environment{cfg: &cfg, dir: dir, report: r}
	defer env.close()
	if err := env.start(ctx); err != nil {
		return nil, err
	}
	// Pinned alone, the small sizes are measured in the pinned part only.
	sizes := cfg.Sizes
	if !unpinned {
		sizes = slices.DeleteFunc(slices.Clone(sizes), func(s int) bool { return s <= pinMaxSize })
	}
	if err := env.latency(ctx, sizes); err != nil {
		return nil, err
	}
	if !cfg.SkipZeroCopy {
		if err := env.zeroCopy(ctx); err != nil {
			return nil, err
		}
	}
	if !cfg.SkipStream {
		if cfg.Socket != "" {
			r.note("stream: skipped: --socket measures a server the benchmark did not start; the stream runs on a machqd of its own, whose queue holds a bounded number of frames")
		} else if err := env.stream(ctx); err != nil {
			return nil, err
		}
	}
	if !cfg.SkipPhases {
		if err := env.phases(ctx); err != nil {
			return nil, err
		}
	}
	env.digests()
	if !cfg.SkipThroughput && unpinned {
		if err := env.throughput(ctx); err != nil {
			return nil, err
		}
	}
	if pl != nil {
		if err := env.pinned(ctx, pl); err != nil {
			return nil, err
		}
	}
	if !cfg.SkipMemory {
		if cfg.Socket != "" {
			r.note("memory: skipped: --socket measures a server the benchmark did not start")
		} else if err := env.memory(ctx); err != nil {
			return nil, err
		}
	}
	if !cfg.SkipDurable {
		if cfg.Socket != "" {
			r.note("durable: skipped: --socket measures a server the benchmark did not start; the durable runs start machqd with a data directory of their own")
		} else if err := env.durable(ctx); err != nil {
			return nil, err
		}
	}
	r.Elapsed = Duration(time.Since(r.Started))
	return r, nil
}

// describeMachine names the machine the figures come from.
func describeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int64
				fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
				m.MemoryBytes = kb << 10
				break
			}
		}
	}
	return m
}
