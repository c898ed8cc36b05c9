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
// second between Prev and Cur, then the users. A server that reports its
// limits has its totals shown against them, with the number of named
// queues and consumer groups, and what is at topNearLimit of a limit or
// more marked: in the header, in a queue's or group's row, in a user's
// row. When the window is too short, the queues and the users are cut,
// each ending with a line that says how many rows are not shown.
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
	lim := limitsOf(st)
	lines = append(lines, linef("clients %d%s  waiting %d%s  goroutines %d  max message %s  max inline %s",
		st.Clients, ofLimit(int64(st.Clients), lim.MaxConnections, fmtCount),
		st.Waiting, ofLimit(st.Waiting, lim.MaxWaitingTotal, fmtCount),
		st.Goroutines, fmtBytes(s.MaxMessage), fmtBytes(int64(s.MaxInline))))
	lines = appendLimitAlert(lines, "clients", int64(st.Clients), lim.MaxConnections, fmtCount,
		"new connections are refused", "max-connections")
	lines = appendLimitAlert(lines, "waiting", st.Waiting, lim.MaxWaitingTotal, fmtCount,
		"retrieves that would wait are refused", "max-waiting-total")
	msgRate := "-"
	if prev != nil {
		msgRate = fmtSigned(perSecond(float64(st.Messages-prev.Messages), f.Elapsed))
	}
	lines = append(lines, linef("messages %d (%s/s)%s  bytes %s%s  pages %d%s  pending %d  unsent %d",
		st.Messages, msgRate, ofLimit(st.Messages, lim.MaxStoredMessages, fmtCount),
		fmtBytes(st.Bytes), ofLimit(st.Bytes, lim.MaxStoredBytes, fmtBytes),
		st.Pages, ofLimit(st.Pages, lim.MaxStoredPages, fmtCount),
		st.Pending.Messages, st.Unsent.Messages))
	lines = appendLimitAlert(lines, "messages", st.Messages, lim.MaxStoredMessages, fmtCount,
		"new stores are refused", "max-stored-messages")
	lines = appendLimitAlert(lines, "bytes", st.Bytes, lim.MaxStoredBytes, fmtBytes,
		"new stores are refused", "max-stored-bytes")
	lines = appendLimitAlert(lines, "pages", st.Pages, lim.MaxStoredPages, fmtCount,
		"new stores of pages are refused", "max-stored-pages")
	// From a server that reports its limits, the named queues and the
	// consumer groups follow the descriptors, on their line unless that
	// is an alert: the header keeps its height, and the view of an older
	// server stays as it was. Queues left out of the answer count as
	// queues; their groups are unknown, so the groups counted are then
	// the fewest there are ("+").
	var counts string
	var queues, groups int64
	if st.Limits != nil {
		queues = int64(len(st.Queues) + st.QueuesOmitted)
		for _, q := range st.Queues {
			groups += int64(len(q.Groups))
		}
		more := ""
		if st.QueuesOmitted > 0 {
			more = "+"
		}
		counts = fmt.Sprintf("named queues %d%s  consumer groups %d%s%s", queues, ofLimit(queues, lim.MaxQueues, fmtCount),
			groups, more, ofLimit(groups, lim.MaxGroups, fmtCount))
	}
	switch {
	case st.DescriptorLimit <= 0:
		lines = append(lines, linef("descriptors %d", st.Descriptors))
	case nearLimit(st.Descriptors, st.DescriptorLimit):
		lines = append(lines, alertf("descriptors %d of %d (%d%%): new pages and connections are refused at the limit (machqd --max-descriptors)",
			st.Descriptors, st.DescriptorLimit, percent(st.Descriptors, st.DescriptorLimit)))
		if counts != "" {
			lines = append(lines, topLine{Text: counts})
			counts = ""
		}
	default:
		lines = append(lines, linef("descriptors %d of %d (%d%%)", st.Descriptors, st.DescriptorLimit, percent(st.Descriptors, st.DescriptorLimit)))
	}
	if counts != "" {
		lines[len(lines)-1].Text += "  " + counts
	}
	lines = appendLimitAlert(lines, "named queues", queues, lim.MaxQueues, fmtCount,
		"new named queues are refused", "max-queues")
	lines = appendLimitAlert(lines, "consumer groups", groups, lim.MaxGroups, fmtCount,
		"new consumer groups are refused", "max-groups")
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

