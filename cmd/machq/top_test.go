package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/machq/machq/internal/stats"
)

// topTestFrame returns a frame of a server with three queues, one with a
// consumer group, and two users, with no previous snapshot.
func topTestFrame() *topFrame {
	now := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	return &topFrame{
		Now:      now,
		Interval: time.Second,
		Server:   topServer{Path: "/run/machq/machq.sock", PID: 42, Version: "machqd v1.2.0 (go1.26.8)", Protocol: 3, MaxMessage: 4 << 30, MaxInline: 1 << 20},
		At:       now,
		Cur: &stats.Stats{
			Clients: 3, Messages: 60, Bytes: 6000, Descriptors: 10, DescriptorLimit: 1000, Goroutines: 9,
			Queues: []stats.Queue{
				{Name: "alpha", Messages: 5, Bytes: 500, Counts: stats.Counts{Delivered: 100, Acked: 90}},
				{Name: "beta", Messages: 30, Bytes: 3000, Counts: stats.Counts{Delivered: 10}},
				{Name: "events", Groups: []stats.Group{{Name: "audit", Messages: 20, Counts: stats.Counts{Delivered: 7}}}},
			},
			Users: []stats.User{{UID: 1000, Connections: 2, Messages: 60}, {UID: 0, Connections: 1}},
		},
		UserNames: map[uint32]string{0: "root"},
	}
}

// rowOf returns the fields of the view's table row for name, failing
// if there is none.
func rowOf(t *testing.T, lines []topLine, name string) []string {
	t.Helper()
	for _, l := range lines {
		f := strings.Fields(strings.TrimPrefix(l.Text, "!"))
		if len(f) > 0 && f[0] == name {
			return f
		}
	}
	t.Fatalf("no row for %s in\n%s", name, joinLines(lines))
	return nil
}

func joinLines(lines []topLine) string {
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%q alert=%v\n", l.Text, l.Alert)
	}
	return b.String()
}

func indexOf(t *testing.T, lines []topLine, prefix string) int {
	t.Helper()
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(strings.TrimPrefix(l.Text, "!")), prefix) {
			return i
		}
	}
	t.Fatalf("no line starting with %q in\n%s", prefix, joinLines(lines))
	return -1
}

// TestRenderTopSortsByDepth: queues deepest first (a queue with groups
// by its deepest line), then by name, each followed by its groups;
// users by uid; no alert on a quiet server.
func TestRenderTopSortsByDepth(t *testing.T) {
	lines := renderTop(topTestFrame(), 0, 0)
	// beta 30, events (its group holds 20), alpha 5; the group right
	// under its queue.
	b, e, g, a := indexOf(t, lines, "beta "), indexOf(t, lines, "events "), indexOf(t, lines, "group audit"), indexOf(t, lines, "alpha ")
	if !(b < e && e < g && g < a) {
		t.Errorf("rows beta %d, events %d, group audit %d, alpha %d: want that order\n%s", b, e, g, a, joinLines(lines))
	}
	if f := rowOf(t, lines, "beta"); f[1] != "30" || f[2] != "-" || f[3] != "-" {
		t.Errorf("beta without a previous snapshot: %v, want 30 messages and no rates", f)
	}
	// Users in uid order, with their names where known.
	r, u := indexOf(t, lines, "0 "), indexOf(t, lines, "1000 ")
	if r > u || rowOf(t, lines, "0")[1] != "root" || rowOf(t, lines, "1000")[1] != "-" {
		t.Errorf("users:\n%s", joinLines(lines))
	}
	for _, l := range lines {
		if l.Alert || strings.HasPrefix(l.Text, "!") {
			t.Errorf("alert in a quiet server's view: %q", l.Text)
		}
	}
	// Equal depths go by name.
	f := topTestFrame()
	f.Cur.Queues = []stats.Queue{{Name: "b", Messages: 1}, {Name: "c", Messages: 2}, {Name: "a", Messages: 1}}
	lines = renderTop(f, 0, 0)
	if c, a, b := indexOf(t, lines, "c "), indexOf(t, lines, "a "), indexOf(t, lines, "b "); !(c < a && a < b) {
		t.Errorf("c %d, a %d, b %d: want c, a, b", c, a, b)
	}
}

