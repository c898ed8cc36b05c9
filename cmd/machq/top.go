package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"os/user"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/stats"
)

const topSummary = `Shows a running server live, asking it for its statistics every --interval:
clients, messages, bytes, pages, descriptors against their limit, the data
directory; the named queues, deepest first, each followed by its consumer
groups, with rates per second since the previous refresh (IN/S: messages
stored, estimated from the change in depth and the first deliveries;
OUT/S: deliveries; ACK/S: acknowledgements); and what each user id holds.
Where the server reports its limits (machqd's --max-* flags), the totals
are shown against them ("clients 3 of 4096 (0%)"), with the number of
named queues and consumer groups. Lines starting with "!" (highlighted on
a terminal) show a failure or a limit near: descriptors at 80% of machqd
--max-descriptors or more, stores waiting for room in a full queue, dead
letters, a failed data directory; and at 80% or more of its limit, each
naming the flag: the server's messages, bytes, pages, clients, waiting
retrieves, named queues and consumer groups, a queue's or consumer
group's messages (counting pending and delayed) and bytes, and what a
user id holds, its clients, queues and waiting retrieves.

On a terminal the view fills the window (the alternate screen, left on
exit) and follows its size; q quits (status 0), ^C too (status 130). If
the server goes away the view says so and tries again every --interval
until it answers. When stdout is not a terminal, machq top prints one
plain snapshot per --interval, separated by a blank line, until --count,
SIGINT or SIGTERM; if the server goes away it tries once more at once (a
server restarting in place answers again) and otherwise exits with an
error (status 4 when nothing answers at the socket any more).`

// topStatTimeout bounds one STATS round trip of machq top: a server that
// does not answer in that time counts as gone.
const topStatTimeout = 10 * time.Second

// topMinInterval is the shortest --interval.
const topMinInterval = 10 * time.Millisecond

func topCmd(ctx context.Context, args []string, stdin *os.File, stdout, stderr io.Writer) int {
	var c common
	var interval time.Duration
	var count int
	cmd := newCommand("top", topSummary)
	c.register(cmd, "warn")
	cmd.fs.DurationVar(&interval, "interval", time.Second, "time between refreshes, a `duration` such as 500ms or 2s")
	cmd.fs.IntVar(&count, "count", 0, "stop after `n` refreshes; 0 runs until q, ^C or a signal")
	if st := cmd.parse(args, stdout, stderr); st >= 0 {
		return st
	}
	if interval < topMinInterval {
		return fail(stderr, usagef("top", "--interval %v: must be at least %v", interval, topMinInterval))
	}
	if count < 0 {
		return fail(stderr, usagef("top", "--count %d: must not be negative (0 runs until stopped)", count))
	}
	if _, err := c.check("top", stderr); err != nil {
		return fail(stderr, err)
	}
	src := &topSource{c: &c}
	defer src.close()
	path := c.target()
	if c.socket == "" {
		if p, err := machq.SocketPath(c.name); err == nil {
			path = p
		}
	}
	v := &topView{frame: topFrame{Interval: interval, Server: topServer{Path: path}}, names: map[uint32]string{}}
	if f, ok := stdout.(*os.File); ok && isTerminal(f) {
		return topTerminal(ctx, src, v, count, stdin, f, stderr)
	}
	return topPlain(ctx, src, v, count, stdout, stderr)
}

// topSource asks the server for its statistics, dialling again after
// a connection fails.
type topSource struct {
	c  *common
	mu sync.Mutex
	cl *machq.Client // nil when not connected
}

// topResult is the outcome of one topSource.fetch.
type topResult struct {
	st     *stats.Stats
	at     time.Time
	fresh  bool      // the answer came on a new connection: no rate spans it
	server topServer // the connection's server, when fresh
	err    error
}

