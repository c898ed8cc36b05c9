package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// throughputSize is the payload of the small-message throughput test.
const throughputSize = 64

// throughputSystems are the systems the throughput test compares: machq,
// machq spinning, and the systems its small-message targets name.
var throughputSystems = []string{sysMachq, sysMachqSpin, sysMachqMetrics, sysMachqAck, sysCopy, sysRedis, sysRedisStreams, sysMqueue}

// throughput measures small-message round trips per second: with each
// client count in Config.Clients one request at a time, and with one
// client pipelining Config.Depth requests.
func (e *environment) throughput(ctx context.Context) error {
	type shape struct{ clients, depth int }
	var shapes []shape
	for _, c := range e.cfg.Clients {
		shapes = append(shapes, shape{c, 1})
	}
	if e.cfg.Depth > 1 {
		shapes = append(shapes, shape{1, e.cfg.Depth})
	}
	var systems []*system
	for _, name := range throughputSystems {
		for _, s := range e.systems {
			if s.name == name && s.maxSize >= throughputSize {
				systems = append(systems, s)
			}
		}
	}
	want := payload(throughputSize)
	for _, sh := range shapes {
		counts := make([]int64, len(systems))
		elapsed := make([]time.Duration, len(systems))
		skipped := make([]string, len(systems))
		per := e.cfg.Time / time.Duration(e.cfg.Rounds)
		for round := range e.cfg.Rounds {
			for i := range systems {
				k := (i + round) % len(systems)
				if skipped[k] != "" {
					continue
				}
				n, d, err := e.load(ctx, systems[k], sh.clients, sh.depth, want, per)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					if systems[k].name == sysMachq {
						return fmt.Errorf("bench: throughput of %s with %d clients, depth %d: %w", systems[k].name, sh.clients, sh.depth, err)
					}
					skipped[k] = err.Error()
					continue
				}
				counts[k] += n
				elapsed[k] += d
			}
		}
		var base, ackBase float64
		rows := make([]Throughput, len(systems))
		for k, s := range systems {
			rows[k] = Throughput{System: s.name, Size: throughputSize, Clients: sh.clients, Depth: sh.depth, Skipped: skipped[k]}
			if skipped[k] == "" && elapsed[k] > 0 {
				rows[k].RoundTrips = counts[k]
				rows[k].PerSecond = float64(counts[k]) / elapsed[k].Seconds()
			}
			switch s.name {
			case sysMachq:
				base = rows[k].PerSecond
			case sysMachqAck:
				ackBase = rows[k].PerSecond
			}
		}
		for k := range rows {
			if rows[k].PerSecond > 0 {
				rows[k].Ratio = base / rows[k].PerSecond
				if slices.Contains(ackSystems, rows[k].System) {
					rows[k].RatioAck = ackBase / rows[k].PerSecond
				}
			}
		}
		e.report.Throughput = append(e.report.Throughput, rows...)
		e.progress("throughput: %d clients, depth %d", sh.clients, sh.depth)
	}
	return nil
}

// load runs clients connections of s, each doing round trips of p (depth
// at a time) for about d, and returns the round trips completed and the
// time they took.
func (e *environment) load(ctx context.Context, s *system, clients, depth int, p []byte, d time.Duration) (int64, time.Duration, error) {
	ts := make([]target, 0, clients)
	defer func() {
		for _, t := range ts {
			t.Close()
		}
	}()
	for range clients {
		t, err := s.dial(ctx, len(p))
		if err != nil {
			return 0, 0, err
		}
		ts = append(ts, t)
	}
	var done atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make([]error, clients)
	start := time.Now()
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	defer timer.Stop()
	for i, t := range ts {
		wg.Go(func() {
			chk := newChecker(p)
			for !stop.Load() && ctx.Err() == nil {
				var err error
				if depth > 1 {
					err = t.Pipeline(p, depth, chk.got)
				} else {
					err = t.RoundTrip(p, chk.got)
				}
				if err == nil {
					err = chk.err
				}
				if err != nil {
					errs[i] = err
					stop.Store(true)
					return
				}
				done.Add(int64(depth))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, err := range errs {
		if err != nil {
			return 0, 0, err
		}
	}
	return done.Load(), elapsed, nil
}
