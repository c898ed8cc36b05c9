// Command machqd is the machq server: a local message store that keeps
// FIFO queues of payloads passed as sealed memfds.
//
//	machqd [--name NAME | --socket PATH] [--log-level LEVEL] [--max-message BYTES] [--max-... N]
//	       [--allow-uid USER]... [--allow-gid GROUP]...
//
// It checks in under a service name (a socket in the runtime directory),
// or serves the listening socket a service manager passes it (systemd
// socket activation), tells a service manager when it is ready and when
// it stops (sd_notify, NOTIFY_SOCKET), and stops gracefully on SIGINT or
// SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/machq/machq/internal/activation"
	"github.com/machq/machq/internal/clidoc"
	"github.com/machq/machq/internal/cliflags"
	"github.com/machq/machq/internal/handoff"
	"github.com/machq/machq/internal/metrics"
	"github.com/machq/machq/internal/naming"
	"github.com/machq/machq/internal/ratelog"
	"github.com/machq/machq/internal/sdnotify"
	"github.com/machq/machq/internal/version"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/server"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// daemonIntro is what machqd --help and its man page say it is.
const daemonIntro = `machqd is the machq server. It listens on the socket of its service name
(or the socket a service manager passes it) and keeps per-client and named
FIFO queues of messages. Under a service manager that sets NOTIFY_SOCKET
(systemd's Type=notify) it sends READY=1 once serving and STOPPING=1 when
a shutdown begins.`

