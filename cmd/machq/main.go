// Command machq is the machq client: an interactive shell like the
// original Mach client's, and scriptable send, retrieve and stat commands.
//
//	machq [shell]                                interactive send / retrieve / quit
//	machq send --queue Q [--file F]              store stdin or F
//	machq retrieve --queue Q [--wait D] [--out F] take the oldest message
//	machq stat [--json]                          server statistics
//	machq top [--interval D] [--count N]         a live view of the server
//	machq disown --queue Q                       give up an owned queue
//	machq peek --queue Q [--list] [-n N]         look without taking
//	machq purge --queue Q                        free every message of Q
//	machq delete --queue Q                       remove Q and all it holds
//	machq kick --queue Q [-n N]                  move dead letters back to Q
//	machq group create|delete --queue Q --group G  consumer groups (fan-out)
//	machq config --queue Q [--max-deliveries N] [--lease D]  a queue's own settings
//	machq bench [--json] [--plot F.png]          compare against the alternatives
//	machq load [--clients N] [--messages N]      load test with SIGKILLed clients
//	machq help [COMMAND]                         the commands, or one's flags
//
// Exit status: 0 success, 1 error, 2 bad usage, 3 queue empty, 4 no
// server, 5 integrity check failed, 6 refused by a server limit, 130
// interrupted (SIGINT), 143 terminated (SIGTERM).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/naming"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/stats"
)

// Exit statuses, documented in the README. A signal exits with 128 plus
// its number (see interrupted).
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2
	exitEmpty    = 3
	exitNoServer = 4
	exitTampered = 5
	exitLimit    = 6
)

const usage = `Usage: machq [command] [flags]

Commands:
  shell     the interactive client: 1) send  2) retrieve  3) quit (the default)
  send      store stdin, or --file, as one message at the tail of --queue
  retrieve  take the oldest message of --queue and write it to stdout, or --out
  peek      show the oldest message of --queue (or list the first ones) without taking it
  stat      show clients, stored messages and bytes, and the named queues
  top       a live view of the server: queues by depth with rates, users, limits
  purge     free every message of --queue
  delete    remove --queue with everything it holds
  group     create or delete a consumer group of --queue (fan-out: each group gets every message)
  config    set --queue's own max deliveries and lease
  disown    give up an owned named queue (empty, nobody waiting) so anyone may create it
  kick      move dead letters of --queue (from QUEUE.dlq) back into it
  restart   restart the server in place, keeping its memory-only named queues
  bench     compare machq with the bare kernel mechanisms, Redis and POSIX mq
  load      load test: many clients, some killed with SIGKILL; nothing may be lost
  version   print this machq's version and the server's (--version: this machq's only)
  completion  print the completion script for bash, zsh or fish
  man       print machq's man page
  help      show this list; "machq help COMMAND" shows the command's flags

shell, send, retrieve, peek, stat, top, purge, delete, group, config,
disown, kick, restart and version reach the server by --name NAME
(service name, default "machq") or --socket PATH. bench and load start
servers of their own unless given --socket PATH. "machq COMMAND --help"
lists a command's flags.

Exit status:
  0    success
  1    any other error
  2    bad usage: unknown command or flag, bad value, bad queue name
  3    the queue is empty (or stayed empty for the whole --wait)
  4    no server at the name or socket
  5    integrity check failed: the payload does not match its digest
  6    a server limit refused the request (a full queue, a quota): nothing was stored
  130  interrupted (SIGINT, ^C); 143: terminated (SIGTERM)
`

