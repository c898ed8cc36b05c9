package main

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/machq/machq/internal/stats"
)

// This file draws machq top's view: renderTop turns what the command
// knows (two STATS snapshots, the handshake, the size of the window)
// into lines of text, with nothing else to consult, so that tests can
// check it line by line.

// topLine is one line of machq top's view. Alert marks a line showing
// a failure or something at or near a limit: its text says so (it
// starts with "!"), and a terminal draws it highlighted.
type topLine struct {
	Text  string
	Alert bool
}

// topServer is what machq top learnt of the server at the handshake.
type topServer struct {
	Path       string // the socket
	PID        int    // 0: never connected
	Version    string // the server's build, "" if it did not say
	Protocol   int
	MaxMessage int64
	MaxInline  int
}

// topFrame is what one refresh of machq top shows.
type topFrame struct {
	Now      time.Time     // when the view is drawn
	Interval time.Duration // --interval
	Server   topServer
	// Cur is the latest STATS answer, received at At; nil before the
	// first. Prev is the one before it on the same connection, Elapsed
	// before Cur; nil on a new connection, when no rate can be computed.
	Cur     *stats.Stats
	At      time.Time
	Prev    *stats.Stats
	Elapsed time.Duration
	// Down, when not nil, is why the server does not answer since
	// DownSince; Cur, if any, is then its last answer.
	Down      error
	DownSince time.Time
	// UserNames are the login names of the uids in Cur.Users, where
	// known.
	UserNames map[uint32]string
}

// Thresholds of the view's alerts.
const (
	// topNearLimit is the share of a limit at which the view marks it.
	topNearLimit = 0.8
	// topMaxGroups is the server's fixed limit on one queue's consumer
	// groups (docs/PROTOCOL.md section 11).
	topMaxGroups = 256
)

// renderTop returns the lines of f's view for a window of width columns
// and height rows: at most height lines of at most width characters
// (each character counted as one column). A width or height of 0 or
// less is no limit, for output that is not a terminal.
//
// The view is a header (the server, its totals, descriptors against
// their limit, the data directory, and alerts), then the named queues,
// deepest first, each followed by its consumer groups, with rates per
// second between Prev and Cur, then the users. When the window is too
// short, the queues and the users are cut, each ending with a line that
// says how many rows are not shown.
func renderTop(f *topFrame, width, height int) []topLine {
	head := topHeader(f)
	var queues, users []topLine
	if f.Cur != nil {
		queues = topQueues(f, width)
		users = topUsers(f)
	}
	var lines []topLine
	if height <= 0 {
		lines = slices.Concat(head, queues, users)
	} else {
		if len(head) > height {
			head = head[:height]
		}
		room := height - len(head)
		// The users get at most a third of the room when both do not
		// fit, and neither section is shown with less than its header
		// and one row.
		ub := min(len(users), room/3)
		if ub < min(len(users), minSection) {
			ub = 0
		}
		qb := min(len(queues), room-ub)
		ub = min(len(users), room-qb)
		lines = slices.Concat(head, cutSection(queues, qb, "rows of queues"), cutSection(users, ub, "users"))
	}
	if width > 0 {
		for i := range lines {
			lines[i].Text = truncate(lines[i].Text, width)
		}
	}
	return lines
}

// minSection is the fewest lines a section that must be cut is shown
// in: a blank line, the column header, one row and the line saying how
// many rows are left out.
const minSection = 4

// cutSection returns at most n lines of s, a section (a blank line, a
// column header, rows); when it must cut, its last line says how many
// rows of what are left out. A section that cannot show one row is
// left out whole.
func cutSection(s []topLine, n int, what string) []topLine {
	if n >= len(s) {
		return s
	}
	if n < minSection {
		return nil
	}
	return append(s[:n-1:n-1], topLine{Text: fmt.Sprintf("  ... %d more %s (the window is too small)", len(s)-(n-1), what)})
}

// truncate cuts s to at most n characters, ending a cut line with "~".
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	if n <= 0 {
		return ""
	}
	i, k := 0, 0
	for i = range s {
		if k == n-1 {
			break
		}
		k++
	}
	return s[:i] + "~"
}

// alertf returns an alert line: its text starts with "! ".
func alertf(format string, a ...any) topLine {
	return topLine{Text: "! " + fmt.Sprintf(format, a...), Alert: true}
}

