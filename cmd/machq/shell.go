package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
)

// shell is the original client's interactive loop: send a line, retrieve
// the oldest message with its integrity verdict, or quit.
type shell struct {
	c      common
	queue  string
	log    *slog.Logger
	in     *bufio.Reader
	out    io.Writer
	prompt bool // stdin is a terminal: show the menu and prompts
	cl     *machq.Client
}

func shellCmd(ctx context.Context, args []string, stdin *os.File, stdout, stderr io.Writer) int {
	var sh shell
	fs := newFlags("shell", stderr, &sh.c, `The interactive client. Choose 1 (send), 2 (retrieve) or 3 (quit), by
number or by name. Send asks for one line of data of any length and stores
it; retrieve prints the oldest stored message and whether its integrity was
confirmed. Works with piped input; ends on quit or end of input.`)
	fs.StringVar(&sh.queue, "queue", "", "use this named `queue` instead of the connection's private queue")
	sh.c.level = "info"
	fs.Lookup("log-level").DefValue = "info"
	if st := parse(fs, args, stderr); st >= 0 {
		return st
	}
	var err error
	if sh.log, err = sh.c.logger(stderr); err != nil {
		return fail(stderr, fmt.Errorf("%w: %v", errUsage, err))
	}
	if sh.queue != "" {
		if err := machq.ValidQueueName(sh.queue); err != nil {
			return fail(stderr, err)
		}
	}
	sh.in = bufio.NewReaderSize(stdin, 64<<10)
	sh.out = stdout
	_, terr := unix.IoctlGetTermios(int(stdin.Fd()), unix.TCGETS)
	sh.prompt = terr == nil
	if sh.cl, err = sh.c.dial(ctx); err != nil {
		return fail(stderr, err)
	}
	defer func() { sh.cl.Close() }()
	sh.log.Info("connected", "server", sh.cl.Path(), "server_pid", sh.cl.ServerPID(), "queue", label(sh.queue))
	return sh.loop(ctx)
}

func label(q string) string {
	if q == "" {
		return "(private)"
	}
	return q
}

func (sh *shell) say(format string, args ...any) {
	if sh.prompt {
		fmt.Fprintf(sh.out, format, args...)
	}
}

func (sh *shell) loop(ctx context.Context) int {
	for {
		sh.say("\n1) send  2) retrieve  3) quit\n> ")
		line, err := sh.readLine()
		if err != nil {
			if err != io.EOF {
				sh.log.Error("reading input failed", "err", err)
				return exitError
			}
			sh.log.Info("end of input; quitting")
			return exitOK
		}
		switch strings.ToLower(strings.TrimSpace(string(line))) {
		case "1", "send", "s":
			sh.say("data> ")
			data, err := sh.readLine()
			if err == io.EOF {
				sh.log.Info("end of input; quitting")
				return exitOK
			}
			if err != nil {
				sh.log.Error("reading input failed", "err", err)
				return exitError
			}
			sh.send(ctx, data)
		case "2", "retrieve", "r":
			sh.retrieve(ctx)
		case "3", "quit", "q", "exit":
			sh.log.Info("quitting")
			return exitOK
		case "":
		default:
			fmt.Fprintf(sh.out, "unknown choice %q: type 1 (send), 2 (retrieve) or 3 (quit)\n", strings.TrimSpace(string(line)))
		}
		if ctx.Err() != nil {
			return exitOK
		}
	}
}

// readLine reads one line of any length, without its line ending.
func (sh *shell) readLine() ([]byte, error) {
	line, err := sh.in.ReadBytes('\n')
	if err == io.EOF && len(line) > 0 {
		err = nil
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-len(trailingNewline(line))]
	return line, nil
}

func trailingNewline(b []byte) []byte {
	n := len(b)
	if n > 0 && b[n-1] == '\n' {
		n--
		if n > 0 && b[n-1] == '\r' {
			n--
		}
	}
	return b[n:]
}

func (sh *shell) send(ctx context.Context, data []byte) {
	sh.log.Info("sending", "queue", label(sh.queue), "bytes", len(data), "out_of_line", len(data) > sh.c.inline, "digest", sh.c.digest)
	err := sh.cl.Send(ctx, sh.queue, data)
	if sh.reconnected(ctx, err) {
		err = sh.cl.Send(ctx, sh.queue, data)
	}
	if err != nil {
		fmt.Fprintf(sh.out, "send failed: %s\n", trimPrefix(err))
		sh.log.Error("send failed", "err", err)
		return
	}
	sh.log.Info("stored; digest kept for the integrity check", "queue", label(sh.queue), "bytes", len(data))
	fmt.Fprintf(sh.out, "stored %d bytes\n", len(data))
}

func (sh *shell) retrieve(ctx context.Context) {
	sh.log.Info("retrieving the oldest message", "queue", label(sh.queue))
	m, err := sh.cl.Retrieve(ctx, sh.queue)
	if sh.reconnected(ctx, err) {
		m, err = sh.cl.Retrieve(ctx, sh.queue)
	}
	if m != nil {
		defer m.Close()
	}
	switch {
	case errors.Is(err, machq.ErrEmpty):
		sh.log.Info("nothing stored", "queue", label(sh.queue))
		fmt.Fprintln(sh.out, "nothing stored: the queue is empty")
		return
	case errors.Is(err, machq.ErrTampered):
		sh.log.Warn("integrity check failed", "err", err)
		if m != nil { // the payload itself, when it could be read at all
			sh.out.Write(m.Bytes())
			fmt.Fprintln(sh.out)
		}
		fmt.Fprintf(sh.out, "%s\n", trimPrefix(err))
		return
	case err != nil:
		fmt.Fprintf(sh.out, "retrieve failed: %s\n", trimPrefix(err))
		sh.log.Error("retrieve failed", "err", err)
		return
	}
	sh.log.Info("received", "queue", label(sh.queue), "seq", m.Seq, "bytes", m.Len(), "out_of_line", m.OutOfLine())
	sh.out.Write(m.Bytes())
	alg, _ := m.Digest()
	if alg == machq.DigestNone {
		fmt.Fprintln(sh.out, "\nno digest was sent: integrity not checked")
		return
	}
	sh.log.Info("integrity confirmed", "seq", m.Seq, "digest", alg.String())
	fmt.Fprintln(sh.out, "\nintegrity confirmed")
}

// reconnected dials the server again after the connection was lost, and
// reports whether the failed operation should be retried.
func (sh *shell) reconnected(ctx context.Context, err error) bool {
	if !errors.Is(err, machq.ErrClosed) {
		return false
	}
	sh.log.Warn("connection lost; reconnecting", "err", err)
	fmt.Fprintf(sh.out, "connection lost: %s\n", trimPrefix(err))
	cl, derr := sh.c.dial(ctx)
	if derr != nil {
		sh.log.Error("reconnect failed", "err", derr)
		return false
	}
	sh.cl.Close()
	sh.cl = cl
	sh.log.Info("reconnected; the old connection's private queue is gone", "server", cl.Path(), "server_pid", cl.ServerPID())
	fmt.Fprintln(sh.out, "reconnected (messages stored in the old private queue are gone)")
	return true
}