// commands are the commands machq help lists, and help itself.
var commands = []string{"shell", "send", "retrieve", "peek", "stat", "top", "purge", "delete", "group", "config", "disown", "kick", "restart", "bench", "load", "version", "completion", "man", "help"}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help":
			fmt.Fprint(stdout, usage)
			return exitOK
		case "-version", "--version":
			fmt.Fprintln(stdout, versionLine())
			return exitOK
		case "help":
			switch {
			case len(args) == 1 || len(args) == 2 && args[1] == "help":
				fmt.Fprint(stdout, usage)
				return exitOK
			case len(args) == 2 && isCommand(args[1]):
				return run([]string{args[1], "--help"}, stdin, stdout, stderr)
			}
			if len(args) > 2 {
				return printUsageError(stderr, &usageError{msg: "help takes one command: machq help COMMAND", hint: true})
			}
			return printUsageError(stderr, &usageError{msg: fmt.Sprintf("help: unknown command %q; choose from %s", args[1], strings.Join(commands, ", "))})
		}
	}
	cmd := "shell"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	ctx, stop := signalContext()
	defer stop()
	switch cmd {
	case "shell":
		return shellCmd(ctx, args, stdin, stdout, stderr)
	case "send":
		return sendCmd(ctx, args, stdin, stdout, stderr)
	case "retrieve":
		return retrieveCmd(ctx, args, stdout, stderr)
	case "stat":
		return statCmd(ctx, args, stdout, stderr)
	case "top":
		return topCmd(ctx, args, stdin, stdout, stderr)
	case "disown":
		return disownCmd(ctx, args, stdout, stderr)
	case "kick":
		return kickCmd(ctx, args, stdout, stderr)
	case "restart":
		return restartCmd(ctx, args, stdout, stderr)
	case "peek":
		return peekCmd(ctx, args, stdout, stderr)
	case "purge":
		return purgeCmd(ctx, args, stdout, stderr)
	case "delete":
		return deleteCmd(ctx, args, stdout, stderr)
	case "group":
		return groupCmd(ctx, args, stdout, stderr)
	case "config":
		return configCmd(ctx, args, stdout, stderr)
	case "bench":
		return benchCmd(ctx, args, stdout, stderr)
	case "bench-peer":
		return benchPeerCmd(ctx, args, stdin, stdout, stderr)
	case "load":
		return loadCmd(ctx, args, stdout, stderr)
	case "load-client":
		return loadClientCmd(ctx, args, stdout, stderr)
	case "version":
		return versionCmd(ctx, args, stdout, stderr)
	case "completion":
		return completionCmd(args, stdout, stderr)
	case "man":
		return manCmd(args, stdout, stderr)
	}
	return printUsageError(stderr, &usageError{msg: fmt.Sprintf("unknown command %q", cmd), hint: true})
}

func isCommand(s string) bool {
	for _, c := range commands {
		if c == s {
			return true
		}
	}
	return false
}

// common holds the flags of the commands that talk to a server.
type common struct {
	name, socket string
	level        string
	digestName   string
	inline       int
	owned        bool
	serverUIDs   uidList
	requireDig   bool // --require-digest, on the commands that retrieve

	digest machq.Digest // digestName, parsed by check
}

// register defines the common flags on fs; level is the default
// --log-level.
func (c *common) register(cmd *command, level string) {
	fs := cmd.fs
	c.digestName, c.inline = "sha256", machq.DefaultInlineThreshold
	fs.StringVar(&c.name, "name", "machq", "service `name` of the server")
	fs.StringVar(&c.socket, "socket", "", "socket `path` of the server (overrides --name)")
	fs.StringVar(&c.level, "log-level", level, "least severe log `level` on stderr: debug, info, warn or error")
	fs.Var(&c.serverUIDs, "server-uid", "also trust a server run by this `uid` (root and you are always trusted); repeat or separate with commas")
}

// registerSender defines the flags of the commands that store payloads.
func (c *common) registerSender(cmd *command) {
	cmd.fs.StringVar(&c.digestName, "digest", "sha256", "`digest` for sent payloads: sha256, blake3 or none")
	cmd.fs.IntVar(&c.inline, "inline", machq.DefaultInlineThreshold, fmt.Sprintf("largest payload in `bytes` sent inline, 0 to %d; larger ones travel as sealed memfds", maxInline))
}

// registerOwned defines --owned, for the commands that may create a
// named queue (by storing into it or waiting on it).
func (c *common) registerOwned(cmd *command) {
	cmd.fs.BoolVar(&c.owned, "owned", false, "a named queue this creates is your user's alone")
}

// registerConsumer defines the flags of the commands that retrieve.
func (c *common) registerConsumer(cmd *command) {
	cmd.fs.BoolVar(&c.requireDig, "require-digest", false, "refuse a message that carries no sha256 or blake3 digest (exit status 5) instead of accepting it unverified")
}