func linef(format string, a ...any) topLine {
	return topLine{Text: fmt.Sprintf(format, a...)}
}

// topHeader returns the lines above the tables.
func topHeader(f *topFrame) []topLine {
	s := f.Server
	title := "machq top  " + s.Path
	if s.PID != 0 {
		title += fmt.Sprintf("  pid %d", s.PID)
		if s.Version != "" {
			title += "  " + s.Version
		}
		title += fmt.Sprintf("  protocol %d", s.Protocol)
	}
	title += fmt.Sprintf("  every %s  %s", f.Interval, f.Now.Format("15:04:05"))
	lines := []topLine{{Text: title}}
	if f.Down != nil {
		lines = append(lines, alertf("NO SERVER since %s: %s; trying again every %s", f.DownSince.Format("15:04:05"), trimPrefix(f.Down), f.Interval))
		if f.Cur != nil {
			lines = append(lines, alertf("the figures below are its last, from %s", f.At.Format("15:04:05")))
		}
	}
	st := f.Cur
	if st == nil {
		if f.Down == nil {
			lines = append(lines, linef("waiting for the server's first answer"))
		}
		return lines
	}
	prev := f.Prev
	lines = append(lines, linef("clients %d  waiting %d  goroutines %d  max message %s  max inline %s",
		st.Clients, st.Waiting, st.Goroutines, fmtBytes(s.MaxMessage), fmtBytes(int64(s.MaxInline))))
	msgRate := "-"
	if prev != nil {
		msgRate = fmtSigned(perSecond(float64(st.Messages-prev.Messages), f.Elapsed))
	}
	lines = append(lines, linef("messages %d (%s/s)  bytes %s  pages %d  pending %d  unsent %d",
		st.Messages, msgRate, fmtBytes(st.Bytes), st.Pages, st.Pending.Messages, st.Unsent.Messages))
	switch {
	case st.DescriptorLimit <= 0:
		lines = append(lines, linef("descriptors %d", st.Descriptors))
	case nearLimit(st.Descriptors, st.DescriptorLimit):
		lines = append(lines, alertf("descriptors %d of %d (%d%%): new pages and connections are refused at the limit (machqd --max-descriptors)",
			st.Descriptors, st.DescriptorLimit, percent(st.Descriptors, st.DescriptorLimit)))
	default:
		lines = append(lines, linef("descriptors %d of %d (%d%%)", st.Descriptors, st.DescriptorLimit, percent(st.Descriptors, st.DescriptorLimit)))
	}
	if d := st.Durable; d != nil {
		recRate := "-"
		if prev != nil && prev.Durable != nil && d.Records >= prev.Durable.Records {
			recRate = fmtRate(perSecond(float64(d.Records-prev.Durable.Records), f.Elapsed))
		}
		l := fmt.Sprintf("durable  queues %q in %s  %s  segments %d  records %d (%s/s)", d.Queues, d.Dir, d.Sync, d.Segments, d.Records, recRate)
		if d.Sync == stats.SyncLossyInterval {
			l += fmt.Sprintf("  synced every %s", time.Duration(d.SyncIntervalMillis)*time.Millisecond)
			if u := d.Unsynced; u != nil {
				l += fmt.Sprintf(", unsynced %d records %s", u.Records, fmtBytes(u.Bytes))
			}
		}
		lines = append(lines, topLine{Text: l})
		if d.Failed != "" {
			lines = append(lines, alertf("durable FAILED: %s; durable stores are refused until the server is restarted", d.Failed))
		}
	} else {
		lines = append(lines, linef("durable  no: every queue is in memory"))
	}
	if st.QueuesOmitted > 0 {
		lines = append(lines, alertf("%d named queues not listed: the server's answer holds only the first %d by name", st.QueuesOmitted, len(st.Queues)))
	}
	return lines
}

// The queue table's columns after the name, and their widths.
var (
	topQueueCols   = []string{"MESSAGES", "IN/S", "OUT/S", "ACK/S", "BYTES", "PENDING", "DELAYED", "WAITING", "BLOCKED", "DEAD"}
	topQueueWidths = []int{9, 7, 7, 7, 9, 8, 8, 8, 8, 8}
)