func run(args []string) int {
	// First of all: a SIGUSR2 or SIGTERM that comes while a restarted
	// machqd is still taking over must not kill it (their default), only
	// wait for the loop below.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	fs := flag.NewFlagSet("machqd", flag.ContinueOnError)
	// Parse errors are reported in one line below; only --help prints
	// the usage, to stdout.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	usage := func() {
		fs.SetOutput(os.Stdout)
		fmt.Fprintf(fs.Output(), "Usage: machqd [flags]\n\n%s\n\nFlags:\n", daemonIntro)
		cliflags.PrintDefaults(fs.Output(), fs)
	}
	name := fs.String("name", naming.DefaultService, "service `name` to check in under; the socket is NAME.sock in the runtime directory")
	socket := fs.String("socket", "", "listen on this socket `path` instead of the service name's")
	level := fs.String("log-level", "info", "least severe log `level` shown: debug, info, warn or error")
	format := fs.String("log-format", "text", "log `format`: text or json")
	logRate := fs.Int("log-rate", 100, "most log `records` of one message per second; past it they are counted and summarised once a second (0: no bound)")
	maxMessage := fs.Int64("max-message", server.DefaultMaxMessageSize, "largest payload in `bytes` the server stores")
	maxInline := fs.Int("max-inline", 1<<20, "largest payload in `bytes` accepted inline instead of as a memfd (at most 1048576; 0: every payload but an empty one as a memfd)")
	shutdownTimeout := fs.Duration("shutdown-timeout", 10*time.Second, "how long a graceful shutdown may take before connections are cut")
	handshakeTimeout := fs.Duration("handshake-timeout", 10*time.Second, "how long a new connection may take to send HELLO before it is closed")
	var access server.Access
	fs.Var(idList{&access.AllowUIDs, lookupUID}, "allow-uid", "also admit this `user` (name or uid); repeatable")
	fs.Var(idList{&access.AllowGIDs, lookupGID}, "allow-gid", "also admit members of this `group` (name or gid); repeatable")
	var lim server.Limits
	fs.IntVar(&lim.MaxConnections, "max-connections", server.DefaultMaxConnections, "most `connections` served at once (-1: no limit)")
	fs.IntVar(&lim.MaxConnectionsPerUID, "max-connections-per-uid", server.DefaultMaxConnectionsPerUID, "most `connections` of one user id at once (-1: no limit)")
	fs.Int64Var(&lim.MaxStoredMessages, "max-stored-messages", server.DefaultMaxStoredMessages, "most `messages` stored in all queues together (-1: no limit)")
	fs.Int64Var(&lim.MaxStoredBytes, "max-stored-bytes", 0, "most payload `bytes` stored in all queues together, pages included (0: half of the machine's memory; -1: no limit)")
	fs.Int64Var(&lim.MaxQueueMessages, "max-queue-messages", 0, "most `messages` in one named queue (0: --max-stored-messages; -1: no limit)")
	fs.Int64Var(&lim.MaxQueueBytes, "max-queue-bytes", 0, "most payload `bytes` in one named queue (0: --max-stored-bytes; -1: no limit)")
	fs.Int64Var(&lim.MaxPrivateMessages, "max-private-messages", server.DefaultMaxPrivateMessages, "most `messages` in one connection's private queue (-1: no limit)")
	fs.Int64Var(&lim.MaxPrivateBytes, "max-private-bytes", 0, "most payload `bytes` in one connection's private queue (0: --max-stored-bytes; -1: no limit)")
	fs.Int64Var(&lim.MaxStoredPages, "max-stored-pages", 0, "most out-of-line `messages` (open descriptors) stored in all (0: three quarters of the descriptor limit; -1: no limit)")
	fs.IntVar(&lim.MaxQueues, "max-queues", server.DefaultMaxQueues, "most named `queues` at once; empty ones nobody waits on or owns are removed (-1: no limit)")
	fs.IntVar(&lim.MaxWaiting, "max-waiting", server.DefaultMaxWaiting, "most `retrieves` of one connection waiting for a message at once (-1: no limit)")
	fs.Int64Var(&lim.MaxWaitingTotal, "max-waiting-total", server.DefaultMaxWaitingTotal, "most `retrieves` waiting for a message at once on all connections (-1: no limit)")
	fs.Int64Var(&lim.MaxDescriptors, "max-descriptors", 0, "most `descriptors` pages and connections take together (0: the descriptor limit less a reserve of 64; -1: no limit)")
	perUID := " (0: the total, or half of it when --allow-uid/--allow-gid admit others; -1: no limit)"
	fs.Int64Var(&lim.MaxStoredMessagesPerUID, "max-stored-messages-per-uid", 0, "most `messages` one user id's stores make the server hold"+perUID)
	fs.Int64Var(&lim.MaxStoredBytesPerUID, "max-stored-bytes-per-uid", 0, "most payload `bytes` one user id's stores make the server hold"+perUID)
	fs.Int64Var(&lim.MaxStoredPagesPerUID, "max-stored-pages-per-uid", 0, "most out-of-line `messages` one user id's stores make the server hold"+perUID)
	fs.IntVar(&lim.MaxQueuesPerUID, "max-queues-per-uid", 0, "most named `queues` one user id has created at once, owned ones included until disowned"+perUID)
	fs.Int64Var(&lim.MaxWaitingPerUID, "max-waiting-per-uid", 0, "most `retrieves` of one user id waiting at once"+perUID)
	fs.IntVar(&lim.MaxGroups, "max-groups", server.DefaultMaxGroups, "most consumer `groups` of all queues together (a queue has at most 256; -1: no limit)")
	fs.Int64Var(&lim.MaxDescriptorsPerUID, "max-descriptors-per-uid", 0, "most `descriptors` one user id's pages and connections take of --max-descriptors"+perUID)
	fs.IntVar(&lim.MaxGroupsPerUID, "max-groups-per-uid", 0, "most consumer `groups` one user id has created at once"+perUID)
	dataDir := fs.String("data-dir", "", "keep durable named queues in this `directory` (created 0700, locked while the server runs): they survive a restart, a crash and a power loss, each store on disk before it is acknowledged (docs/STORAGE.md); without it every queue is in memory only")
	durablePattern := fs.String("durable", "*", "with --data-dir, the named queues that are durable, as a `pattern` (* ? [...], as path.Match): others stay in memory")
	skipCorrupt := fs.Bool("skip-corrupt", false, "with --data-dir, start past damage in the middle of the log, losing the messages in it (the report names them and keeps the bytes in a quarantine file); without it such damage refuses to start")
	syncPolicy := fs.String("sync", "every-store", "with --data-dir, the `policy` of syncing durable queues to disk: every-store (each store on disk before it is answered: nothing answered is lost) or lossy-interval=DURATION (answered once written to the log, synced every DURATION, 1ms to 1m: a power loss may LOSE the stores answered in the last DURATION)")
	checkRestart := fs.Bool(restartFlag, false, "check the flags, print which restart states this executable reads, and exit (what a machqd restarting into it on SIGUSR2 runs first)")
	fdStore := fs.Int("fd-store", 0, "under systemd, the `descriptors` its file descriptor store keeps (FileDescriptorStoreMax=); 0: as $FDSTORE says (systemd 254 and later). With a store, SIGTERM parks the memory-only named queues there for the next start")
	frameTimeout := fs.Duration("frame-timeout", server.DefaultFrameTimeout, "longest `duration` the rest of a frame may take to arrive once its first byte has; a client stalling mid-frame is disconnected")
	spinFor := fs.Duration("spin", server.DefaultSpin, "longest `duration` a connection keeps reading for its next request on its CPU before it parks (adapting to how soon requests come; at most --spin-readers connections at once): lower latency for small requests for some CPU. 0 turns it off")
	spinReaders := fs.Int("spin-readers", 0, "most `connections` spinning at once (0: half the CPUs, at least one)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at /metrics on this `address`: a loopback host:port (127.0.0.1:9477) or a Unix socket path; every local user can read them on TCP. Off when empty")
	metricsQueues := fs.Int("metrics-max-queues", metrics.DefaultMaxQueues, "most named `queues` (the deepest), and separately most users, with metric series of their own; the rest are summed into one series")
	var ack server.AckConfig
	fs.IntVar(&ack.MaxPending, "max-pending", server.DefaultMaxPending, "most `messages` one connection may hold delivered in ack mode and not yet settled; caps a retrieve's credit")
	fs.DurationVar(&ack.Lease, "ack-lease", 0, "lease of an ack-mode retrieve that asks for none: a message held this `duration` without ACK, NAK or TOUCH goes back to its queue (0: no lease; it waits for its consumer's connection to end)")
	fs.IntVar(&ack.MaxDeliveries, "max-deliveries", server.DefaultMaxDeliveries, "deliveries in ack mode after which a message not acknowledged becomes a dead letter in QUEUE.dlq")
	fs.DurationVar(&ack.NakBackoff, "nak-backoff", server.DefaultNakBackoff, "delay of a NAK asking for none after a message's first delivery, doubled for each further one")
	fs.DurationVar(&ack.NakBackoffMax, "nak-backoff-max", server.DefaultNakBackoffMax, "longest delay of a NAK asking for none")
	showVersion := fs.Bool("version", false, "print machqd's version and exit")
	showMan := fs.Bool("man", false, "print machqd's man page (section 1, roff) and exit")
	completion := fs.String("completion", "", "print machqd's completion script for this `shell` (bash, zsh or fish) and exit")
	if len(args) > 0 && args[0] == "version" {
		args = append([]string{"--version"}, args[1:]...)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage()
			return 0
		}
		fmt.Fprintf(os.Stderr, "machqd: %s; see machqd --help\n", flagError(err))
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "machqd: unexpected argument %q; see machqd --help\n", fs.Arg(0))
		return 2
	}
	if *showVersion {
		fmt.Println("machqd " + version.String())
		return 0
	}
	if *showMan || *completion != "" {
		prog := clidoc.Program{
			Name:    "machqd",
			Summary: "the machq message store server",
			Intro:   daemonIntro,
			Flags:   fs,
			Tail:    []string{"signals\nSIGTERM, SIGINT  stop gracefully (a second one: at once)\nSIGUSR2         restart in place, keeping memory-only named queues"},
		}
		if *showMan {
			clidoc.Man(os.Stdout, prog)
			return 0
		}
		if err := clidoc.Completion(os.Stdout, prog, *completion); err != nil {
			fmt.Fprintf(os.Stderr, "machqd: --completion: %v\n", err)
			return 2
		}
		return 0
	}
	inlineGiven := false
	fs.Visit(func(f *flag.Flag) { inlineGiven = inlineGiven || f.Name == "max-inline" })
	if !inlineGiven && int64(*maxInline) > *maxMessage {
		*maxInline = int(max(*maxMessage, 0)) // the default follows a small --max-message
	}
	if ack.MaxPending < 1 || ack.MaxDeliveries < 1 || ack.Lease < 0 || ack.NakBackoff <= 0 || ack.NakBackoffMax <= 0 {
		fmt.Fprintf(os.Stderr, "machqd: --max-pending and --max-deliveries must be at least 1, --nak-backoff and --nak-backoff-max positive, --ack-lease 0 or positive\n")
		return 2
	}
	if msg := checkFlags(*maxMessage, *maxInline, *shutdownTimeout, *handshakeTimeout, *frameTimeout, *spinFor, *spinReaders); msg != "" {
		fmt.Fprintf(os.Stderr, "machqd: %s\n", msg)
		return 2
	}
	if *metricsAddr != "" {
		if err := metrics.CheckAddr(*metricsAddr); err != nil {
			fmt.Fprintf(os.Stderr, "machqd: --metrics %q: %v\n", *metricsAddr, err)
			return 2
		}
	}
	if *metricsQueues < 1 {
		fmt.Fprintf(os.Stderr, "machqd: --metrics-max-queues %d: give 1 or more\n", *metricsQueues)
		return 2
	}
	lossySync, err := server.ParseSync(*syncPolicy)
	if err == nil && lossySync > 0 && *dataDir == "" {
		err = errors.New("needs --data-dir: without it no queue is kept on disk")
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "machqd: --sync %q: %v\n", *syncPolicy, err)
		return 2
	}
	cfgInline := *maxInline
	if cfgInline == 0 {
		cfgInline = -1 // server.Config: no inline payloads
	}

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "machqd: --log-level %q: use debug, info, warn or error\n", *level)
		return 2
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch *format {
	case "text":
		h = slog.NewTextHandler(os.Stderr, opts)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, opts)
	default:
		fmt.Fprintf(os.Stderr, "machqd: --log-format %q: use text or json\n", *format)
		return 2
	}
	if *logRate < 0 {
		fmt.Fprintf(os.Stderr, "machqd: --log-rate %d: give 0 (no bound) or more\n", *logRate)
		return 2
	}
	if *logRate > 0 {
		// A flood of hostile connections or failed requests cannot flood
		// the journal.
		h = ratelog.New(h, *logRate)
	}
	log := slog.New(h)

	if *checkRestart {
		// The probe of a machqd about to restart into this executable:
		// the flags are good; say which states it reads.
		fmt.Printf("machqd reads restart states 1 to %d\n", handoff.Version)
		return 0
	}
	nofile, err := server.RaiseDescriptorLimit()
	if err != nil {
		log.Warn("cannot raise the descriptor limit; fewer pages can be stored", "err", err)
	} else {
		log.Info("descriptor limit", "nofile", nofile)
	}
	var dur *server.DurableConfig
	if *dataDir != "" {
		dur = &server.DurableConfig{Dir: *dataDir, Queues: *durablePattern, SkipCorrupt: *skipCorrupt, LossySyncInterval: lossySync}
	}
	// LogRate -1: log is bounded already (--log-rate), with what
	// machqd logs itself.
	cfg := server.Config{Logger: log, LogRate: -1, MaxMessageSize: *maxMessage, MaxInline: cfgInline, HandshakeTimeout: *handshakeTimeout, FrameTimeout: *frameTimeout, Spin: *spinFor, SpinReaders: *spinReaders, Limits: lim, Access: access, Ack: ack, Durable: dur}
	var met *metrics.Metrics
	if *metricsAddr != "" {
		met = metrics.New(metrics.Options{MaxQueues: *metricsQueues, Durable: dur != nil, Version: version.String()})
		cfg.Observer = met
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		go serveMetrics(ctx, met, *metricsAddr, log)
	}

	// Under a service manager (Type=notify), say when the socket is
	// served and when a shutdown begins.
	notify, err := sdnotify.FromEnv()
	if err != nil {
		log.Warn("cannot notify the service manager", "err", err)
	}
	stopNow := pendingStop() // a stop signal that came while the predecessor handed over
	storeReleased := false   // an unusable parked state was given back to the service manager
	passed, err := activation.Take()
	if err != nil {
		fmt.Fprintf(os.Stderr, "machqd: %v\n", err)
		return 1
	}
	state, fromStore, err := inheritedState(&passed, log)
	if err != nil {
		log.Error("cannot take over what the previous machqd handed over; starting without its memory-only queues", "err", err)
	}
	if fromStore && state == nil {
		// Unusable: the store must not pass it again, nor keep the
		// parked lock of the socket (held by its open file) from the
		// check-in below.
		forgetParked(notify)
		fromStore, storeReleased = false, true
	}
	named := false // --name or --socket given
	fs.Visit(func(f *flag.Flag) { named = named || f.Name == "name" || f.Name == "socket" })
	storeMax := fdStoreMax(*fdStore, notify)
	var current atomic.Pointer[server.Server] // the server the watchdog checks
	if every := sdnotify.WatchdogInterval(); every > 0 && notify.Enabled() {
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		go watchdog(ctx, notify, every, &current, log)
	}

	for {
		srv, err := server.New(cfg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "machqd: %v\n", err)
			return 2
		}
		if met != nil {
			met.Watch(srv.Stats)
		}
		current.Store(srv)
		ls := passed.Listeners
		passed.Listeners = nil
		fromManager := len(ls)
		if state != nil {
			adopted, err := srv.Adopt(state)
			if err != nil {
				log.Error("taking over from the previous machqd", "err", err)
			}
			if fromStore {
				// Taken: the store must not pass it again.
				forgetParked(notify)
			}
			ls = append(ls, adopted...)
			state, fromStore = nil, false
		}
		if len(ls) == 0 {
			l, err := listen(*name, *socket, srv, log)
			for deadline := time.Now().Add(5 * time.Second); errors.Is(err, naming.ErrNameInUse) && storeReleased && time.Now().Before(deadline); {
				// The service manager lets go of the parked lock when it
				// gets to our FDSTOREREMOVE.
				time.Sleep(20 * time.Millisecond)
				l, err = listen(*name, *socket, srv, log)
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "machqd: %v\n", err)
				return 1
			}
			ls = append(ls, l)
		} else {
			if named && fromManager > 0 {
				log.Warn("--name and --socket are ignored: the service manager passed the sockets to serve")
			}
			for i, l := range ls {
				if i < fromManager {
					log.Info("using the socket passed by the service manager", "socket", l.Addr().String())
				} else {
					log.Info("serving the socket handed over by the previous machqd", "socket", l.Addr().String(), "pid", os.Getpid())
				}
			}
		}
		errc := make(chan error, 1)
		go func() { errc <- serveAll(srv, ls) }()
		if err := notify.Ready("serving"); err != nil {
			log.Warn("cannot notify the service manager", "err", err)
		}
		if stopNow != nil {
			log.Info("a stop signal came during the restart; stopping now", "signal", stopNow.String())
			select {
			case sigs <- stopNow:
			default: // another signal is there already
			}
			stopNow = nil
		}

		var sig os.Signal
		for sig == nil {
			select {
			case err := <-errc:
				log.Error("server stopped", "err", err)
				ctx, cancel := context.WithTimeout(context.Background(), *shutdownTimeout)
				srv.Shutdown(ctx) // whatever else it serves: stop cleanly
				cancel()
				return 1
			case s := <-sigs:
				if s != syscall.SIGUSR2 {
					sig = s
					break
				}
				// systemctl reload waits from here until the READY=1 of
				// the executable taking over, or of this one serving on.
				notify.Reloading("restarting in place")
				exe, err := os.Executable()
				if err == nil {
					err = probe(exe, args)
				}
				if err != nil {
					log.Error("not restarting: the executable cannot take over", "err", err)
					notify.Ready("serving; the restart was refused: " + err.Error())
					continue
				}
				log.Info("SIGUSR2: handing over to the executable on disk", "executable", exe)
				st, err := restartInPlace(srv, exe, args, *shutdownTimeout, sigs, log)
				if st == nil {
					// Handoff fails before anything stops.
					log.Error("not restarting: the server could not hand over; it serves on", "err", err)
					notify.Ready("serving; the restart failed: " + err.Error())
					continue
				}
				<-errc
				log.Error("restart failed; serving on", "err", err)
				state = st
				sig = syscall.SIGUSR2
			}
		}
		if sig == syscall.SIGUSR2 {
			continue // serve again what was handed over
		}
		log.Info("signal received; shutting down (signal again to stop at once)", "signal", sig.String())
		if err := notify.Stopping("shutting down"); err != nil {
			log.Warn("cannot notify the service manager", "err", err)
		}
		if storeMax > 0 {
			stopped, err := park(srv, notify, storeMax, *shutdownTimeout, log)
			if stopped {
				<-errc
				if err != nil {
					log.Error("cannot park the memory-only queues in the service manager's store; they are lost", "err", err)
					return 1
				}
				log.Info("stopped")
				return 0
			}
			log.Error("cannot park the memory-only queues in the service manager's store; stopping without them", "err", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), *shutdownTimeout)
		go func() {
			// A second signal cuts the graceful shutdown short.
			select {
			case sig := <-sigs:
				log.Warn("second signal; closing every connection now", "signal", sig.String())
				cancel()
			case <-ctx.Done():
			}
		}()
		if err := srv.Shutdown(ctx); err != nil {
			log.Warn("shutdown cut short; connections closed", "err", err)
		}
		cancel()
		if err := <-errc; err != nil && !errors.Is(err, server.ErrServerClosed) {
			log.Error("server stopped", "err", err)
			return 1
		}
		log.Info("stopped")
		return 0
	}
}

