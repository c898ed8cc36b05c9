// Package loadtest runs many client processes against one machq server,
// kills some of them with SIGKILL at random points, and checks that every
// message a surviving client stored came back exactly once, in order and
// unchanged, and that the server then returns to its idle footprint. In
// ack mode (Config.Ack) producer processes store into shared queues and
// consumer processes take the messages in acknowledged delivery, some of
// them killed while they hold deliveries: every message must then be
// acknowledged exactly once. It is the engine of `machq load`;
// docs/RELIABILITY.md reports its figures.
package loadtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/peerproc"
	"github.com/machq/machq/internal/procfs"
)

// Config configures a load run. Zero values mean the documented defaults.
type Config struct {
	// Socket is a running server to load; empty starts one.
	Socket string
	// Clients is how many client processes run at once; default 200.
	// In ack mode, the consumer processes.
	Clients int
	// Messages is how many messages each client stores and retrieves;
	// default 2000. In ack mode, how many each producer stores.
	Messages int
	// MaxSize is the largest payload; default 16 MiB. Sizes are mostly
	// small: see payloadSize.
	MaxSize int
	// KillFraction of the clients are killed with SIGKILL; default 0.1.
	// In ack mode, of the consumers, each while it holds deliveries.
	KillFraction float64
	// KillWindow is how long after the start the kills are spread over;
	// default 2s. In ack mode, default 10s: each consumer to be killed
	// starts holding its deliveries at a random moment of the window
	// (or when a message first reaches it after that moment) and is
	// killed then.
	KillWindow time.Duration
	// Seed makes a run repeatable; 0 picks one.
	Seed uint64
	// SigtermAfter, when set, sends the server SIGTERM that long after
	// the clients start: then every answer a client received must still
	// be whole and right, the server must exit and remove its socket
	// file, and the clients it stopped are counted, not failed.
	SigtermAfter time.Duration
	// Ack runs the ack mode: Producers processes store numbered messages
	// into Queues shared named queues, Clients consumer processes take
	// them with ReserveWait in acknowledged delivery (each from one
	// queue, holding up to Credit at once) and acknowledge them, and a
	// KillFraction of the consumers are killed while they hold
	// deliveries. Every message stored must be acknowledged exactly
	// once, first deliveries must come in order, and no message may stay
	// pending. It cannot be combined with SigtermAfter.
	Ack bool
	// Producers is how many producer processes an ack-mode run has;
	// default 50.
	Producers int
	// Queues is how many shared queues an ack-mode run uses; default 8.
	Queues int
	// Credit bounds the deliveries an ack-mode consumer holds unsettled
	// at once (AckOptions.Credit); default 8.
	Credit int
	// StallTimeout ends an ack-mode run that waits for acknowledgements
	// and sees none for this long: the messages not acknowledged are
	// then counted as lost. Default 30s.
	StallTimeout time.Duration
	// Command returns the command that runs this program with args
	// ("load-client ..." or "bench-peer machqd SOCKET"). Required.
	Command func(args ...string) *exec.Cmd
	// Progress receives a line per step; nil discards them.
	Progress io.Writer
}

// Footprint is the server's resources at one instant.
type Footprint struct {
	RSS        int64 `json:"rss_bytes"`
	FDs        int   `json:"fds"`
	Goroutines int   `json:"goroutines"`
	Messages   int64 `json:"messages"`
	Bytes      int64 `json:"bytes"`
	// Pending counts the messages delivered in ack mode and not yet
	// settled (part of Messages).
	Pending int64 `json:"pending"`
}

// Report is the outcome of a load run.
type Report struct {
	Seed      uint64 `json:"seed"`
	Clients   int    `json:"clients"`
	Killed    int    `json:"killed"`
	Survivors int    `json:"survivors"`
	// Messages and Bytes are what the surviving clients stored (each
	// also retrieved it); in ack mode, what the producers stored.
	Messages   int64 `json:"messages"`
	Bytes      int64 `json:"bytes"`
	Losses     int   `json:"losses"`
	Duplicates int   `json:"duplicates"`
	// Failures are surviving clients that failed, with their errors.
	Failures []string `json:"failures,omitempty"`
	// Drained counts messages left by killed clients in their named
	// queues, retrieved after the run.
	Drained int `json:"drained"`
	// With SigtermAfter: clients the shutdown stopped before they were
	// done, whether the server process exited, and whether its socket
	// file is gone.
	Sigterm       bool `json:"sigterm,omitempty"`
	Stopped       int  `json:"stopped,omitempty"`
	ServerExited  bool `json:"server_exited,omitempty"`
	SocketRemoved bool `json:"socket_removed,omitempty"`
	// Ack is the outcome particular to an ack-mode run.
	Ack      *AckReport `json:"ack,omitempty"`
	Baseline Footprint  `json:"baseline"`
	Peak     Footprint  `json:"peak"`
	After    Footprint  `json:"after"`
	Elapsed  float64    `json:"elapsed_s"`
}