// topQueueRest is the width of the queue table's columns after the name,
// with the mark column and the spaces.
func topQueueRest() int {
	n := 2 + len(topQueueWidths)
	for _, w := range topQueueWidths {
		n += w
	}
	return n
}

// queueDepth is what a queue is sorted by: the most messages in one
// line, its own or one of its groups' (each group receives every
// message, so the deepest is the furthest behind).
func queueDepth(q *stats.Queue) int {
	d := q.Messages
	for _, g := range q.Groups {
		d = max(d, g.Messages)
	}
	return d
}

// topQueues returns the queue section: a blank line, the column header
// and one row per queue and per consumer group, deepest queue first
// (then by name).
func topQueues(f *topFrame, width int) []topLine {
	st := f.Cur
	lines := []topLine{{}}
	if len(st.Queues) == 0 {
		return append(lines, linef("  no named queues"))
	}
	qs := make([]*stats.Queue, len(st.Queues))
	for i := range st.Queues {
		qs[i] = &st.Queues[i]
	}
	slices.SortStableFunc(qs, func(a, b *stats.Queue) int {
		if c := cmp.Compare(queueDepth(b), queueDepth(a)); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	prev := map[string]*stats.Queue{}
	if f.Prev != nil {
		for i := range f.Prev.Queues {
			prev[f.Prev.Queues[i].Name] = &f.Prev.Queues[i]
		}
	}
	// The name column fits the longest name, between 5 and 32
	// characters, and narrower when the window is.
	nw := len("QUEUE")
	for _, q := range qs {
		nw = max(nw, len(q.Name))
		for _, g := range q.Groups {
			nw = max(nw, len("  group ")+len(g.Name))
		}
	}
	nw = min(nw, 32)
	if width > 0 && nw+topQueueRest() > width {
		nw = max(12, width-topQueueRest())
	}
	row := func(mark bool, name string, cells []string, notes []string) topLine {
		var b strings.Builder
		if mark {
			b.WriteString("!")
		} else {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, " %-*s", nw, truncate(name, nw))
		for i, c := range cells {
			fmt.Fprintf(&b, " %*s", topQueueWidths[i], c)
		}
		if len(notes) > 0 {
			b.WriteString("  " + strings.Join(notes, "; "))
		}
		return topLine{Text: strings.TrimRight(b.String(), " "), Alert: mark}
	}
	lines = append(lines, row(false, "QUEUE", topQueueCols, nil))
	for _, q := range qs {
		p := prev[q.Name]
		var pc *stats.Counts
		var pm int
		if p != nil {
			pc, pm = &p.Counts, p.Messages
		}
		in, out, ack := lineRates(f, q.Messages, &q.Counts, pm, pc)
		var notes []string
		if q.Blocked > 0 {
			notes = append(notes, fmt.Sprintf("%d stores wait for room: the queue is at a limit (machqd --max-queue-*)", q.Blocked))
		}
		if strings.HasSuffix(q.Name, ".dlq") && q.Messages > 0 {
			notes = append(notes, "dead letters: see machq peek --list, machq kick")
		}
		if nearLimit(int64(len(q.Groups)), topMaxGroups) {
			notes = append(notes, fmt.Sprintf("%d of %d consumer groups", len(q.Groups), topMaxGroups))
		}
		if q.Durable {
			notes = append(notes, "durable")
		}
		alert := q.Blocked > 0 || (strings.HasSuffix(q.Name, ".dlq") && q.Messages > 0) || nearLimit(int64(len(q.Groups)), topMaxGroups)
		lines = append(lines, row(alert, q.Name, []string{
			fmt.Sprint(q.Messages), in, out, ack, fmtBytes(q.Bytes),
			fmt.Sprint(q.Pending), fmt.Sprint(q.Delayed), fmt.Sprint(q.Waiting), fmt.Sprint(q.Blocked), fmt.Sprint(q.DeadLettered),
		}, notes))
		for _, g := range q.Groups {
			var pc *stats.Counts
			var pm int
			if p != nil {
				for i := range p.Groups {
					if p.Groups[i].Name == g.Name {
						pc, pm = &p.Groups[i].Counts, p.Groups[i].Messages
					}
				}
			}
			in, out, ack := lineRates(f, g.Messages, &g.Counts, pm, pc)
			lines = append(lines, row(false, "  group "+g.Name, []string{
				fmt.Sprint(g.Messages), in, out, ack, fmtBytes(g.Bytes),
				fmt.Sprint(g.Pending), fmt.Sprint(g.Delayed), fmt.Sprint(g.Waiting), "", fmt.Sprint(g.DeadLettered),
			}, nil))
		}
	}
	return lines
}

// lineRates returns the rates per second of a line (a queue's own, or a
// group's) holding msgs messages with counters c, which held pmsgs with
// counters pc at the previous snapshot (pc nil: it was not there):
// messages stored into it (estimated: the change in its depth plus its
// first deliveries, which is exact unless messages come back or are
// purged), delivered (every delivery), and acknowledged. "-" where no
// rate can be computed: no previous snapshot, or counters that went
// back (the queue was deleted and made again).
func lineRates(f *topFrame, msgs int, c *stats.Counts, pmsgs int, pc *stats.Counts) (in, out, ack string) {
	if f.Prev == nil || pc == nil || f.Elapsed <= 0 ||
		c.Delivered < pc.Delivered || c.Redelivered < pc.Redelivered || c.Acked < pc.Acked {
		return "-", "-", "-"
	}
	first := float64(c.Delivered-pc.Delivered) - float64(c.Redelivered-pc.Redelivered)
	stored := max(0, float64(msgs-pmsgs)+first)
	return fmtRate(perSecond(stored, f.Elapsed)),
		fmtRate(perSecond(float64(c.Delivered-pc.Delivered), f.Elapsed)),
		fmtRate(perSecond(float64(c.Acked-pc.Acked), f.Elapsed))
}

// topUsers returns the users section: a blank line, the column header
// and one row per uid, in uid order.
func topUsers(f *topFrame) []topLine {
	st := f.Cur
	lines := []topLine{{}, linef("  %-10s %-12s %7s %9s %9s %7s %7s %8s", "UID", "USER", "CLIENTS", "MESSAGES", "BYTES", "PAGES", "QUEUES", "WAITING")}
	if len(st.Users) == 0 {
		return append(lines, linef("  no users"))
	}
	users := slices.Clone(st.Users)
	slices.SortStableFunc(users, func(a, b stats.User) int { return cmp.Compare(a.UID, b.UID) })
	for _, u := range users {
		name := f.UserNames[u.UID]
		if name == "" {
			name = "-"
		}
		lines = append(lines, linef("  %-10d %-12s %7d %9d %9s %7d %7d %8d", u.UID, truncate(name, 12), u.Connections, u.Messages, fmtBytes(u.Bytes), u.Pages, u.Queues, u.Waiting))
	}
	return lines
}

// nearLimit reports whether n is at topNearLimit of limit or more.
func nearLimit(n, limit int64) bool {
	return limit > 0 && float64(n) >= topNearLimit*float64(limit)
}

func perSecond(n float64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return n / d.Seconds()
}

func percent(n, of int64) int64 {
	if of <= 0 {
		return 0
	}
	return n * 100 / of
}

// fmtRate formats a rate per second in at most 6 characters: 0, 0.5,
// 12, 1234, 12.3k, 123k, 1.2M ...
func fmtRate(v float64) string {
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a < 10:
		return fmt.Sprintf("%.1f", v)
	case a < 1e4:
		return fmt.Sprintf("%.0f", v)
	case a < 1e5:
		return fmt.Sprintf("%.1fk", v/1e3)
	case a < 1e6:
		return fmt.Sprintf("%.0fk", v/1e3)
	case a < 1e8:
		return fmt.Sprintf("%.1fM", v/1e6)
	}
	return fmt.Sprintf("%.0fM", v/1e6)
}

// fmtSigned is fmtRate with a sign, for a change.
func fmtSigned(v float64) string {
	if v > 0 {
		return "+" + fmtRate(v)
	}
	return fmtRate(v)
}

// fmtBytes formats a byte count in binary units: 512B, 1.5KiB, 64MiB.
func fmtBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	v := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		v /= 1024
		if v < 1024 || u == "PiB" {
			if v < 10 {
				return fmt.Sprintf("%.1f%s", v, u)
			}
			return fmt.Sprintf("%.0f%s", v, u)
		}
	}
	return "" // not reached
}