// fetch returns the server's statistics, dialling first when there is no
// connection. After a failure the connection is closed: the next fetch
// dials again.
func (s *topSource) fetch(ctx context.Context) topResult {
	var r topResult
	s.mu.Lock()
	cl := s.cl
	s.mu.Unlock()
	if cl == nil {
		var err error
		if cl, err = s.c.dial(ctx); err != nil {
			r.err = err
			return r
		}
		r.fresh = true
		r.server = topServer{Path: cl.Path(), PID: cl.ServerPID(), Version: cl.ServerVersion(), Protocol: cl.ProtocolVersion(),
			MaxMessage: cl.MaxMessageSize(), MaxInline: cl.MaxInline()}
		s.mu.Lock()
		s.cl = cl
		s.mu.Unlock()
	}
	sctx, cancel := context.WithTimeout(ctx, topStatTimeout)
	defer cancel()
	r.st, r.err = cl.Stat(sctx)
	r.at = time.Now()
	if r.err != nil {
		s.mu.Lock()
		if s.cl == cl {
			s.cl = nil
		}
		s.mu.Unlock()
		cl.Close()
	}
	return r
}

// close closes the connection, if any.
func (s *topSource) close() {
	s.mu.Lock()
	cl := s.cl
	s.cl = nil
	s.mu.Unlock()
	if cl != nil {
		cl.Close()
	}
}

// topView is what machq top shows, updated by each fetch.
type topView struct {
	frame topFrame
	names map[uint32]string // login names by uid; "" when there is none
}

// update takes r into the view.
func (v *topView) update(r topResult) {
	f := &v.frame
	if r.err != nil {
		if f.Down == nil {
			f.DownSince = time.Now()
		}
		f.Down = r.err
		return
	}
	if r.fresh {
		f.Server = r.server
		f.Prev = nil
	} else {
		f.Prev, f.Elapsed = f.Cur, r.at.Sub(f.At)
	}
	f.Cur, f.At, f.Down = r.st, r.at, nil
	for _, u := range r.st.Users {
		if _, ok := v.names[u.UID]; !ok {
			name := ""
			if usr, err := user.LookupId(fmt.Sprint(u.UID)); err == nil {
				name = usr.Username
			}
			v.names[u.UID] = name
		}
	}
	f.UserNames = v.names
}

// render returns the view's lines for a window of width by height (0:
// no limit), drawn now.
func (v *topView) render(width, height int) []topLine {
	v.frame.Now = time.Now()
	return renderTop(&v.frame, width, height)
}

// topPlain is machq top when stdout is not a terminal: a plain snapshot
// per interval.
func topPlain(ctx context.Context, src *topSource, v *topView, count int, stdout, stderr io.Writer) int {
	tick := time.NewTicker(v.frame.Interval)
	defer tick.Stop()
	for n := 0; count == 0 || n < count; n++ {
		if n > 0 {
			select {
			case <-ctx.Done():
				return reportInterrupt(ctx, stderr, "")
			case <-tick.C:
			}
		}
		r := src.fetch(ctx)
		if r.err != nil && v.frame.Cur != nil && ctx.Err() == nil {
			// Lost: a server restarting in place answers a new
			// connection at once.
			r = src.fetch(ctx)
		}
		if ctx.Err() != nil {
			return reportInterrupt(ctx, stderr, "")
		}
		if r.err != nil {
			if v.frame.Cur == nil {
				return fail(stderr, r.err)
			}
			fmt.Fprintf(stderr, "machq: top: lost the server at %s: %v\n", v.frame.Server.Path, trimPrefix(r.err))
			return status(r.err)
		}
		v.update(r)
		var b strings.Builder
		if n > 0 {
			b.WriteString("\n")
		}
		for _, l := range v.render(0, 0) {
			b.WriteString(l.Text)
			b.WriteString("\n")
		}
		if _, err := io.WriteString(stdout, b.String()); err != nil {
			return fail(stderr, fmt.Errorf("write: %w", err))
		}
	}
	return exitOK
}

// Escape sequences machq top draws with (ECMA-48, and xterm's alternate
// screen, which every terminal emulator in use has).
const (
	escEnterScreen = "\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J" // alternate screen, cursor hidden, cleared
	escLeaveScreen = "\x1b[0m\x1b[?1049l\x1b[?25h"       // attributes reset, normal screen, cursor shown
	escAlert       = "\x1b[1;31m"                        // bold red
	escReset       = "\x1b[0m"
)