// maxInline is the largest --inline (the protocol's inline limit).
const maxInline = 1 << 20

// check validates the common flags, returning a usage error of cmd, and
// makes --socket an absolute path.
func (c *common) check(cmd string, stderr io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.level)); err != nil {
		return nil, usagef(cmd, "--log-level %q: use debug, info, warn or error", c.level)
	}
	d, err := machq.ParseDigest(c.digestName)
	if err != nil {
		return nil, usagef(cmd, "--digest %q: use sha256, blake3 or none", c.digestName)
	}
	c.digest = d
	if c.inline < 0 || c.inline > maxInline {
		return nil, usagef(cmd, "--inline %d: give a payload size in bytes from 0 to %d", c.inline, maxInline)
	}
	if c.socket != "" {
		p, err := socketPath(c.socket)
		if err != nil {
			return nil, usagef(cmd, "--socket %s: %v", c.socket, err)
		}
		c.socket = p
	} else if _, err := machq.SocketPath(c.name); err != nil {
		return nil, usagef(cmd, "--name: %s", trimPrefix(err))
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})), nil
}

// socketPath makes p, a --socket value, an absolute path: the library
// takes a string without a slash for a service name.
func socketPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if len(abs) > naming.MaxSocketPath && !filepath.IsAbs(p) {
		// Too long for a socket address once absolute; relative, it may
		// fit, and names the same file as long as it holds a slash.
		if !strings.Contains(p, "/") {
			p = "./" + p
		}
		return p, nil
	}
	return abs, nil
}

func (c *common) target() string {
	if c.socket != "" {
		return c.socket
	}
	return c.name
}

func (c *common) dial(ctx context.Context) (*machq.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	opts := []machq.Option{machq.WithDigest(c.digest), machq.WithInlineThreshold(c.inline)}
	if c.owned {
		opts = append(opts, machq.WithOwnedQueues())
	}
	for _, uid := range c.serverUIDs {
		opts = append(opts, machq.WithServerUID(uid))
	}
	if c.requireDig {
		opts = append(opts, machq.WithRequiredDigest())
	}
	return machq.Dial(dctx, c.target(), opts...)
}

// checkQueue validates --queue, which cmd requires; why says why.
func checkQueue(cmd, queue, why string) error {
	if queue == "" {
		return usagef(cmd, "--queue is required (%s)", why)
	}
	if err := machq.ValidQueueName(queue); err != nil {
		return usagef(cmd, "--queue: %s", strings.TrimPrefix(trimPrefix(err), "bad queue name: "))
	}
	return nil
}

// fail prints err as one line and returns the exit status for it.
func fail(stderr io.Writer, err error) int {
	var ue *usageError
	if errors.As(err, &ue) {
		return printUsageError(stderr, ue)
	}
	fmt.Fprintf(stderr, "machq: %v\n", trimPrefix(err))
	return status(err)
}

// failOrInterrupted is fail, or the report of the signal that ended ctx
// when one did: a request cut short by ^C is an interruption, not an
// error.
func failOrInterrupted(ctx context.Context, stderr io.Writer, err error) int {
	if ctx.Err() != nil {
		return reportInterrupt(ctx, stderr, "")
	}
	return fail(stderr, err)
}

func status(err error) int {
	switch {
	case errors.Is(err, errUsage), errors.Is(err, machq.ErrBadQueueName):
		return exitUsage
	case errors.Is(err, machq.ErrEmpty):
		return exitEmpty
	case errors.Is(err, machq.ErrNoServer):
		return exitNoServer
	case errors.Is(err, machq.ErrTampered):
		return exitTampered
	case errors.Is(err, machq.ErrLimit):
		return exitLimit
	}
	return exitError
}

// trimPrefix drops the library's "machq: " prefix, which the command
// adds, and the internal "naming: " one.
func trimPrefix(err error) string {
	s := strings.TrimPrefix(err.Error(), "machq: ")
	s = strings.TrimPrefix(s, "naming: invalid name: ")
	s = strings.TrimPrefix(s, "naming: ")
	// Advice to library callers, not to someone at a command line.
	return strings.TrimSuffix(s, "; Dial again")
}