// TestRenderTopRates: rates per second between two snapshots, none
// for a queue new or with counters that went back.
func TestRenderTopRates(t *testing.T) {
	f := topTestFrame()
	prev := topTestFrame().Cur
	cur := f.Cur
	f.Prev, f.Elapsed = prev, 2*time.Second
	// alpha: 20 more deliveries, 4 of them redeliveries, 10 more acks,
	// depth 5 -> 9: 16 first deliveries + 4 = 20 stored in 2s.
	cur.Queues[0].Messages = 9
	cur.Queues[0].Delivered, cur.Queues[0].Redelivered, cur.Queues[0].Acked = 120, 4, 100
	// beta: deleted and made again, its counters restarted.
	cur.Queues[1].Delivered = 3
	// events' group: 2000 deliveries in 2s, depth unchanged.
	cur.Queues[2].Groups[0].Delivered = 2007
	// A new queue: no rate yet.
	cur.Queues = append(cur.Queues, stats.Queue{Name: "new", Messages: 1, Counts: stats.Counts{Delivered: 5}})
	cur.Messages = 80
	lines := renderTop(f, 0, 0)
	if got := rowOf(t, lines, "alpha"); strings.Join(got[1:5], " ") != "9 10 10 5.0" {
		t.Errorf("alpha: %v, want 9 messages, IN/S 10, OUT/S 10, ACK/S 5.0", got)
	}
	if got := rowOf(t, lines, "beta"); strings.Join(got[2:5], " ") != "- - -" {
		t.Errorf("beta, counters restarted: %v, want no rates", got)
	}
	if got := rowOf(t, lines, "group"); strings.Join(got[2:6], " ") != "20 1000 1000 0" {
		t.Errorf("group audit: %v, want 20 messages, IN/S 1000, OUT/S 1000, ACK/S 0", got)
	}
	if got := rowOf(t, lines, "new"); strings.Join(got[2:5], " ") != "- - -" {
		t.Errorf("new queue: %v, want no rates", got)
	}
	if l := lines[indexOf(t, lines, "messages ")].Text; !strings.HasPrefix(l, "messages 80 (+10/s)") {
		t.Errorf("totals: %q, want messages 80 (+10/s)", l)
	}
	// A purge: the estimate of stores never goes below 0.
	f = topTestFrame()
	f.Prev, f.Elapsed = topTestFrame().Cur, time.Second
	f.Cur.Queues[1].Messages = 0
	if got := rowOf(t, renderTop(f, 0, 0), "beta"); got[2] != "0" {
		t.Errorf("beta purged: IN/S %s, want 0", got[2])
	}
}

// TestRenderTopAlerts: what is at or near a limit, or failed, is marked
// "!" and as an alert, and nothing else is.
func TestRenderTopAlerts(t *testing.T) {
	f := topTestFrame()
	f.Cur.Descriptors = 799
	for _, l := range renderTop(f, 0, 0) {
		if l.Alert {
			t.Errorf("79.9%% of the descriptors: alert %q", l.Text)
		}
	}
	f.Cur.Descriptors = 800
	f.Cur.Queues = append(f.Cur.Queues,
		stats.Queue{Name: "full", Messages: 1, Blocked: 2},
		stats.Queue{Name: "alpha.dlq", Messages: 3},
		stats.Queue{Name: "empty.dlq"})
	f.Cur.Durable = &stats.Durable{Dir: "/var/lib/machq", Queues: "*", Sync: stats.SyncEveryStore, Failed: "write: no space left on device"}
	f.Cur.QueuesOmitted = 7
	lines := renderTop(f, 0, 0)
	alerted := func(prefix string) bool {
		t.Helper()
		l := lines[indexOf(t, lines, prefix)]
		return l.Alert && strings.HasPrefix(l.Text, "!")
	}
	for _, p := range []string{"descriptors 800 of 1000 (80%)", "full ", "alpha.dlq ", "durable FAILED: write: no space left", "7 named queues not listed"} {
		if !alerted(p) {
			t.Errorf("%q is not marked:\n%s", p, joinLines(lines))
		}
	}
	for _, p := range []string{"empty.dlq ", "alpha ", "beta "} {
		if alerted(p) {
			t.Errorf("%q is marked:\n%s", p, joinLines(lines))
		}
	}
	if l := lines[indexOf(t, lines, "full ")].Text; !strings.Contains(l, "2 stores wait for room") {
		t.Errorf("full queue's row says not why: %q", l)
	}
}