// listen checks in at the --socket path, else at the service name's.
func listen(name, socket string, srv *server.Server, log *slog.Logger) (*net.UnixListener, error) {
	path := socket
	var err error
	if path == "" {
		if path, err = naming.SocketPath(name); err != nil {
			return nil, fmt.Errorf("--name: %w", err)
		}
	} else if st, err := os.Stat(filepath.Dir(path)); err != nil || !st.IsDir() {
		// Directories are created for a service name's socket, never
		// for one given by path: a typo must not build a tree.
		return nil, fmt.Errorf("--socket %s: directory %s does not exist; create it or choose another path", path, filepath.Dir(path))
	}
	// Check in now, so that a name in use is reported before we run.
	l, err := srv.Listen(path)
	if err != nil {
		return nil, err
	}
	if socket == "" {
		log.Info("checked in", "name", name, "socket", path, "pid", os.Getpid())
	} else {
		log.Info("listening", "socket", path, "pid", os.Getpid())
	}
	return l, nil
}

// flagError rewords the flag package's parse errors for a user: flags
// with their double dash, and what a value should look like.
func flagError(err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return "unknown flag --" + name
	}
	if rest, ok := strings.CutPrefix(msg, "invalid value "); ok {
		// invalid value "x" for flag -name: parse error
		if value, after, ok := strings.Cut(rest, " for flag -"); ok {
			name, _, _ := strings.Cut(after, ":")
			return fmt.Sprintf("--%s %s: %s", name, value, valueHint(name))
		}
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return "--" + name + " needs a value"
	}
	return msg
}

