// Command machq is the machq client: an interactive shell like the
// original Mach client's, and scriptable send, retrieve and stat commands.
//
//	machq [shell]                                interactive send / retrieve / quit
//	machq send --queue Q [--file F]              store stdin or F
//	machq retrieve --queue Q [--wait D] [--out F] take the oldest message
//	machq stat [--json]                          server statistics
//	machq bench [--json] [--plot F.png]          compare against the alternatives
//	machq load [--clients N] [--messages N]      load test with SIGKILLed clients
//
// Exit status: 0 success, 1 error, 2 bad usage, 3 queue empty, 4 no
// server, 5 integrity check failed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/machq/machq"
)

// Exit statuses, documented in the README.
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2
	exitEmpty    = 3
	exitNoServer = 4
	exitTampered = 5
)

const usage = `Usage: machq [command] [flags]

Commands:
  shell      interactive client: 1) send  2) retrieve  3) quit (the default)
  send       store stdin, or --file, at the tail of --queue
  retrieve   take the oldest message of --queue to stdout, or --out
  stat       show connected clients, stored messages and named queues
  bench      measure machq against the bare kernel mechanisms, Redis
             and POSIX message queues (starts its own servers)
  load       many client processes, some killed with SIGKILL: check that
             nothing is lost and the server returns to idle

Every command but bench and load takes --name NAME (service name, default
"machq") or --socket PATH. Run "machq COMMAND --help" for its flags.

Exit status: 0 success, 1 error, 2 bad usage, 3 queue empty,
4 no server, 5 integrity check failed.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	cmd := "shell"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch cmd {
	case "shell":
		return shellCmd(ctx, args, stdin, stdout, stderr)
	case "send":
		return sendCmd(ctx, args, stdin, stderr)
	case "retrieve":
		return retrieveCmd(ctx, args, stdout, stderr)
	case "stat":
		return statCmd(ctx, args, stdout, stderr)
	case "bench":
		return benchCmd(ctx, args, stdout, stderr)
	case "bench-peer":
		return benchPeerCmd(ctx, args, stdin, stdout, stderr)
	case "load":
		return loadCmd(ctx, args, stdout, stderr)
	case "load-client":
		return loadClientCmd(ctx, args, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "machq: unknown command %q; run machq help\n", cmd)
	return exitUsage
}

// common holds the flags every command takes.
type common struct {
	name, socket string
	level        string
	digest       string
	inline       int
	owned        bool
}

func newFlags(cmd string, stderr io.Writer, c *common, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet("machq "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.name, "name", "machq", "service `name` of the server")
	fs.StringVar(&c.socket, "socket", "", "socket `path` of the server (overrides --name)")
	fs.StringVar(&c.level, "log-level", "warn", "least severe log `level` on stderr: debug, info, warn or error")
	fs.StringVar(&c.digest, "digest", "sha256", "digest for sent payloads: sha256, blake3 or none")
	fs.IntVar(&c.inline, "inline", machq.DefaultInlineThreshold, "largest payload in `bytes` sent inline; larger ones travel as sealed memfds")
	fs.BoolVar(&c.owned, "owned", false, "a named queue this creates is your user's alone")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: machq %s [flags]\n\n%s\n\nFlags:\n", cmd, summary)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args; it returns a non-negative exit status when the
// command must stop.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q; flags take the form --flag value\n", fs.Name(), fs.Arg(0))
		return exitUsage
	}
	return -1
}

func (c *common) logger(stderr io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", c.level)
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})), nil
}

func (c *common) target() string {
	if c.socket != "" {
		return c.socket
	}
	return c.name
}

func (c *common) dial(ctx context.Context) (*machq.Client, error) {
	if c.socket == "" {
		if _, err := machq.SocketPath(c.name); err != nil {
			return nil, fmt.Errorf("%w: --name: %v", errUsage, trimPrefix(err))
		}
	}
	d, err := machq.ParseDigest(c.digest)
	if err != nil {
		return nil, fmt.Errorf("%w: --digest: %v", errUsage, trimPrefix(err))
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	opts := []machq.Option{machq.WithDigest(d), machq.WithInlineThreshold(min(max(c.inline, 0), 1<<20))}
	if c.owned {
		opts = append(opts, machq.WithOwnedQueues())
	}
	return machq.Dial(dctx, c.target(), opts...)
}

var errUsage = errors.New("bad usage")

// fail prints err as one line and returns the exit status for it.
func fail(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "machq: %v\n", trimPrefix(err))
	return status(err)
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
	}
	return exitError
}

// trimPrefix drops the library's "machq: " prefix, which the command adds.
func trimPrefix(err error) string {
	s := err.Error()
	const p = "machq: "
	if len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}

func sendCmd(ctx context.Context, args []string, stdin *os.File, stderr io.Writer) int {
	var c common
	var queue, file string
	fs := newFlags("send", stderr, &c, "Stores the content of stdin, or of --file, as one message at the tail of --queue.")
	fs.StringVar(&queue, "queue", "", "named `queue` to store into (required)")
	fs.StringVar(&file, "file", "", "send this `file` instead of stdin")
	if st := parse(fs, args, stderr); st >= 0 {
		return st
	}
	if queue == "" {
		fmt.Fprintln(stderr, "machq send: --queue is required (a private queue would end with this command)")
		return exitUsage
	}
	if err := machq.ValidQueueName(queue); err != nil {
		return fail(stderr, err)
	}
	log, err := c.logger(stderr)
	if err != nil {
		return fail(stderr, fmt.Errorf("%w: %v", errUsage, err))
	}
	in := stdin
	if file != "" {
		if in, err = os.Open(file); err != nil {
			return fail(stderr, err)
		}
		defer in.Close()
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return fail(stderr, err)
	}
	defer cl.Close()
	n, err := cl.SendFile(ctx, queue, in)
	if err != nil {
		return fail(stderr, err)
	}
	log.Info("stored", "queue", queue, "bytes", n)
	return exitOK
}

func retrieveCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	var queue, out string
	var wait time.Duration
	fs := newFlags("retrieve", stderr, &c, "Takes the oldest message of --queue and writes it to stdout, or to --out.\nAn empty queue exits with status 3.")
	fs.StringVar(&queue, "queue", "", "named `queue` to take from (required)")
	fs.DurationVar(&wait, "wait", 0, "wait up to this `duration` for a message (e.g. 5s); 0 answers at once")
	fs.StringVar(&out, "out", "", "write the payload to this `file` instead of stdout")
	if st := parse(fs, args, stderr); st >= 0 {
		return st
	}
	if queue == "" {
		fmt.Fprintln(stderr, "machq retrieve: --queue is required (a new connection's private queue is always empty)")
		return exitUsage
	}
	if err := machq.ValidQueueName(queue); err != nil {
		return fail(stderr, err)
	}
	if wait < 0 {
		fmt.Fprintln(stderr, "machq retrieve: --wait must not be negative")
		return exitUsage
	}
	log, err := c.logger(stderr)
	if err != nil {
		return fail(stderr, fmt.Errorf("%w: %v", errUsage, err))
	}
	// Make sure the payload can be written before taking it: a message
	// taken from the queue and then not written would be lost.
	w := stdout
	var tmp *os.File
	if out != "" {
		if tmp, err = os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".machq-*"); err != nil {
			return fail(stderr, fmt.Errorf("cannot write --out %s: %w", out, err))
		}
		defer func() {
			tmp.Close()
			os.Remove(tmp.Name()) // gone already if renamed
		}()
		w = tmp
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return fail(stderr, err)
	}
	defer cl.Close()
	var m *machq.Message
	if wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		m, err = cl.RetrieveWait(wctx, queue)
		cancel()
	} else {
		m, err = cl.Retrieve(ctx, queue)
	}
	if m != nil {
		defer m.Close()
	}
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "machq: interrupted")
			return exitError
		}
		return fail(stderr, err)
	}
	log.Info("retrieved", "queue", queue, "seq", m.Seq, "bytes", m.Len(), "out_of_line", m.OutOfLine())
	if _, err := m.WriteTo(w); err != nil {
		return fail(stderr, fmt.Errorf("write payload: %w", err))
	}
	if tmp != nil {
		if err := tmp.Chmod(0o644); err != nil {
			return fail(stderr, err)
		}
		if err := os.Rename(tmp.Name(), out); err != nil {
			return fail(stderr, fmt.Errorf("write --out %s: %w", out, err))
		}
	}
	return exitOK
}

func statCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c common
	var asJSON bool
	fs := newFlags("stat", stderr, &c, "Shows connected clients, stored messages and bytes (private and named queues),\nand each named queue.")
	fs.BoolVar(&asJSON, "json", false, "print the server's JSON document")
	if st := parse(fs, args, stderr); st >= 0 {
		return st
	}
	if _, err := c.logger(stderr); err != nil {
		return fail(stderr, fmt.Errorf("%w: %v", errUsage, err))
	}
	cl, err := c.dial(ctx)
	if err != nil {
		return fail(stderr, err)
	}
	defer cl.Close()
	if asJSON {
		raw, err := cl.StatJSON(ctx)
		if err != nil {
			return fail(stderr, err)
		}
		fmt.Fprintf(stdout, "%s\n", raw)
		return exitOK
	}
	st, err := cl.Stat(ctx)
	if err != nil {
		return fail(stderr, err)
	}
	fmt.Fprintf(stdout, "server   %s (pid %d)\n", cl.Path(), cl.ServerPID())
	fmt.Fprintf(stdout, "clients  %d (including this one)\n", st.Clients)
	fmt.Fprintf(stdout, "messages %d\nbytes    %d\n", st.Messages, st.Bytes)
	if len(st.Queues) == 0 {
		fmt.Fprintln(stdout, "no named queues")
		return exitOK
	}
	fmt.Fprintf(stdout, "\n%-32s %10s %14s %8s\n", "QUEUE", "MESSAGES", "BYTES", "WAITING")
	for _, q := range st.Queues {
		fmt.Fprintf(stdout, "%-32s %10d %14d %8d\n", q.Name, q.Messages, q.Bytes, q.Waiting)
	}
	return exitOK
}