const sendSummary = `Stores the content of stdin, or of --file, as one message at the tail of
--queue. Nothing is stored until the input ends; ^C before then stores
nothing.`

func sendCmd(ctx context.Context, args []string, stdin *os.File, stdout, stderr io.Writer) int {
	var c common
	var queue, file string
	cmd := newCommand("send", sendSummary)
	c.register(cmd, "warn")
	c.registerSender(cmd)
	c.registerOwned(cmd)
	cmd.fs.StringVar(&queue, "queue", "", "named `queue` to store into (required)")
	cmd.fs.StringVar(&file, "file", "", "send this `file` instead of stdin")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if err := checkQueue("send", queue, "a private queue would end with this command"); err != nil {
		return fail(stderr, err)
	}
	log, err := c.check("send", stderr)
	if err != nil {
		return fail(stderr, err)
	}
	const nothing = "nothing was stored"
	in, inName := stdin, "stdin"
	if file != "" {
		// Opening a FIFO waits for a writer: interruptible.
		f, err := await(ctx, func() (*os.File, error) { return os.Open(file) })
		if ctx.Err() != nil {
			return reportInterrupt(ctx, stderr, nothing)
		}
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return fail(stderr, fmt.Errorf("--file %s: %w", file, err))
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil && fi.IsDir() {
			return fail(stderr, fmt.Errorf("--file %s: is a directory", file))
		}
		in, inName = f, file
	}
	cl, err := c.dial(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return reportInterrupt(ctx, stderr, nothing)
		}
		return fail(stderr, err)
	}
	defer cl.Close()
	// Read the whole payload first, in a goroutine: a read from a pipe or
	// a terminal does not end on a signal, and a STORE goes out only
	// once the payload is complete.
	payload, err := await(ctx, func() (*os.File, error) { return readPayload(in, inName, cl.MaxMessageSize(), stderr) })
	if ctx.Err() != nil {
		return reportInterrupt(ctx, stderr, nothing)
	}
	if err != nil {
		return fail(stderr, err)
	}
	if payload != in {
		defer payload.Close()
	}
	n, seq, err := cl.SendFile(ctx, queue, payload)
	if err != nil {
		if ctx.Err() != nil {
			return reportInterrupt(ctx, stderr, "the message may or may not have been stored")
		}
		return fail(stderr, err)
	}
	log.Info("stored", "queue", queue, "bytes", n, "seq", seq)
	return exitOK
}