// topEnd is how the terminal view ended.
type topEnd int

const (
	topQuit      topEnd = iota // q, or --count reached
	topCtrlC                   // ^C typed (the terminal is raw: no SIGINT)
	topSignalled               // SIGINT or SIGTERM
)

// topTerminal is machq top on a terminal: the view redrawn in place
// every interval and whenever the window's size changes, until q, ^C, a
// signal or --count. The terminal is put back as it was on every way
// out: raw mode off, cursor shown, alternate screen left.
func topTerminal(ctx context.Context, src *topSource, v *topView, count int, stdin, stdout *os.File, stderr io.Writer) int {
	// Keys are read raw from stdin when it is a terminal (otherwise only
	// signals stop the view).
	var keys <-chan byte
	var old *term.State
	if stdin != nil && term.IsTerminal(int(stdin.Fd())) {
		var err error
		if old, err = term.MakeRaw(int(stdin.Fd())); err != nil {
			return fail(stderr, fmt.Errorf("make the terminal raw: %w", err))
		}
		keys = readKeys(stdin)
	}
	var once sync.Once
	restore := func() {
		once.Do(func() {
			io.WriteString(stdout, escLeaveScreen)
			if old != nil {
				term.Restore(int(stdin.Fd()), old)
			}
		})
	}
	defer restore() // on a panic too
	io.WriteString(stdout, escEnterScreen)
	end := topLoop(ctx, src, v, count, keys, stdout)
	restore()
	switch end {
	case topCtrlC:
		fmt.Fprintln(stderr, "machq: interrupted")
		return (&interrupted{sig: syscall.SIGINT}).status()
	case topSignalled:
		return reportInterrupt(ctx, stderr, "")
	}
	return exitOK
}

// topLoop runs the terminal view until it ends.
func topLoop(ctx context.Context, src *topSource, v *topView, count int, keys <-chan byte, out *os.File) topEnd {
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	draw := func() {
		w, h, err := term.GetSize(int(out.Fd()))
		if err != nil || w <= 0 || h <= 0 {
			w, h = 80, 24
		}
		out.WriteString(drawLines(v.render(w, h), h))
	}
	results := make(chan topResult, 1)
	fetch := func() { go func() { results <- src.fetch(ctx) }() }
	fetch()
	draw()
	var next <-chan time.Time
	for n := 0; ; {
		select {
		case <-ctx.Done():
			return topSignalled
		case k, ok := <-keys:
			if !ok {
				keys = nil // stdin failed: only signals stop the view now
				continue
			}
			switch k {
			case 'q', 'Q':
				return topQuit
			case 0x03: // ^C
				return topCtrlC
			}
		case <-winch:
			draw()
		case r := <-results:
			if ctx.Err() != nil {
				return topSignalled
			}
			v.update(r)
			draw()
			if n++; count > 0 && n >= count {
				return topQuit
			}
			next = time.After(v.frame.Interval)
		case <-next:
			next = nil
			fetch()
		}
	}
}

// drawLines returns what draws lines over a window of height rows: each
// line written at its row after clearing it, alert lines highlighted,
// and the rows below cleared.
func drawLines(lines []topLine, height int) string {
	var b strings.Builder
	for i, l := range lines {
		fmt.Fprintf(&b, "\x1b[%d;1H\x1b[2K", i+1)
		if l.Alert {
			b.WriteString(escAlert + l.Text + escReset)
		} else {
			b.WriteString(l.Text)
		}
	}
	if len(lines) < height {
		fmt.Fprintf(&b, "\x1b[%d;1H\x1b[J", len(lines)+1)
	}
	return b.String()
}

// readKeys returns the bytes read from in, one at a time, until a read
// fails; the reader is left blocked when machq exits.
func readKeys(in *os.File) <-chan byte {
	ch := make(chan byte, 16)
	go func() {
		defer close(ch)
		buf := make([]byte, 64)
		for {
			n, err := in.Read(buf)
			for _, c := range buf[:n] {
				ch <- c
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}