// TestRenderTopDown: a server gone is said first, with where the
// figures shown come from.
func TestRenderTopDown(t *testing.T) {
	f := topTestFrame()
	f.Down, f.DownSince = errors.New("machq: no server at /run/machq/machq.sock"), f.Now
	lines := renderTop(f, 0, 0)
	if !lines[1].Alert || !strings.HasPrefix(lines[1].Text, "! NO SERVER since 15:04:05: no server at") {
		t.Errorf("down: line 1 is %q", lines[1].Text)
	}
	if !strings.Contains(lines[2].Text, "its last, from 15:04:05") {
		t.Errorf("down: line 2 is %q, want where the figures are from", lines[2].Text)
	}
	// Never connected: the header and the failure only.
	f = &topFrame{Now: f.Now, Interval: time.Second, Server: topServer{Path: "/s"}, Down: errors.New("no server"), DownSince: f.Now}
	if lines := renderTop(f, 0, 0); len(lines) != 2 {
		t.Errorf("never connected:\n%s", joinLines(lines))
	}
}

// TestRenderTopFits: the view fits any window, deepest queues kept,
// saying what it leaves out.
func TestRenderTopFits(t *testing.T) {
	f := topTestFrame()
	for i := range 50 {
		f.Cur.Queues = append(f.Cur.Queues, stats.Queue{Name: fmt.Sprintf("queue-with-a-rather-long-name-%02d-and-more", i), Messages: 100 + i})
	}
	for i := range 20 {
		f.Cur.Users = append(f.Cur.Users, stats.User{UID: uint32(2000 + i)})
	}
	full := renderTop(f, 0, 0)
	head := len(topHeader(f))
	for _, size := range []struct{ w, h int }{{120, 40}, {80, 24}, {40, 12}, {60, 9}, {60, 8}, {20, 5}, {200, 200}, {10, 1}} {
		lines := renderTop(f, size.w, size.h)
		// Room for a cut section: the deepest queue is shown.
		if size.h-head >= minSection && !strings.Contains(lines[head+2].Text, "149") {
			t.Errorf("%dx%d: the row after the queues' header is %q, want the deepest queue's", size.w, size.h, lines[head+2].Text)
		}
		if len(lines) > size.h {
			t.Errorf("%dx%d: %d lines", size.w, size.h, len(lines))
		}
		for _, l := range lines {
			if n := utf8.RuneCountInString(l.Text); n > size.w {
				t.Errorf("%dx%d: a line of %d characters: %q", size.w, size.h, n, l.Text)
			}
		}
		if size.h >= len(full) {
			if len(lines) != len(full) {
				t.Errorf("%dx%d: %d lines, want all %d", size.w, size.h, len(lines), len(full))
			}
			continue
		}
		if size.h < 20 {
			continue
		}
		// Cut: the deepest queues first, and each section says how much
		// it leaves out.
		var more []string
		for _, l := range lines {
			if strings.Contains(l.Text, "more") && strings.Contains(l.Text, "window is too small") {
				more = append(more, l.Text)
			}
		}
		if len(more) != 2 {
			t.Errorf("%dx%d: %d lines saying what is left out, want 2 (queues and users):\n%s", size.w, size.h, len(more), joinLines(lines))
		}
		if i := indexOf(t, lines, "queue-with-"); !strings.Contains(lines[i].Text, "149") {
			t.Errorf("%dx%d: first queue row %q, want the deepest (149 messages)", size.w, size.h, lines[i].Text)
		}
	}
	// With limits, and marks in the header and on queues and users:
	// every line still fits.
	f.Cur.Limits = topTestLimits()
	f.Cur.Limits.MaxStoredMessages, f.Cur.Limits.MaxQueueMessages, f.Cur.Limits.MaxConnectionsPerUID = 60, 120, 2
	for _, size := range []struct{ w, h int }{{120, 40}, {80, 24}, {40, 12}, {20, 5}} {
		lines := renderTop(f, size.w, size.h)
		if len(lines) > size.h {
			t.Errorf("with limits, %dx%d: %d lines", size.w, size.h, len(lines))
		}
		marks := 0
		for _, l := range lines {
			if n := utf8.RuneCountInString(l.Text); n > size.w {
				t.Errorf("with limits, %dx%d: a line of %d characters: %q", size.w, size.h, n, l.Text)
			}
			if l.Alert {
				marks++
			}
		}
		if size.h >= 24 && marks < 3 {
			t.Errorf("with limits, %dx%d: %d marks, want the total, queues and a user:\n%s", size.w, size.h, marks, joinLines(lines))
		}
	}
	if got := truncate("abcdef", 4); got != "abc~" {
		t.Errorf("truncate: %q", got)
	}
	if got := truncate("abc", 3); got != "abc" {
		t.Errorf("truncate: %q", got)
	}
}