// noLimits stands for the limits of a server that does not report them
// (STATS before limits): nothing is judged against them, and the view
// is as it was.
var noLimits = stats.Limits{
	MaxConnections: -1, MaxConnectionsPerUID: -1,
	MaxStoredMessages: -1, MaxStoredBytes: -1, MaxStoredPages: -1,
	MaxStoredMessagesPerUID: -1, MaxStoredBytesPerUID: -1, MaxStoredPagesPerUID: -1,
	MaxQueueMessages: -1, MaxQueueBytes: -1,
	MaxPrivateMessages: -1, MaxPrivateBytes: -1,
	MaxQueues: -1, MaxQueuesPerUID: -1,
	MaxWaiting: -1, MaxWaitingTotal: -1, MaxWaitingPerUID: -1,
	MaxGroups: -1, MaxGroupsPerUID: -1,
	MaxPending: -1, MaxDescriptorsPerUID: -1,
}

// limitsOf returns st's limits, or noLimits when the server did not
// report them.
//
// Of the limits, the view judges those STATS has figures for: the
// server's totals, each named queue's line (and each consumer group's)
// and each user id's share. Not judged, for want of figures: the limits
// of one connection (--max-waiting, --max-pending, the private queue's
// --max-private-*) and --max-groups-per-uid.
func limitsOf(st *stats.Stats) *stats.Limits {
	if st.Limits == nil {
		return &noLimits
	}
	return st.Limits
}

// ofLimit returns what follows figure n when it has a limit: " of
// LIMIT (P%)", both formatted by format; "" without a limit (-1).
func ofLimit(n, limit int64, format func(int64) string) string {
	if limit <= 0 {
		return ""
	}
	return fmt.Sprintf(" of %s (%d%%)", format(limit), percent(n, limit))
}

// appendLimitAlert appends to lines, when figure n (named what) is at
// topNearLimit of its limit or more, an alert saying so, what the server
// refuses at the limit, and the machqd flag that sets it (flag, without
// its dashes).
func appendLimitAlert(lines []topLine, what string, n, limit int64, format func(int64) string, refused, flag string) []topLine {
	if !nearLimit(n, limit) {
		return lines
	}
	return append(lines, alertf("%s %s of %s (%d%%): %s at the limit (machqd --%s)",
		what, format(n), format(limit), percent(n, limit), refused, flag))
}

// limitNote returns the note of a table row on figure n (named what),
// at topNearLimit of its limit or more: what, how near, and the machqd
// flag that sets the limit; "" when it is not near.
func limitNote(what string, n, limit int64, format func(int64) string, flag string) string {
	if !nearLimit(n, limit) {
		return ""
	}
	return fmt.Sprintf("%s %s of %s (%d%%, machqd --%s)", what, format(n), format(limit), percent(n, limit), flag)
}

// appendNote appends note to notes unless it is "", and reports whether
// it did.
func appendNote(notes []string, note string) ([]string, bool) {
	if note == "" {
		return notes, false
	}
	return append(notes, note), true
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
	lim := limitsOf(st)
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
		notes, full := queueLimitNotes(notes, q.Messages, q.Pending, q.Delayed, q.Bytes, lim)
		if q.Durable {
			notes = append(notes, "durable")
		}
		alert := q.Blocked > 0 || (strings.HasSuffix(q.Name, ".dlq") && q.Messages > 0) || nearLimit(int64(len(q.Groups)), topMaxGroups) || full
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
			// Each group's line is held to the queue's limits.
			gnotes, full := queueLimitNotes(nil, g.Messages, g.Pending, g.Delayed, g.Bytes, lim)
			lines = append(lines, row(full, "  group "+g.Name, []string{
				fmt.Sprint(g.Messages), in, out, ack, fmtBytes(g.Bytes),
				fmt.Sprint(g.Pending), fmt.Sprint(g.Delayed), fmt.Sprint(g.Waiting), "", fmt.Sprint(g.DeadLettered),
			}, gnotes))
		}
	}
	return lines
}

