package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/machq/machq/internal/bench/floor"
	"github.com/machq/machq/internal/metrics"
	"github.com/machq/machq/internal/peerproc"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/server"
)

// Peer kinds, the first argument of RunPeer.
const (
	peerMachq        = "machqd"
	peerMachqDurable = "machqd-durable"
	peerFloor        = "floor"
	peerMq           = "mqueue"
	// The stream's producer and consumer: clients, not servers, which
	// run once and report on a control socket (see runStreamPeer).
	peerStreamProducer = "stream-producer"
	peerStreamConsumer = "stream-consumer"
)

// RunPeer is the body of a peer process: it serves the kind of server
// args[0] names until ctx ends, stdin reaches end of file (the benchmark
// exited) or SIGTERM arrives. It writes "ready" on stdout once serving.
//
//	machqd SOCKET [FLAGS]
//	                     a machq server (inline limit 1 MiB), with the
//	                     server's defaults but for those FLAGS sets with
//	                     machqd's own flags: the limits --max-stored-messages,
//	                     --max-stored-bytes, --max-stored-pages,
//	                     --max-private-messages, --max-private-bytes,
//	                     --max-queue-messages and --max-queue-bytes,
//	                     --spin and --spin-readers; and --metrics-scrape
//	                     DURATION, counting metrics as machqd --metrics
//	                     does and gathering them every DURATION
//	machqd-durable SOCKET DATADIR LOG
//	                     the same with durable named queues in DATADIR
//	                     (machqd --data-dir), logging to LOG as JSON
//	floor copy|memfd SOCKET  a bare store/echo server
//	mqueue CONTROL       a POSIX message queue store/echo server
//	stream-producer CTLFD SOCKET QUEUE SIZE FRAMES DIGEST VARIANT
//	stream-consumer CTLFD SOCKET QUEUE SIZE FRAMES DIGEST
//	                     the two ends of a stream of frames through a
//	                     machq named queue: each says ready, waits for
//	                     "go" on the socket CTLFD, streams, writes its
//	                     result there and exits
func RunPeer(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("bench peer: which kind? machqd, machqd-durable, floor, mqueue, stream-producer or stream-consumer")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		io.Copy(io.Discard, stdin)
		cancel()
	}()
	ready := func() { fmt.Fprintln(stdout, "ready") }
	switch args[0] {
	case peerMachq:
		if len(args) < 2 {
			return errors.New("bench peer: usage: machqd SOCKET [FLAGS]")
		}
		cfg, err := parseMachqdFlags(args[2:])
		if err != nil {
			return err
		}
		return serveMachq(ctx, args[1], cfg, ready)
	case peerMachqDurable:
		if len(args) != 4 {
			return errors.New("bench peer: usage: machqd-durable SOCKET DATADIR LOG")
		}
		return serveMachqDurable(ctx, args[1], args[2], args[3], ready)
	case peerFloor:
		if len(args) != 3 {
			return errors.New("bench peer: usage: floor copy|memfd SOCKET")
		}
		mech, err := floorMechanism(args[1])
		if err != nil {
			return err
		}
		return serveFloor(ctx, mech, args[2], ready)
	case peerMq:
		return serveMqueue(ctx, args[1:], ready)
	case peerStreamProducer, peerStreamConsumer:
		return runStreamPeer(ctx, args[0], args[1:], ready)
	}
	return fmt.Errorf("bench peer: unknown kind %q", args[0])
}

