// Package loadtest runs many client processes against one machq server,
// kills some of them with SIGKILL at random points, and checks that every
// message a surviving client stored came back exactly once, in order and
// unchanged, and that the server then returns to its idle footprint. It
// is the engine of `machq load`; docs/RELIABILITY.md reports its figures.
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
	Clients int
	// Messages is how many messages each client stores and retrieves;
	// default 2000.
	Messages int
	// MaxSize is the largest payload; default 16 MiB. Sizes are mostly
	// small: see payloadSize.
	MaxSize int
	// KillFraction of the clients are killed with SIGKILL; default 0.1.
	KillFraction float64
	// KillWindow is how long after the start the kills are spread over;
	// default 2s.
	KillWindow time.Duration
	// Seed makes a run repeatable; 0 picks one.
	Seed uint64
	// SigtermAfter, when set, sends the server SIGTERM that long after
	// the clients start: then every answer a client received must still
	// be whole and right, the server must exit and remove its socket
	// file, and the clients it stopped are counted, not failed.
	SigtermAfter time.Duration
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
}

// Report is the outcome of a load run.
type Report struct {
	Seed      uint64 `json:"seed"`
	Clients   int    `json:"clients"`
	Killed    int    `json:"killed"`
	Survivors int    `json:"survivors"`
	// Messages and Bytes are what the surviving clients stored (each
	// also retrieved it).
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
	Sigterm       bool      `json:"sigterm,omitempty"`
	Stopped       int       `json:"stopped,omitempty"`
	ServerExited  bool      `json:"server_exited,omitempty"`
	SocketRemoved bool      `json:"socket_removed,omitempty"`
	Baseline      Footprint `json:"baseline"`
	Peak          Footprint `json:"peak"`
	After         Footprint `json:"after"`
	Elapsed       float64   `json:"elapsed_s"`
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
	return r.Losses == 0 && r.Duplicates == 0 && len(r.Failures) == 0 &&
		r.After.FDs <= r.Baseline.FDs && r.After.Goroutines <= r.Baseline.Goroutines &&
		r.After.Messages == 0 && r.After.Bytes == 0 && r.After.RSS <= r.Baseline.RSS+rssSlack
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
	if rep.Baseline, err = footprint(ctx, monitor, pid); err != nil {
		return nil, err
	}

	// Watch the server's peak footprint while the clients run.
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
			return nil, err
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("loadtest: start client %d: %w", i, err)
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
	close(sampling)
	sampler.Wait()

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
		rep.Elapsed = time.Since(start).Seconds()
		return rep, nil
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
				return nil, fmt.Errorf("loadtest: drain %s: %w", namedQueue(i), err)
			}
		}
	}

	// The server frees a dead client's queue when it sees the connection
	// end; give it until a deadline to come back to its idle footprint.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if rep.After, err = footprint(ctx, monitor, pid); err != nil {
			return nil, err
		}
		if rep.Ok() || time.Now().After(deadline) || len(rep.Failures) > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	rep.Elapsed = time.Since(start).Seconds()
	return rep, nil
}

// footprint reads the server's resources and counts.
func footprint(ctx context.Context, c *machq.Client, pid int) (Footprint, error) {
	st, err := c.Stat(ctx)
	if err != nil {
		return Footprint{}, err
	}
	rss, fds, err := procfs.Status(pid)
	if err != nil {
		return Footprint{}, fmt.Errorf("loadtest: read the server's /proc entry (it must run on this host): %w", err)
	}
	return Footprint{RSS: rss, FDs: fds, Goroutines: st.Goroutines, Messages: st.Messages, Bytes: st.Bytes}, nil
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
