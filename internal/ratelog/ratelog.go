// Package ratelog bounds how fast a logger writes: a slog.Handler that
// passes at most a given number of records of one message per second and
// then says how many it left out, so that a flood of hostile connections
// or failed requests cannot flood the journal or fill a disk.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Handler passes records to an inner handler, at most Burst records of
// one level and message per second; the rest are counted, and once a
// second has passed a summary record (at warn level) says how many of
// which message were left out. Handlers made by WithAttrs and WithGroup
// share the same bounds. It is safe for concurrent use.
type Handler struct {
	inner slog.Handler
	st    *state
}

type key struct {
	level slog.Level
	msg   string
}

type state struct {
	burst int
	now   func() time.Time
	root  slog.Handler // where a summary goes when no record brings it

	armed bool // a timer will write the summary of this second

	mu         sync.Mutex
	window     time.Time // start of the current second
	seen       map[key]int
	suppressed map[key]int
}

// maxKeys bounds the messages counted in one second; records of further
// messages pass uncounted (messages are the program's own strings, so
// there are few).
const maxKeys = 4096

// New returns a Handler over inner passing at most burst records of one
// level and message per second.
func New(inner slog.Handler, burst int) *Handler {
	return newWithClock(inner, burst, time.Now)
}

func newWithClock(inner slog.Handler, burst int, now func() time.Time) *Handler {
	return &Handler{inner: inner, st: &state{
		burst: burst, now: now, root: inner,
		seen: make(map[key]int), suppressed: make(map[key]int),
	}}
}

// Enabled reports whether the inner handler takes records of level.
func (h *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

// Handle passes r on unless its message has had its share this second.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	pass, summary := h.st.admit(key{r.Level, r.Message})
	for _, s := range summary {
		h.inner.Handle(ctx, s)
	}
	if !pass {
		return nil
	}
	return h.inner.Handle(ctx, r)
}

// admit counts k and reports whether its record may pass, with the
// summaries of the second that just ended, if one did.
func (s *state) admit(k key) (bool, []slog.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var summary []slog.Record
	if now.Sub(s.window) >= time.Second {
		summary = s.summarize(now)
	}
	n, ok := s.seen[k]
	if !ok && len(s.seen) >= maxKeys {
		return true, summary
	}
	s.seen[k] = n + 1
	if n < s.burst {
		return true, summary
	}
	s.suppressed[k]++
	if !s.armed {
		// If nothing is logged after the flood, the summary still
		// comes, once its second is over.
		s.armed = true
		time.AfterFunc(s.window.Add(time.Second).Sub(now), s.late)
	}
	return false, summary
}

// summarize returns the summaries of the second that ended and begins
// the next at now; s.mu is held.
func (s *state) summarize(now time.Time) []slog.Record {
	var summary []slog.Record
	for sk, n := range s.suppressed {
		r := slog.NewRecord(now, slog.LevelWarn, "log records left out: more than the most per second of one message", 0)
		r.AddAttrs(slog.String("message", sk.msg), slog.String("level", sk.level.String()), slog.Int("left_out", n), slog.Int("per_second", s.burst))
		summary = append(summary, r)
	}
	clear(s.seen)
	clear(s.suppressed)
	s.window = now
	return summary
}

// late writes the summary of a second that ended with records left out
// and no record since.
func (s *state) late() {
	s.mu.Lock()
	s.armed = false
	var summary []slog.Record
	if now := s.now(); len(s.suppressed) > 0 {
		if now.Sub(s.window) >= time.Second {
			summary = s.summarize(now)
		} else {
			// A record began another second, which left out
			// records in its turn.
			s.armed = true
			time.AfterFunc(s.window.Add(time.Second).Sub(now), s.late)
		}
	}
	s.mu.Unlock()
	for _, r := range summary {
		s.root.Handle(context.Background(), r)
	}
}

// WithAttrs returns a Handler whose records carry attrs, sharing h's
// bounds.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &Handler{inner: h.inner.WithAttrs(attrs), st: h.st}
}

// WithGroup returns a Handler whose attributes go in group name, sharing
// h's bounds.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{inner: h.inner.WithGroup(name), st: h.st}
}

var _ slog.Handler = (*Handler)(nil)