// TestTopFormats: rates, byte counts and the escape sequences drawn.
func TestTopFormats(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		want string
	}{{0, "0"}, {0.5, "0.5"}, {12.4, "12"}, {1234, "1234"}, {12345, "12.3k"}, {123456, "123k"}, {1.5e6, "1.5M"}, {-3, "-3.0"}} {
		if got := fmtRate(tc.v); got != tc.want {
			t.Errorf("fmtRate(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
	for _, tc := range []struct {
		n    int64
		want string
	}{{0, "0B"}, {1023, "1023B"}, {1536, "1.5KiB"}, {64 << 20, "64MiB"}, {4 << 30, "4.0GiB"}} {
		if got := fmtBytes(tc.n); got != tc.want {
			t.Errorf("fmtBytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
	// Drawing: each line at its row, alerts highlighted, the rest of
	// the window cleared.
	got := drawLines([]topLine{{Text: "a"}, {Text: "! b", Alert: true}}, 5)
	want := "\x1b[1;1H\x1b[2Ka\x1b[2;1H\x1b[2K" + escAlert + "! b" + escReset + "\x1b[3;1H\x1b[J"
	if got != want {
		t.Errorf("drawLines = %q, want %q", got, want)
	}
}

// topTestLimits returns limits far above what topTestFrame holds: 1<<40
// each.
func topTestLimits() *stats.Limits {
	const n = 1 << 40
	return &stats.Limits{
		MaxConnections: n, MaxConnectionsPerUID: n,
		MaxStoredMessages: n, MaxStoredBytes: n, MaxStoredPages: n,
		MaxStoredMessagesPerUID: n, MaxStoredBytesPerUID: n, MaxStoredPagesPerUID: n,
		MaxQueueMessages: n, MaxQueueBytes: n,
		MaxPrivateMessages: n, MaxPrivateBytes: n,
		MaxQueues: n, MaxQueuesPerUID: n,
		MaxWaiting: n, MaxWaitingTotal: n, MaxWaitingPerUID: n,
		MaxGroups: n, MaxGroupsPerUID: n,
		MaxPending: n,
	}
}

// TestRenderTopLimitsShown: a server's totals are shown against its
// limits, with the named queues and consumer groups; a limit of -1 is
// not shown, and the view of a server that reports no limits is as it
// was.
func TestRenderTopLimitsShown(t *testing.T) {
	f := topTestFrame()
	f.Cur.Waiting, f.Cur.Pages = 5, 2
	f.Cur.Limits = topTestLimits()
	l := f.Cur.Limits
	l.MaxConnections, l.MaxWaitingTotal = 4096, 100
	l.MaxStoredMessages, l.MaxStoredBytes, l.MaxStoredPages = 1000, 64<<20, 10
	l.MaxQueues, l.MaxGroups = 300, 10
	lines := renderTop(f, 0, 0)
	for _, want := range []string{
		"clients 3 of 4096 (0%)  waiting 5 of 100 (5%)  goroutines 9  max message 4.0GiB",
		"messages 60 (-/s) of 1000 (6%)  bytes 5.9KiB of 64MiB (0%)  pages 2 of 10 (20%)  pending 0",
		"descriptors 10 of 1000 (1%)  named queues 3 of 300 (1%)  consumer groups 1 of 10 (10%)",
	} {
		if lines[indexOf(t, lines, want)].Alert {
			t.Errorf("%q is marked", want)
		}
	}
	// Queues left out of the answer count; their groups are unknown.
	f.Cur.QueuesOmitted = 4
	lines = renderTop(f, 0, 0)
	indexOf(t, lines, "descriptors 10 of 1000 (1%)  named queues 7 of 300 (2%)  consumer groups 1+ of 10 (10%)")
	f.Cur.QueuesOmitted = 0
	// When the descriptors' line is an alert, the counts have a line of
	// their own, not marked.
	f.Cur.Descriptors = 900
	lines = renderTop(f, 0, 0)
	if l := lines[indexOf(t, lines, "descriptors 900 of 1000 (90%): ")]; !l.Alert || strings.Contains(l.Text, "named queues") {
		t.Errorf("descriptors near their limit: %q", l.Text)
	}
	if l := lines[indexOf(t, lines, "named queues 3 of 300 (1%)  consumer groups 1 of 10 (10%)")]; l.Alert {
		t.Errorf("%q is marked", l.Text)
	}
	f.Cur.Descriptors = 10

	// -1: no limit, none shown.
	l.MaxConnections, l.MaxStoredMessages, l.MaxGroups = -1, -1, -1
	lines = renderTop(f, 0, 0)
	indexOf(t, lines, "clients 3  waiting 5 of 100 (5%)")
	indexOf(t, lines, "messages 60 (-/s)  bytes 5.9KiB of 64MiB")
	if l := lines[indexOf(t, lines, "descriptors ")].Text; l != "descriptors 10 of 1000 (1%)  named queues 3 of 300 (1%)  consumer groups 1" {
		t.Errorf("without a limit on groups: %q", l)
	}

	// No limits reported (an older server): the view as before limits.
	f.Cur.Limits = nil
	lines = renderTop(f, 0, 0)
	indexOf(t, lines, "clients 3  waiting 5  goroutines 9")
	indexOf(t, lines, "messages 60 (-/s)  bytes 5.9KiB  pages 2  pending 0  unsent 0")
	for _, l := range lines {
		if strings.Contains(l.Text, " of ") && l.Text != "descriptors 10 of 1000 (1%)" || strings.Contains(l.Text, "named queues") {
			t.Errorf("limits shown without limits reported: %q", l.Text)
		}
	}
}

// topLimitCase is one figure of the view judged against one limit.
type topLimitCase struct {
	flag string // the limit's machqd flag, named in the mark
	row  string // the table row marked; "": an alert line of the header
	// set sets the figure judged to n, limit the limit it is judged
	// against: 100 times scale, the figure n times scale.
	set   func(st *stats.Stats, n int64)
	limit func(l *stats.Limits) *int64
	scale int64
}

// mebi is the scale of the cases on bytes: above what topTestFrame's
// queues hold.
const mebi = 1 << 20

var topLimitCases = []topLimitCase{
	{"max-stored-messages", "", func(st *stats.Stats, n int64) { st.Messages = n },
		func(l *stats.Limits) *int64 { return &l.MaxStoredMessages }, 1},
	{"max-stored-bytes", "", func(st *stats.Stats, n int64) { st.Bytes = n },
		func(l *stats.Limits) *int64 { return &l.MaxStoredBytes }, mebi},
	{"max-stored-pages", "", func(st *stats.Stats, n int64) { st.Pages = n },
		func(l *stats.Limits) *int64 { return &l.MaxStoredPages }, 1},
	{"max-connections", "", func(st *stats.Stats, n int64) { st.Clients = int(n) },
		func(l *stats.Limits) *int64 { return &l.MaxConnections }, 1},
	{"max-waiting-total", "", func(st *stats.Stats, n int64) { st.Waiting = n },
		func(l *stats.Limits) *int64 { return &l.MaxWaitingTotal }, 1},
	// Named queues: the 3 listed, and those left out of the answer.
	{"max-queues", "", func(st *stats.Stats, n int64) {
		for i := range 10 {
			st.Queues = append(st.Queues, stats.Queue{Name: fmt.Sprintf("more-%d", i)})
		}
		st.QueuesOmitted = int(n) - len(st.Queues)
	}, func(l *stats.Limits) *int64 { return &l.MaxQueues }, 1},
	// Consumer groups: events' one and those of another queue.
	{"max-groups", "", func(st *stats.Stats, n int64) {
		q := stats.Queue{Name: "fanned"}
		for i := range n - 1 {
			q.Groups = append(q.Groups, stats.Group{Name: fmt.Sprint(i)})
		}
		st.Queues = append(st.Queues, q)
	}, func(l *stats.Limits) *int64 { return &l.MaxGroups }, 1},
	// A queue's line counts its pending and delayed messages.
	{"max-queue-messages", "alpha", func(st *stats.Stats, n int64) {
		q := &st.Queues[0]
		q.Messages, q.Pending, q.Delayed = 50, 20, int(n)-70
	}, func(l *stats.Limits) *int64 { return &l.MaxQueueMessages }, 1},
	{"max-queue-bytes", "alpha", func(st *stats.Stats, n int64) { st.Queues[0].Bytes = n },
		func(l *stats.Limits) *int64 { return &l.MaxQueueBytes }, mebi},
	// A consumer group's line is held to the queue's limits.
	{"max-queue-messages", "group", func(st *stats.Stats, n int64) {
		g := &st.Queues[2].Groups[0]
		g.Messages, g.Pending = int(n)-1, 1
	}, func(l *stats.Limits) *int64 { return &l.MaxQueueMessages }, 1},
	{"max-queue-bytes", "group", func(st *stats.Stats, n int64) { st.Queues[2].Groups[0].Bytes = n },
		func(l *stats.Limits) *int64 { return &l.MaxQueueBytes }, mebi},
	{"max-connections-per-uid", "1000", func(st *stats.Stats, n int64) { st.Users[0].Connections = n },
		func(l *stats.Limits) *int64 { return &l.MaxConnectionsPerUID }, 1},
	{"max-stored-messages-per-uid", "1000", func(st *stats.Stats, n int64) { st.Users[0].Messages = n },
		func(l *stats.Limits) *int64 { return &l.MaxStoredMessagesPerUID }, 1},
	{"max-stored-bytes-per-uid", "1000", func(st *stats.Stats, n int64) { st.Users[0].Bytes = n },
		func(l *stats.Limits) *int64 { return &l.MaxStoredBytesPerUID }, mebi},
	{"max-stored-pages-per-uid", "1000", func(st *stats.Stats, n int64) { st.Users[0].Pages = n },
		func(l *stats.Limits) *int64 { return &l.MaxStoredPagesPerUID }, 1},
	{"max-queues-per-uid", "1000", func(st *stats.Stats, n int64) { st.Users[0].Queues = int(n) },
		func(l *stats.Limits) *int64 { return &l.MaxQueuesPerUID }, 1},
	{"max-waiting-per-uid", "1000", func(st *stats.Stats, n int64) { st.Users[0].Waiting = n },
		func(l *stats.Limits) *int64 { return &l.MaxWaitingPerUID }, 1},
}

// TestRenderTopLimitMarks: each figure at 80% of its limit or more is
// marked "!", naming the limit's flag (in the header an alert line of its
// own, in a table the figure's row with a note); at 79% it is not, nor
// with no limit (-1) or no limits reported.
func TestRenderTopLimitMarks(t *testing.T) {
	for _, c := range topLimitCases {
		t.Run(c.flag+"/"+c.row, func(t *testing.T) {
			// render returns the view with the figure at n and the
			// limit at limit; nil limits: none reported.
			scale := c.scale
			render := func(n, limit int64, reported bool) []topLine {
				f := topTestFrame()
				f.Cur.Limits = topTestLimits()
				*c.limit(f.Cur.Limits) = max(limit*scale, -1)
				c.set(f.Cur, n*scale)
				if !reported {
					f.Cur.Limits = nil
				}
				return renderTop(f, 0, 0)
			}
			named := "machqd --" + c.flag + ")"
			// marked returns the lines naming the flag, failing if one
			// is not an alert, or is in the wrong place.
			marked := func(lines []topLine) []string {
				t.Helper()
				var got []string
				for _, l := range lines {
					if !strings.Contains(l.Text, named) {
						continue
					}
					got = append(got, l.Text)
					if !l.Alert || !strings.HasPrefix(l.Text, "!") {
						t.Errorf("%q names the limit and is not marked", l.Text)
					}
					if f := strings.Fields(strings.TrimPrefix(l.Text, "!")); c.row != "" && f[0] != c.row {
						t.Errorf("%q: want the mark in row %s", l.Text, c.row)
					}
				}
				return got
			}
			lines := render(80, 100, true)
			if got := marked(lines); len(got) != 1 || !strings.Contains(got[0], "(80%") {
				t.Errorf("at 80%%: lines naming --%s: %q, want one saying 80%%\n%s", c.flag, got, joinLines(lines))
			}
			if c.row != "" && !lines[indexOf(t, lines, c.row+" ")].Alert {
				t.Errorf("at 80%%: row %s not marked", c.row)
			}
			for _, tc := range []struct {
				what     string
				n, limit int64
				reported bool
			}{{"at 79%", 79, 100, true}, {"without a limit (-1)", 1000, -1, true}, {"without limits reported", 1000, 100, false}} {
				lines := render(tc.n, tc.limit, tc.reported)
				if got := marked(lines); len(got) != 0 {
					t.Errorf("%s: lines naming --%s: %q", tc.what, c.flag, got)
				}
				if c.row != "" && lines[indexOf(t, lines, c.row+" ")].Alert {
					t.Errorf("%s: row %s marked", tc.what, c.row)
				}
			}
		})
	}
}
