package bench

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"
)

// maxItersPerRound caps the round trips of one system in one round.
const maxItersPerRound = 20000

// payload returns n bytes of a pattern that differs from one size to the
// next, so that a system returning a stale payload is caught.
func payload(n int) []byte {
	b := make([]byte, n)
	x := uint32(n)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// checker verifies what a system returns, reading every byte of it each
// time: a round trip ends with the receiver having read the payload, so
// that a mapping whose pages are faulted in on first touch pays for it.
type checker struct {
	want []byte
	err  error
}

func newChecker(want []byte) *checker { return &checker{want: want} }

func (c *checker) got(b []byte) {
	switch {
	case c.err != nil:
	case len(b) != len(c.want):
		c.err = fmt.Errorf("received %d bytes, stored %d", len(b), len(c.want))
	case !bytes.Equal(b, c.want):
		c.err = fmt.Errorf("received payload differs from the one stored")
	}
}

// settler is a target that may leave work running in the background (a
// machq client allocating its next spare page), which settle finishes.
type settler interface {
	settle() error
}

// samples collects one system's round-trip times at one size.
type samples struct {
	sys *system
	t   target
	chk *checker
	est time.Duration // estimated time of one round trip
	d   []time.Duration
}

// latency measures every system's end-to-end round trip at each size.
func (e *environment) latency(ctx context.Context, sizes []int) error {
	for _, size := range sizes {
		want := payload(size)
		var runs []*samples
		var skipped []Latency
		for _, s := range e.systems {
			if size > s.maxSize {
				skipped = append(skipped, Latency{System: s.name, View: EndToEnd, Size: size, Skipped: s.limit})
				continue
			}
			t, err := s.dial(ctx, size)
			if err != nil {
				closeAll(runs)
				return fmt.Errorf("bench: %s at %s: %w", s.name, fmtSize(size), err)
			}
			runs = append(runs, &samples{sys: s, t: t, chk: newChecker(want)})
		}
		err := e.measure(ctx, size, runs, func(r *samples) (time.Duration, error) {
			start := time.Now()
			err := r.t.RoundTrip(want, r.chk.got)
			return time.Since(start), err
		})
		closeAll(runs)
		if err != nil {
			return err
		}
		rows := append(skipped, summarize(EndToEnd, size, runs)...)
		slices.SortStableFunc(rows, func(a, b Latency) int { return systemRank(a.System) - systemRank(b.System) })
		e.report.Latency = append(e.report.Latency, rows...)
	}
	return nil
}

// systemRank orders report rows as SystemNames lists the systems.
func systemRank(name string) int { return slices.Index(SystemNames(), name) }

func closeAll(runs []*samples) {
	for _, r := range runs {
		r.t.Close()
	}
}

// measure runs one of each system's round trips, timed by once, in
// rounds: within a round each system runs its share back to back, and
// the order of the systems rotates from one round to the next.
func (e *environment) measure(ctx context.Context, size int, runs []*samples, once func(*samples) (time.Duration, error)) error {
	budget := e.cfg.Time
	// Warm up each system and estimate its round trip.
	for _, r := range runs {
		var total time.Duration
		n := 0
		for n < 50 && total < budget/10 {
			d, err := once(r)
			if err == nil {
				err = r.chk.err
			}
			if err != nil {
				return fmt.Errorf("bench: %s at %s: %w", r.sys.name, fmtSize(size), err)
			}
			total += d
			n++
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		r.est = total / time.Duration(n)
	}
	rounds := e.cfg.Rounds
	minPerRound := (e.cfg.MinIters + rounds - 1) / rounds
	for round := range rounds {
		for i := range runs {
			r := runs[(i+round)%len(runs)]
			k := minPerRound
			if r.est > 0 {
				k = max(k, int(budget/time.Duration(rounds)/r.est))
			}
			k = min(k, maxItersPerRound)
			for range k {
				d, err := once(r)
				if err == nil {
					err = r.chk.err
				}
				if err != nil {
					return fmt.Errorf("bench: %s at %s: %w", r.sys.name, fmtSize(size), err)
				}
				r.d = append(r.d, d)
			}
			if st, ok := r.t.(settler); ok {
				// Untimed: work a system left running in the
				// background must not slow the next one down.
				if err := st.settle(); err != nil {
					return fmt.Errorf("bench: %s at %s: %w", r.sys.name, fmtSize(size), err)
				}
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		e.progress("%s %s: round %d/%d", fmtSize(size), viewOf(runs), round+1, rounds)
	}
	return nil
}

func viewOf(runs []*samples) string {
	names := make([]string, len(runs))
	for i, r := range runs {
		names[i] = r.sys.name
	}
	return fmt.Sprint(names)
}

// summarize turns samples into report rows, with ratios to machq and,
// for the ack-mode systems, to machq-ack.
func summarize(view string, size int, runs []*samples) []Latency {
	var rows []Latency
	var base, ackBase time.Duration
	for _, r := range runs {
		med, p99 := percentiles(r.d)
		l := Latency{System: r.sys.name, View: view, Size: size, N: len(r.d), Median: Duration(med), P99: Duration(p99)}
		if med > 0 {
			l.MBps = float64(size) / med.Seconds() / 1e6
		}
		switch r.sys.name {
		case sysMachq:
			base = med
		case sysMachqAck:
			ackBase = med
		}
		rows = append(rows, l)
	}
	for i := range rows {
		if base > 0 {
			rows[i].Ratio = float64(rows[i].Median) / float64(base)
		}
		if ackBase > 0 && slices.Contains(ackSystems, rows[i].System) {
			rows[i].RatioAck = float64(rows[i].Median) / float64(ackBase)
		}
	}
	return rows
}

// percentiles returns the median and the 99th percentile of d.
func percentiles(d []time.Duration) (median, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	median = s[len(s)/2]
	if len(s)%2 == 0 {
		median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	i := (len(s)*99 + 99) / 100 // ceil(0.99 n), 1-based
	return median, s[min(i, len(s))-1]
}