// valueHint says what the value of flag name looks like.
func valueHint(name string) string {
	switch name {
	case "shutdown-timeout", "handshake-timeout":
		return "not a duration; use one such as 500ms, 10s or 2m"
	case "allow-uid":
		return "not a user name or uid"
	case "allow-gid":
		return "not a group name or gid"
	default:
		return "not a whole number"
	}
}

// checkFlags checks the values the flag package cannot, and returns what
// is wrong, or "".
func checkFlags(maxMessage int64, maxInline int, shutdownTimeout, handshakeTimeout, frameTimeout, spinFor time.Duration, spinReaders int) string {
	switch {
	case maxMessage < 1:
		return fmt.Sprintf("--max-message %d: must be at least 1 byte", maxMessage)
	case maxInline < 0 || maxInline > wire.MaxInline:
		return fmt.Sprintf("--max-inline %d: must be from 0 to %d bytes", maxInline, wire.MaxInline)
	case int64(maxInline) > maxMessage:
		return fmt.Sprintf("--max-inline %d is more than --max-message %d", maxInline, maxMessage)
	case shutdownTimeout <= 0:
		return fmt.Sprintf("--shutdown-timeout %v: must be positive", shutdownTimeout)
	case handshakeTimeout <= 0:
		return fmt.Sprintf("--handshake-timeout %v: must be positive", handshakeTimeout)
	case frameTimeout <= 0:
		return fmt.Sprintf("--frame-timeout %v: must be positive", frameTimeout)
	case spinFor < 0 || spinFor > time.Second:
		return fmt.Sprintf("--spin %v: must be between 0 and 1s (spinning longer wastes a CPU; a few tens of microseconds catch a quick client)", spinFor)
	case spinReaders < 0:
		return fmt.Sprintf("--spin-readers %d: must not be negative", spinReaders)
	}
	return ""
}