// queueLimitNotes appends to notes those on a named queue's line (or a
// consumer group's) near --max-queue-messages or --max-queue-bytes, and
// reports whether there is one. The line holds msgs messages of bytes
// bytes, with pending and delayed messages out of it.
//
// The server counts against these limits the messages in line with
// those pending and delayed, and their bytes (queue.Queue.fits, and
// queueFullError in server/store.go, which says which is full). STATS
// gives the bytes of the line only, not those of its pending and
// delayed messages: the bytes judged are those in line, fewer than the
// server counts while messages are pending or delayed.
func queueLimitNotes(notes []string, msgs, pending, delayed int, bytes int64, lim *stats.Limits) ([]string, bool) {
	held := int64(msgs + pending + delayed)
	what := "messages"
	if pending+delayed > 0 {
		what = "messages with pending and delayed"
	}
	notes, fullMsgs := appendNote(notes, limitNote(what, held, lim.MaxQueueMessages, fmtCount, "max-queue-messages"))
	notes, fullBytes := appendNote(notes, limitNote("bytes", bytes, lim.MaxQueueBytes, fmtBytes, "max-queue-bytes"))
	return notes, fullMsgs || fullBytes
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
	lim := limitsOf(st)
	for _, u := range users {
		name := f.UserNames[u.UID]
		if name == "" {
			name = "-"
		}
		notes := userLimitNotes(&u, lim)
		mark := " "
		if len(notes) > 0 {
			mark = "!"
		}
		l := fmt.Sprintf("%s %-10d %-12s %7d %9d %9s %7d %7d %8d", mark, u.UID, truncate(name, 12), u.Connections, u.Messages, fmtBytes(u.Bytes), u.Pages, u.Queues, u.Waiting)
		if len(notes) > 0 {
			l += "  " + strings.Join(notes, "; ")
		}
		lines = append(lines, topLine{Text: l, Alert: len(notes) > 0})
	}
	return lines
}

// userLimitNotes returns the notes on what user u holds near the per-uid
// limits (--max-*-per-uid).
func userLimitNotes(u *stats.User, lim *stats.Limits) []string {
	var notes []string
	for _, c := range []struct {
		what   string
		n, max int64
		format func(int64) string
		flag   string
	}{
		{"clients", u.Connections, lim.MaxConnectionsPerUID, fmtCount, "max-connections-per-uid"},
		{"messages", u.Messages, lim.MaxStoredMessagesPerUID, fmtCount, "max-stored-messages-per-uid"},
		{"bytes", u.Bytes, lim.MaxStoredBytesPerUID, fmtBytes, "max-stored-bytes-per-uid"},
		{"pages", u.Pages, lim.MaxStoredPagesPerUID, fmtCount, "max-stored-pages-per-uid"},
		{"queues", int64(u.Queues), lim.MaxQueuesPerUID, fmtCount, "max-queues-per-uid"},
		{"waiting", u.Waiting, lim.MaxWaitingPerUID, fmtCount, "max-waiting-per-uid"},
		{"descriptors", u.Descriptors, lim.MaxDescriptorsPerUID, fmtCount, "max-descriptors-per-uid"},
	} {
		notes, _ = appendNote(notes, limitNote(c.what, c.n, c.max, c.format, c.flag))
	}
	return notes
}

// nearLimit reports whether n is at topNearLimit of limit or more.
func nearLimit(n, limit int64) bool {
	return limit > 0 && float64(n) >= topNearLimit*float64(limit)
}

// fmtCount formats a count as the view's figures are: in decimal.
func fmtCount(n int64) string { return fmt.Sprint(n) }

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