// readPayload copies the rest of in into a new sealed memfd (a file that
// already is one is used as it is), refusing more than limit bytes. A
// regular file's copy shows its progress on stderr when that is a
// terminal.
func readPayload(in *os.File, name string, limit int64, stderr io.Writer) (*os.File, error) {
	if seals, err := page.Seals(int(in.Fd())); err == nil && seals&page.RequiredSeals == page.RequiredSeals {
		return in, nil
	}
	fd, err := page.Create("machq-send")
	if err != nil {
		return nil, err
	}
	var total int64
	if st, err := in.Stat(); err == nil && st.Mode().IsRegular() {
		if off, err := in.Seek(0, io.SeekCurrent); err == nil {
			total = st.Size() - off
		}
	}
	done := showProgress(stderr, "reading "+name, total, func() int64 {
		n, _ := page.Size(fd)
		return n
	})
	n, err := page.CopyFrom(fd, in, limit)
	done(err == nil && n == total)
	if err != nil {
		closeFD(fd)
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if n > limit {
		closeFD(fd)
		return nil, fmt.Errorf("%w: %s holds more than the server's maximum of %d bytes", machq.ErrTooLarge, name, limit)
	}
	if err := page.Seal(fd); err != nil {
		closeFD(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

func closeFD(fd int) { syscall.Close(fd) }

const retrieveSummary = `Takes the oldest message of --queue and writes it to stdout, or to --out.
The message leaves the queue only once it has been written whole (and, for
--out FILE, synced to disk): if the write fails, machq is killed, or the
payload fails its integrity check, it stays in the queue (acknowledged
delivery; --no-ack takes it first, as servers before protocol version 3
do). An empty queue exits with status 3. --out replaces a regular file
(through a symbolic link, its target) with a new one holding the whole
payload, and writes to a FIFO or a device in place. A wait ended by ^C
takes nothing.`

func retrieveCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	var queue, outPath string
	var wait time.Duration
	var noAck bool
	var group string
	cmd := newCommand("retrieve", retrieveSummary)
	c.register(cmd, "warn")
	c.registerOwned(cmd)
	c.registerConsumer(cmd)
	cmd.fs.StringVar(&queue, "queue", "", "named `queue` to take from (required)")
	cmd.fs.DurationVar(&wait, "wait", 0, "wait up to this `duration` for a message (e.g. 500ms, 30s, 2m); 0 answers at once")
	cmd.fs.StringVar(&outPath, "out", "", "write the payload to this `file` instead of stdout")
	cmd.fs.BoolVar(&noAck, "no-ack", false, "take the message from the queue before writing it (a failed write loses it)")
	cmd.fs.StringVar(&group, "group", "", "take the message through this consumer `group` of --queue (see machq group)")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if err := checkQueue("retrieve", queue, "a new connection's private queue is always empty"); err != nil {
		return fail(stderr, err)
	}
	if wait < 0 {
		return fail(stderr, usagef("retrieve", "--wait %v: must not be negative", wait))
	}
	if group != "" {
		if noAck {
			return fail(stderr, usagef("retrieve", "--group takes messages in ack mode: drop --no-ack"))
		}
		if err := machq.ValidQueueName(group); err != nil {
			return fail(stderr, usagef("retrieve", "--group: %s", strings.TrimPrefix(trimPrefix(err), "bad queue name: ")))
		}
	}
	log, err := c.check("retrieve", stderr)
	if err != nil {
		return fail(stderr, err)
	}
	const nothing = "nothing was taken"
	// Make sure the payload can be written before taking it: a message
	// taken from the queue and then not written would be lost.
	out, err := openOut(ctx, outPath, stdout)
	if ctx.Err() != nil {
		return reportInterrupt(ctx, stderr, nothing)
	}
	if err != nil {
		return fail(stderr, err)
	}
	defer out.abort()
	cl, err := c.dial(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return reportInterrupt(ctx, stderr, nothing)
		}
		return fail(stderr, err)
	}
	defer cl.Close()
	if !noAck && cl.ProtocolVersion() >= machq.ProtocolAck {
		return retrieveAcked(ctx, cl, queue, group, wait, out, log, stderr)
	}
	if group != "" {
		return fail(stderr, fmt.Errorf("%w: consumer groups need protocol version %d; the server speaks %d", machq.ErrUnsupported, machq.ProtocolAck, cl.ProtocolVersion()))
	}
	if !noAck {
		log.Warn("the server speaks an older protocol without acknowledged delivery: the message leaves the queue before it is written", "server_protocol", cl.ProtocolVersion())
	}
	var m *machq.Message
	if wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		m, err = cl.RetrieveWait(wctx, queue)
		cancel()
	} else {
		m, err = cl.Retrieve(ctx, queue)
	}
	if err != nil && m == nil && ctx.Err() != nil {
		// The server may have handed the message over just before the
		// signal: then write it rather than lose it.
		if m, err = takenAnyway(cl, queue); m == nil {
			return reportInterrupt(ctx, stderr, nothing)
		}
		log.Info("interrupted, but the server had already handed the message over: writing it", "queue", queue, "seq", m.Seq)
	}
	if err != nil {
		if m != nil {
			m.Close()
		}
		return fail(stderr, err)
	}
	log.Info("retrieved", "queue", queue, "seq", m.Seq, "bytes", m.Len(), "out_of_line", m.OutOfLine())
	// A signal that came while the message was on its way does not stop
	// its writing. One that comes during the write leaves it a moment to
	// finish: what stops at once is a write that cannot go on (to a FIFO
	// or pipe nobody reads, say).
	wctx := ctx
	if ctx.Err() != nil {
		wctx = context.Background()
	}
	done := out.progress(stderr, m.Len())
	_, err = awaitGrace(wctx, writeGrace, func() (int64, error) { return m.WriteTo(out.w) })
	done(err == nil)
	if isInterrupt(err) {
		// m is still being written from: it stays open until the exit.
		return reportInterrupt(ctx, stderr, "the message was taken but not written whole")
	}
	m.Close()
	if err != nil {
		return fail(stderr, fmt.Errorf("write payload: %w", err))
	}
	if err := out.commit(); err != nil {
		return fail(stderr, err)
	}
	return exitOK
}

// writeGrace is how long a payload being written when a signal comes may
// take to finish.
const writeGrace = time.Second

// retrieveAcked is retrieve in ack mode: the message is acknowledged only
// once it has been written whole to out; on any failure before that it
// goes back to its queue (a NAK, or the connection's end), or, if its
// payload does not match its digest, to the dead-letter queue.
func retrieveAcked(ctx context.Context, cl *machq.Client, queue, group string, wait time.Duration, out *output, log *slog.Logger, stderr io.Writer) int {
	const nothing = "nothing was taken"
	var d *machq.Delivery
	var err error
	// One delivery at a time, and no lease: the message waits for this
	// command as long as it runs.
	o := &machq.AckOptions{Credit: 1, Lease: -1, Group: group}
	if wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		d, err = cl.ReserveWait(wctx, queue, o)
		cancel()
	} else {
		d, err = cl.Reserve(ctx, queue, o)
	}
	if d == nil {
		if ctx.Err() != nil {
			return reportInterrupt(ctx, stderr, nothing+"; a message handed over meanwhile goes back to the queue")
		}
		return fail(stderr, err)
	}
	defer d.Close()
	// Settles run on their own clock: a signal must not leave a message
	// half settled, and the connection's end puts it back anyway.
	settle := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 10*time.Second)
	}
	if err != nil {
		var te *machq.TamperedError
		sctx, cancel := settle()
		defer cancel()
		switch {
		case errors.As(err, &te) && te.Unverifiable:
			if nerr := d.Nak(sctx, 0, "machq retrieve could not verify it: "+te.Reason); nerr == nil {
				err = fmt.Errorf("%w; it stays in queue %s for a consumer that can verify it", err, queue)
			}
		case errors.As(err, &te):
			if terr := d.Term(sctx, "integrity check failed: "+te.Reason); terr == nil {
				err = fmt.Errorf("%w; it was moved to the dead-letter queue %s.dlq", err, queue)
			}
		}
		return fail(stderr, err)
	}
	log.Info("retrieved in ack mode", "queue", queue, "seq", d.Seq, "bytes", d.Len(), "out_of_line", d.OutOfLine(), "deliveries", d.Deliveries())
	// A signal during the write leaves it a moment to finish; what
	// stops at once is a write that cannot go on (to a FIFO or pipe
	// nobody reads, say): then the message stays in the queue.
	wctx := ctx
	if ctx.Err() != nil {
		wctx = context.Background()
	}
	done := out.progress(stderr, d.Len())
	_, err = awaitGrace(wctx, writeGrace, func() (int64, error) { return d.WriteTo(out.w) })
	done(err == nil)
	if isInterrupt(err) {
		// d is still being written from: the exit ends the connection,
		// which puts the message back.
		return reportInterrupt(ctx, stderr, "the message was not written whole and stays in the queue")
	}
	if err == nil {
		err = out.commitDurable()
	} else {
		err = fmt.Errorf("write payload: %w", err)
	}
	if err != nil {
		out.abort()
		sctx, cancel := settle()
		defer cancel()
		if nerr := d.Nak(sctx, 0, "machq retrieve could not write it: "+err.Error()); nerr == nil {
			err = fmt.Errorf("%w; the message stays in queue %s", err, queue)
		}
		return fail(stderr, err)
	}
	sctx, cancel := settle()
	defer cancel()
	if err := d.Ack(sctx); err != nil {
		return fail(stderr, fmt.Errorf("the message was written, but acknowledging it failed, so it may be delivered again: %w", err))
	}
	return exitOK
}