// serveAll serves every listener until the server stops. It returns as
// soon as one fails for any reason but the server closing, with that
// error, so that machqd stops rather than go on serving fewer sockets.
func serveAll(srv *server.Server, ls []*net.UnixListener) error {
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() { errc <- srv.Serve(l) }()
	}
	for range ls {
		if err := <-errc; !errors.Is(err, server.ErrServerClosed) {
			return err
		}
	}
	return server.ErrServerClosed
}

// idList is a repeatable flag of user or group ids, given as numbers or
// names.
type idList struct {
	ids    *[]uint32
	lookup func(name string) (string, error)
}

func (l idList) String() string {
	if l.ids == nil || len(*l.ids) == 0 {
		return ""
	}
	return fmt.Sprint(*l.ids)
}

func (l idList) Set(v string) error {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		id, lerr := l.lookup(v)
		if lerr != nil {
			return fmt.Errorf("%q is neither a number nor a known name", v)
		}
		if n, err = strconv.ParseUint(id, 10, 32); err != nil {
			return fmt.Errorf("%q resolves to %q, not a number", v, id)
		}
	}
	*l.ids = append(*l.ids, uint32(n))
	return nil
}

func lookupUID(name string) (string, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return "", err
	}
	return u.Uid, nil
}

func lookupGID(name string) (string, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		return "", err
	}
	return g.Gid, nil
}

