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
	"time"

	"github.com/machq/machq"
)

// shell is the original client's interactive loop: send a line, retrieve
// the oldest message with its integrity verdict, or quit.
type shell struct {
	c      common
	queue  string
	log    *slog.Logger
	in     *bufio.Reader
	out    io.Writer // results, the menu and what happens to the connection
	stderr io.Writer
	prompt bool // stdin is a terminal: show the menu and prompts
	cl     *machq.Client
	noAck  bool // --no-ack: retrieve takes the message before showing it

	// The reader goroutine reads a line each time next receives, and
	// hands it over on lines: a read of a terminal or pipe does not end on
	// a signal, so the loop waits for it or for the signal.
	next  chan struct{}
	lines chan lineResult
}

type lineResult struct {
	line []byte
	err  error
}

const shellSummary = `The interactive client. Choose 1 (send), 2 (retrieve) or 3 (quit), by
number or by name. Send asks for one line of data and stores it; retrieve
prints the oldest stored message and whether its integrity was confirmed.
A retrieved message leaves the queue once it has been shown (acknowledged
delivery; --no-ack takes it first). Works with piped input; ends on quit,
at end of input, or on ^C (status 130). A terminal cuts a typed line at
4095 bytes; piped lines have no limit, and machq send takes payloads of
any size.`

func shellCmd(ctx context.Context, args []string, stdin *os.File, stdout, stderr io.Writer) int {
	sh := shell{out: stdout, stderr: stderr}
	cmd := newCommand("shell", shellSummary)
	sh.c.register(cmd, "info")
	sh.c.registerSender(cmd)
	sh.c.registerOwned(cmd)
	sh.c.registerConsumer(cmd)
	cmd.fs.StringVar(&sh.queue, "queue", "", "use this named `queue` instead of the connection's private queue")
	cmd.fs.BoolVar(&sh.noAck, "no-ack", false, "take each message from the queue before showing it")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if sh.queue != "" {
		if err := checkQueue("shell", sh.queue, ""); err != nil {
			return fail(stderr, err)
		}
	}
	var err error
	if sh.log, err = sh.c.check("shell", stderr); err != nil {
		return fail(stderr, err)
	}
	sh.in = bufio.NewReaderSize(stdin, 64<<10)
	sh.prompt = isTerminal(stdin)
	if sh.cl, err = sh.c.dial(ctx); err != nil {
		if ctx.Err() != nil {
			return reportInterrupt(ctx, stderr, "")
		}
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
		line, err := sh.readLine(ctx)
		if ctx.Err() != nil {
			return sh.interrupted(ctx)
		}
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
			data, err := sh.readLine(ctx)
			if ctx.Err() != nil {
				return sh.interrupted(ctx)
			}
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
			return sh.interrupted(ctx)
		}
	}
}

// interrupted ends the shell after a signal.
func (sh *shell) interrupted(ctx context.Context) int {
	if sh.prompt {
		fmt.Fprintln(sh.out) // end the prompt's line
	}
	sh.log.Info("interrupted; quitting")
	return reportInterrupt(ctx, sh.stderr, "")
}