// parseMachqdFlags reads the limits and the spin a machqd peer is given,
// with machqd's flag names; those not given keep the server's defaults.
func parseMachqdFlags(args []string) (server.Config, error) {
	var cfg server.Config
	lim := &cfg.Limits
	fs := flag.NewFlagSet("machqd peer", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Int64Var(&lim.MaxStoredMessages, "max-stored-messages", 0, "")
	fs.Int64Var(&lim.MaxStoredBytes, "max-stored-bytes", 0, "")
	fs.Int64Var(&lim.MaxStoredPages, "max-stored-pages", 0, "")
	fs.Int64Var(&lim.MaxPrivateMessages, "max-private-messages", 0, "")
	fs.Int64Var(&lim.MaxPrivateBytes, "max-private-bytes", 0, "")
	fs.Int64Var(&lim.MaxQueueMessages, "max-queue-messages", 0, "")
	fs.Int64Var(&lim.MaxQueueBytes, "max-queue-bytes", 0, "")
	fs.DurationVar(&cfg.Spin, "spin", 0, "")
	fs.IntVar(&cfg.SpinReaders, "spin-readers", 0, "")
	scrape := fs.Duration("metrics-scrape", 0, "")
	if err := fs.Parse(args); err != nil {
		return cfg, fmt.Errorf("bench peer: machqd flags: %w", err)
	}
	if *scrape > 0 {
		cfg.Observer = peerMetrics{metrics.New(metrics.Options{}), *scrape}
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("bench peer: machqd flags: unexpected %q", fs.Arg(0))
	}
	return cfg, nil
}

// serveMachq serves a machq server configured by cfg (its Limits, Spin,
// SpinReaders, Durable and Logger) on path, with the largest inline limit.
func serveMachq(ctx context.Context, path string, cfg server.Config, ready func()) error {
	cfg.MaxInline = wire.MaxInline
	s, err := server.New(cfg)
	if err != nil {
		return err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return err
	}
	if pm, ok := cfg.Observer.(peerMetrics); ok {
		pm.Watch(s.Stats)
		go pm.gather(ctx)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(l) }()
	ready()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Shutdown(sctx)
	return nil
}

// serveMachqDurable serves a machq server with durable named queues in
// dataDir, as machqd --data-dir does, logging to logPath: the records of
// its start at info, among them the recovery report the benchmark reads,
// then warnings and errors only (the info records of every request would
// slow the server measured, and the other peers log nothing).
func serveMachqDurable(ctx context.Context, path, dataDir, logPath string, ready func()) error {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	h := &startLog{Handler: slog.NewJSONHandler(f, nil), started: new(atomic.Bool)}
	cfg := server.Config{Logger: slog.New(h), Durable: &server.DurableConfig{Dir: dataDir}}
	return serveMachq(ctx, path, cfg, func() {
		h.started.Store(true)
		ready()
	})
}

// startLog passes on records at info and above until started is set,
// then only warnings and errors.
type startLog struct {
	slog.Handler
	started *atomic.Bool
}

func (h *startLog) Enabled(ctx context.Context, l slog.Level) bool {
	if h.started.Load() && l < slog.LevelWarn {
		return false
	}
	return h.Handler.Enabled(ctx, l)
}

func (h *startLog) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &startLog{Handler: h.Handler.WithAttrs(attrs), started: h.started}
}

func (h *startLog) WithGroup(name string) slog.Handler {
	return &startLog{Handler: h.Handler.WithGroup(name), started: h.started}
}

// peerMetrics are the metrics of a machqd peer given --metrics-scrape:
// counted as machqd --metrics counts them, and gathered every interval as
// a Prometheus server scraping them would have them gathered.
type peerMetrics struct {
	*metrics.Metrics
	every time.Duration
}

// gather gathers the metrics every pm.every until ctx ends.
func (pm peerMetrics) gather(ctx context.Context) {
	t := time.NewTicker(pm.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			pm.Registry().Gather()
		}
	}
}

func floorMechanism(name string) (floor.Mechanism, error) {
	for _, m := range []floor.Mechanism{floor.Copy, floor.Memfd} {
		if m.String() == name {
			return m, nil
		}
	}
	return 0, fmt.Errorf("bench peer: unknown floor mechanism %q; use copy or memfd", name)
}

// startPeer runs a peer process and waits until it is serving.
func (e *environment) startPeer(ctx context.Context, args ...string) (*peerproc.Process, error) {
	p, err := peerproc.Start(ctx, args[0]+" peer", e.cfg.PeerCommand(args...))
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	e.peers = append(e.peers, p)
	return p, nil
}