// takenAnyway returns the message, if any, that the server handed over
// for a retrieve on cl whose caller gave up. The server answers requests
// in order, so once a later request (a STAT) is answered, the answer to
// the retrieve, a message or its cancellation, has been read.
func takenAnyway(cl *machq.Client, queue string) (*machq.Message, error) {
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cl.StatJSON(sctx); err != nil {
		return nil, nil
	}
	// With a context already ended, Retrieve returns only a message
	// already received: it sends no request.
	done, end := context.WithCancel(context.Background())
	end()
	m, err := cl.Retrieve(done, queue)
	if m == nil {
		return nil, nil
	}
	return m, err
}

func statCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	var asJSON bool
	cmd := newCommand("stat", "Shows connected clients, stored messages and bytes (private and named queues),\nand each named queue.")
	c.register(cmd, "warn")
	cmd.fs.BoolVar(&asJSON, "json", false, "print the server's JSON document")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if _, err := c.check("stat", stderr); err != nil {
		return fail(stderr, err)
	}
	failed := func(err error) int { return failOrInterrupted(ctx, stderr, err) }
	cl, err := c.dial(ctx)
	if err != nil {
		return failed(err)
	}
	defer cl.Close()
	if asJSON {
		raw, err := cl.StatJSON(ctx)
		if err != nil {
			return failed(err)
		}
		fmt.Fprintf(stdout, "%s\n", raw)
		return exitOK
	}
	st, err := cl.Stat(ctx)
	if err != nil {
		return failed(err)
	}
	fmt.Fprintf(stdout, "server   %s (pid %d)\n", cl.Path(), cl.ServerPID())
	fmt.Fprintf(stdout, "clients  %d (including this one)\n", st.Clients)
	fmt.Fprintf(stdout, "messages %d\nbytes    %d\n", st.Messages, st.Bytes)
	if st.Pending.Messages > 0 {
		fmt.Fprintf(stdout, "pending  %d (delivered in ack mode, not yet settled)\n", st.Pending.Messages)
	}
	if d := st.Durable; d != nil {
		fmt.Fprintf(stdout, "durable  queues %q in %s, synced %s (%d segments, %d records)\n", d.Queues, d.Dir, d.Sync, d.Segments, d.Records)
		if d.Sync == stats.SyncLossyInterval {
			var records uint64
			var bytes int64
			if d.Unsynced != nil {
				records, bytes = d.Unsynced.Records, d.Unsynced.Bytes
			}
			fmt.Fprintf(stdout, "         LOSSY: synced every %s; a power loss loses what was answered since the last sync (now %d records, %d bytes)\n",
				time.Duration(d.SyncIntervalMillis)*time.Millisecond, records, bytes)
		}
		if d.Failed != "" {
			fmt.Fprintf(stdout, "         FAILED: %s; durable stores are refused until the server is restarted\n", d.Failed)
		}
	} else {
		fmt.Fprintln(stdout, "durable  no (every queue is in memory: machqd --data-dir keeps named queues)")
	}
	if len(st.Queues) == 0 && st.QueuesOmitted == 0 {
		fmt.Fprintln(stdout, "no named queues")
		return exitOK
	}
	fmt.Fprintf(stdout, "\n%-32s %10s %8s %14s %8s %12s\n", "QUEUE", "MESSAGES", "PENDING", "BYTES", "WAITING", "DEAD")
	for _, q := range st.Queues {
		name := q.Name
		if q.Durable {
			name += " (durable)"
		}
		fmt.Fprintf(stdout, "%-32s %10d %8d %14d %8d %12d\n", name, q.Messages, q.Pending+q.Delayed, q.Bytes, q.Waiting, q.DeadLettered)
		for _, g := range q.Groups {
			fmt.Fprintf(stdout, "%-32s %10d %8d %14d %8d %12d\n", "  group "+g.Name, g.Messages, g.Pending+g.Delayed, g.Bytes, g.Waiting, g.DeadLettered)
		}
	}
	if st.QueuesOmitted > 0 {
		fmt.Fprintf(stdout, "... and %d more named queues, not listed: the server's answer holds only the first %d by name (the totals above include them all)\n", st.QueuesOmitted, len(st.Queues))
	}
	return exitOK
}