// serveMetrics serves met on addr until ctx ends. While the address is
// in use (a machqd restarting in place into this one has just let it go,
// or another program holds it) it tries again, more slowly each time, up
// to every 5s: the message store itself never waits for its metrics.
func serveMetrics(ctx context.Context, met *metrics.Metrics, addr string, log *slog.Logger) {
	wait := 50 * time.Millisecond
	warned := false
	for {
		l, err := metrics.Listen(addr)
		if err == nil {
			log.Info("serving metrics", "address", l.Addr().String(), "path", "/metrics")
			if err := met.Serve(ctx, l, log); err != nil {
				log.Error("metrics server stopped", "address", addr, "err", err)
			}
			return
		}
		if !warned {
			log.Warn("cannot serve metrics yet; trying again", "address", addr, "err", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// watchdog sends WATCHDOG=1 every interval (half the unit's WatchdogSec=)
// while the current server is responsive: a server that stops responding
// stops the pings, and the service manager kills and restarts it.
func watchdog(ctx context.Context, notify *sdnotify.Notifier, every time.Duration, current *atomic.Pointer[server.Server], log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	stuck := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		srv := current.Load()
		check, cancel := context.WithTimeout(ctx, every)
		ok := srv == nil || srv.Responsive(check)
		cancel()
		switch {
		case ok:
			if stuck {
				log.Warn("watchdog: the server responds again")
				stuck = false
			}
			if err := notify.Watchdog(); err != nil {
				log.Warn("cannot notify the service manager", "err", err)
			}
		case !stuck && ctx.Err() == nil:
			log.Error("watchdog: the server does not respond; not telling the service manager it is alive", "waited", every)
			stuck = true
		}
	}
}
