package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/bench/floor"
)

// zeroCopy measures the zero-copy view: the producer fills a page buffer
// (not timed), the round trip runs from the filled page to the consumer
// holding a mapping of it, and the consumer then reads it (not timed).
func (e *environment) zeroCopy(ctx context.Context) error {
	memfdPath, ok := e.floors[floor.Memfd]
	if !ok || !e.wanted(sysMachq) {
		return nil
	}
	for _, size := range e.cfg.Sizes {
		if size == 0 {
			continue // nothing to map
		}
		want := payload(size)
		fill := func(b []byte) { copy(b, want) }

		c, err := e.dialMachq(ctx)
		if err != nil {
			return err
		}
		fc, err := floor.Dial(memfdPath, floor.Memfd)
		if err != nil {
			c.Close()
			return err
		}
		runs := []*samples{
			{sys: &system{name: sysMachq}, chk: newChecker(want)},
			{sys: &system{name: sysMemfd}, chk: newChecker(want)},
		}
		err = e.measure(ctx, size, runs, func(r *samples) (time.Duration, error) {
			if r.sys.name == sysMachq {
				return machqPageRoundTrip(ctx, c, size, fill, r.chk.got)
			}
			ph, err := fc.PageRoundTrip(size, fill, r.chk.got)
			return ph.Seal + ph.Send + ph.Store + ph.Retrieve + ph.Map, err
		})
		c.Close()
		fc.Close()
		if err != nil {
			return err
		}
		e.report.Latency = append(e.report.Latency, summarize(ZeroCopy, size, runs)...)
	}
	return nil
}

// machqPageRoundTrip sends a page of size bytes filled by fill with
// SendPage and retrieves it, timing from the filled page to the mapping.
func machqPageRoundTrip(ctx context.Context, c *machq.Client, size int, fill, got func([]byte)) (time.Duration, error) {
	p, err := machq.NewPage(size)
	if err != nil {
		return 0, err
	}
	fill(p.Bytes())
	start := time.Now()
	if _, err := c.SendPage(ctx, "", p); err != nil {
		return 0, err
	}
	m, err := c.Retrieve(ctx, "")
	if m != nil {
		defer m.Close()
	}
	if err != nil {
		return 0, err
	}
	b := m.Bytes()
	d := time.Since(start)
	if b == nil {
		return 0, fmt.Errorf("message %d could not be mapped", m.Seq)
	}
	got(b)
	return d, nil
}