// readLine reads one line of any length, without its line ending, or
// returns ctx's cause as soon as ctx ends.
func (sh *shell) readLine(ctx context.Context) ([]byte, error) {
	if sh.next == nil {
		sh.next = make(chan struct{})
		sh.lines = make(chan lineResult, 1)
		go func() {
			for range sh.next {
				line, err := sh.readRawLine()
				sh.lines <- lineResult{line, err}
			}
		}()
	}
	select {
	case sh.next <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	select {
	case r := <-sh.lines:
		return r.line, r.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// readRawLine reads one line from stdin; only the reader goroutine calls
// it.
func (sh *shell) readRawLine() ([]byte, error) {
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
	sh.log.Info("sending", "queue", label(sh.queue), "bytes", len(data), "out_of_line", len(data) > sh.c.inline, "digest", sh.c.digestName)
	_, err := sh.cl.Send(ctx, sh.queue, data)
	if sh.lost(ctx, err) {
		if !sh.reconnect(ctx, "send") {
			return
		}
		_, err = sh.cl.Send(ctx, sh.queue, data)
	}
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(sh.out, "send interrupted: the message may or may not have been stored")
			return
		}
		fmt.Fprintf(sh.out, "send failed: %s\n", trimPrefix(err))
		sh.log.Error("send failed", "err", err)
		return
	}
	sh.log.Info("stored; digest kept for the integrity check", "queue", label(sh.queue), "bytes", len(data))
	fmt.Fprintf(sh.out, "stored %d bytes\n", len(data))
}

// take retrieves the oldest message: in ack mode when the server speaks
// it (unless --no-ack), returning the delivery to settle once the message
// is shown.
func (sh *shell) take(ctx context.Context) (*machq.Message, *machq.Delivery, error) {
	if sh.noAck || sh.cl.ProtocolVersion() < machq.ProtocolAck {
		m, err := sh.cl.Retrieve(ctx, sh.queue)
		return m, nil, err
	}
	d, err := sh.cl.Reserve(ctx, sh.queue, &machq.AckOptions{Credit: 1, Lease: -1})
	if d == nil {
		return nil, nil, err
	}
	return d.Message, d, err
}

// settle acknowledges a delivery shown whole, or puts it back (NAK) or
// dead-letters it (TERM) when it was not, and says what happened.
func (sh *shell) settle(d *machq.Delivery, shown bool, verdict error) {
	if d == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var te *machq.TamperedError
	var err error
	switch {
	case shown && verdict == nil:
		err = d.Ack(ctx)
	case errors.As(verdict, &te) && !te.Unverifiable:
		err = d.Term(ctx, "integrity check failed: "+te.Reason)
	default:
		reason := "machq shell could not show it"
		if verdict != nil {
			reason = "machq shell could not verify it: " + trimPrefix(verdict)
		}
		err = d.Nak(ctx, 0, reason)
	}
	switch {
	case err != nil:
		sh.log.Warn("settling the delivery failed: the message may be delivered again", "seq", d.Seq, "err", err)
	case d.Outcome() == machq.Requeued:
		fmt.Fprintln(sh.out, "the message stays in the queue")
	case d.Outcome() == machq.DeadLettered:
		fmt.Fprintf(sh.out, "the message was moved to the dead-letter queue %s.dlq\n", sh.queue)
	}
}

func (sh *shell) retrieve(ctx context.Context) {
	sh.log.Info("retrieving the oldest message", "queue", label(sh.queue))
	m, d, err := sh.take(ctx)
	if sh.lost(ctx, err) {
		if !sh.reconnect(ctx, "retrieve") {
			return
		}
		m, d, err = sh.take(ctx)
	}
	if err != nil && m == nil && ctx.Err() != nil && d == nil && (sh.noAck || sh.cl.ProtocolVersion() < machq.ProtocolAck) {
		// The server may have handed the message over just before the
		// signal: show it rather than lose it.
		if m, err = takenAnyway(sh.cl, sh.queue); m == nil {
			return
		}
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
			sh.writePayload(m.Bytes())
		}
		fmt.Fprintf(sh.out, "%s\n", trimPrefix(err))
		sh.settle(d, false, err)
		return
	case err != nil:
		fmt.Fprintf(sh.out, "retrieve failed: %s\n", trimPrefix(err))
		sh.log.Error("retrieve failed", "err", err)
		return
	}
	sh.log.Info("received", "queue", label(sh.queue), "seq", m.Seq, "bytes", m.Len(), "out_of_line", m.OutOfLine())
	werr := sh.writePayload(m.Bytes())
	alg, _ := m.Digest()
	if alg == machq.DigestNone {
		_, err = fmt.Fprintln(sh.out, "no digest was sent: integrity not checked")
	} else {
		sh.log.Info("integrity confirmed", "seq", m.Seq, "digest", alg.String())
		_, err = fmt.Fprintln(sh.out, "integrity confirmed")
	}
	sh.settle(d, werr == nil && err == nil, nil)
}

// writePayload writes a retrieved payload and ends its line if it does
// not end one itself, before anything else is written or logged: a log
// line on stderr never runs on from a payload on the same terminal.
func (sh *shell) writePayload(b []byte) error {
	_, err := sh.out.Write(b)
	if err == nil && (len(b) == 0 || b[len(b)-1] != '\n') {
		_, err = fmt.Fprintln(sh.out)
	}
	return err
}

// lost reports whether err says the connection to the server is gone,
// and says so.
func (sh *shell) lost(ctx context.Context, err error) bool {
	if !errors.Is(err, machq.ErrClosed) || ctx.Err() != nil {
		return false
	}
	sh.log.Warn("connection lost; reconnecting", "err", err)
	fmt.Fprintln(sh.out, "connection lost: the server went away (stopped or restarted); reconnecting")
	return true
}

// reconnect dials the server again after the connection was lost, saying
// whether it could; op is what is retried if it could.
func (sh *shell) reconnect(ctx context.Context, op string) bool {
	cl, err := sh.c.dial(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		sh.log.Error("reconnect failed", "err", err)
		fmt.Fprintf(sh.out, "could not reconnect: %s; %s not done (the next command tries again)\n", trimPrefix(err), op)
		return false
	}
	sh.cl.Close()
	sh.cl = cl
	sh.log.Info("reconnected; the old connection's private queue is gone", "server", cl.Path(), "server_pid", cl.ServerPID())
	if sh.queue == "" {
		fmt.Fprintf(sh.out, "reconnected to the server (pid %d); messages stored in the old connection's private queue are gone\n", cl.ServerPID())
	} else {
		fmt.Fprintf(sh.out, "reconnected to the server (pid %d)\n", cl.ServerPID())
	}
	return true
}