// rssSlack is how far above its idle RSS the server may stay after a run:
// Go returns freed heap to the operating system gradually, so the
// resident set shrinks back over minutes, not at once.
const rssSlack = 32 << 20

// Ok reports whether the run found nothing wrong.
func (r *Report) Ok() bool {
	if r.Sigterm {
		return r.Losses == 0 && r.Duplicates == 0 && len(r.Failures) == 0 && r.ServerExited && r.SocketRemoved
	}
	// The ack mode does not hold the server's RSS to its idle value: its
	// consumers all leave at once, and a server that then allocates
	// nothing keeps the heap they left until Go's forced collection,
	// every two minutes (see AckReport).
	rssOK := r.After.RSS <= r.Baseline.RSS+rssSlack || r.Ack != nil
	return r.Losses == 0 && r.Duplicates == 0 && len(r.Failures) == 0 &&
		r.After.FDs <= r.Baseline.FDs && r.After.Goroutines <= r.Baseline.Goroutines &&
		r.After.Messages == 0 && r.After.Bytes == 0 && r.After.Pending == 0 &&
		rssOK && (r.Ack == nil || r.Ack.ok())
}

func (c *Config) setDefaults() error {
	if c.Clients <= 0 {
		c.Clients = 200
	}
	if c.Messages <= 0 {
		c.Messages = 2000
	}
	if c.MaxSize <= 0 {
		c.MaxSize = 16 << 20
	}
	c.MaxSize = max(c.MaxSize, 16)
	if c.KillFraction < 0 || c.KillFraction > 1 {
		return fmt.Errorf("loadtest: kill fraction %v is outside [0, 1]", c.KillFraction)
	}
	if c.KillFraction == 0 {
		c.KillFraction = 0.1
	}
	if c.KillWindow <= 0 {
		c.KillWindow = 2 * time.Second
		if c.Ack {
			c.KillWindow = 10 * time.Second
		}
	}
	if c.Ack {
		if err := c.setAckDefaults(); err != nil {
			return err
		}
	}
	if c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Command == nil {
		return errors.New("loadtest: Config.Command is required")
	}
	return nil
}

// Run runs the load test and returns its report; the report says whether
// anything was lost (Report.Ok). An error means the run itself failed.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	start := time.Now()
	rep := &Report{Seed: cfg.Seed, Clients: cfg.Clients, Sigterm: cfg.SigtermAfter > 0}
	socket := cfg.Socket
	if socket == "" {
		dir, err := os.MkdirTemp("", "machq-load-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		socket = filepath.Join(dir, "machq.sock")
		stop, err := startServer(ctx, cfg, socket)
		if err != nil {
			return nil, err
		}
		defer stop()
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	monitor, err := machq.Dial(dctx, socket, machq.WithSparePage(0))
	cancel()
	if err != nil {
		return nil, err
	}
	defer monitor.Close()
	pid := monitor.ServerPID()
	if rep.Baseline, _, err = footprint(ctx, monitor, pid); err != nil {
		return nil, err
	}
	run := runMixed
	if cfg.Ack {
		run = runAck
	}
	if err := run(ctx, cfg, rep, socket, monitor); err != nil {
		return nil, err
	}
	rep.Elapsed = time.Since(start).Seconds()
	return rep, nil
}

// samplePeak watches the server's peak footprint, into rep.Peak, until
// the function it returns is called.
func samplePeak(pid int, rep *Report) (stop func()) {
	sampling := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-sampling:
				return
			case <-t.C:
			}
			if rss, fds, err := procfs.Status(pid); err == nil {
				rep.Peak.RSS = max(rep.Peak.RSS, rss)
				rep.Peak.FDs = max(rep.Peak.FDs, fds)
			}
		}
	})
	return func() {
		close(sampling)
		sampler.Wait()
	}
}

// settle gives the server until a deadline to come back to its idle
// footprint (it frees a dead client's queue when it sees the connection
// end), reading it into rep.After; check, when not nil, also looks at
// each STATS answer.
func settle(ctx context.Context, monitor *machq.Client, rep *Report, check func(*machq.Stats)) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		after, st, err := footprint(ctx, monitor, monitor.ServerPID())
		if err != nil {
			return err
		}
		rep.After = after
		if check != nil {
			check(st)
		}
		if rep.Ok() || time.Now().After(deadline) || len(rep.Failures) > 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runMixed is the load test of private and named queues: every client
// stores and retrieves its own messages.
func runMixed(ctx context.Context, cfg Config, rep *Report, socket string, monitor *machq.Client) error {
	pid := monitor.ServerPID()
	stopSampling := samplePeak(pid, rep)

	r := rand.New(rand.NewPCG(cfg.Seed, 1))
	kill := map[int]time.Duration{}
	for _, i := range r.Perm(cfg.Clients)[:int(float64(cfg.Clients)*cfg.KillFraction+0.5)] {
		kill[i] = time.Duration(r.Int64N(int64(cfg.KillWindow)))
	}
	fmt.Fprintf(cfg.Progress, "load: %d clients × %d messages up to %d bytes, %d to be killed, seed %d\n",
		cfg.Clients, cfg.Messages, cfg.MaxSize, len(kill), cfg.Seed)

	type outcome struct {
		id     int
		report *ClientReport
		killed bool
		err    error
	}
	outcomes := make([]outcome, cfg.Clients)
	var wg sync.WaitGroup
	if cfg.SigtermAfter > 0 {
		t := time.AfterFunc(cfg.SigtermAfter, func() { syscall.Kill(pid, syscall.SIGTERM) })
		defer t.Stop()
	}
	for i := range cfg.Clients {
		args := []string{"load-client", "--socket", socket, "--id", strconv.Itoa(i),
			"--messages", strconv.Itoa(cfg.Messages), "--max-size", strconv.Itoa(cfg.MaxSize),
			"--seed", strconv.FormatUint(cfg.Seed, 10)}
		if cfg.SigtermAfter > 0 {
			args = append(args, "--shutdown-ok")
		}
		cmd := cfg.Command(args...)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("loadtest: start client %d: %w", i, err)
		}
		var timer *time.Timer
		if d, ok := kill[i]; ok {
			timer = time.AfterFunc(d, func() { cmd.Process.Signal(syscall.SIGKILL) })
		}
		wg.Go(func() {
			var last string
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				last = sc.Text()
			}
			err := cmd.Wait()
			if timer != nil {
				timer.Stop()
			}
			o := outcome{id: i}
			var ee *exec.ExitError
			switch {
			case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
				o.killed = true
			case err != nil:
				o.err = fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
			}
			if last != "" {
				var cr ClientReport
				if json.Unmarshal([]byte(last), &cr) == nil {
					o.report = &cr
				}
			}
			outcomes[i] = o
		})
	}
	wg.Wait()
	stopSampling()

	for _, o := range outcomes {
		switch {
		case o.killed:
			rep.Killed++
			continue
		case o.report != nil:
			if o.report.Stopped {
				rep.Stopped++
			}
			rep.Losses += o.report.Losses
			rep.Duplicates += o.report.Duplicates
			rep.Messages += int64(o.report.Stored)
			rep.Bytes += o.report.Bytes
		}
		rep.Survivors++
		if o.err != nil {
			rep.Failures = append(rep.Failures, fmt.Sprintf("client %d: %v", o.id, o.err))
		}
	}
	fmt.Fprintf(cfg.Progress, "load: %d survivors, %d killed\n", rep.Survivors, rep.Killed)
	if rep.Sigterm {
		// The server was told to stop: it must exit and take its socket
		// file with it.
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
				rep.ServerExited = true
				break
			}
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(b), ") Z ") {
				rep.ServerExited = true // exited, not yet reaped by its parent
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		_, err := os.Lstat(socket)
		rep.SocketRemoved = errors.Is(err, os.ErrNotExist)
		return nil
	}

	// Killed clients may have left messages in their named queues.
	for i := range cfg.Clients {
		for {
			msgs, err := monitor.RetrieveBatch(ctx, namedQueue(i), 64)
			for _, m := range msgs {
				m.Close()
			}
			rep.Drained += len(msgs)
			if errors.Is(err, machq.ErrEmpty) {
				break
			}
			if err != nil {
				return fmt.Errorf("loadtest: drain %s: %w", namedQueue(i), err)
			}
		}
	}
	return settle(ctx, monitor, rep, nil)
}

// footprint reads the server's resources and counts, and returns the
// STATS answer they came from.
func footprint(ctx context.Context, c *machq.Client, pid int) (Footprint, *machq.Stats, error) {
	st, err := c.Stat(ctx)
	if err != nil {
		return Footprint{}, nil, err
	}
	rss, fds, err := procfs.Status(pid)
	if err != nil {
		return Footprint{}, nil, fmt.Errorf("loadtest: read the server's /proc entry (it must run on this host): %w", err)
	}
	return Footprint{RSS: rss, FDs: fds, Goroutines: st.Goroutines, Messages: st.Messages, Bytes: st.Bytes,
		Pending: st.Pending.Messages}, st, nil
}

// startServer starts a server process on socket and returns how to stop
// it.
func startServer(ctx context.Context, cfg Config, socket string) (func(), error) {
	p, err := peerproc.Start(ctx, "server", cfg.Command("bench-peer", "machqd", socket))
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	return p.Stop, nil
}
