package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Placements of the small-message comparison (Config.Pin).
const (
	// PinUnpinned leaves every process where the scheduler puts it.
	PinUnpinned = "unpinned"
	// PinPinned runs the servers and peers on one CPU and every thread
	// of the benchmark on another.
	PinPinned = "pinned"
	// PinBoth measures the small-message comparison both ways.
	PinBoth = "both"
)

// PinModes lists the values of Config.Pin.
func PinModes() []string { return []string{PinUnpinned, PinPinned, PinBoth} }

// pinMaxSize is the largest payload whose round trips are measured
// pinned: the small messages, where a wake-up across CPUs is a large
// part of a round trip.
const pinMaxSize = 4 << 10

// placement is where the pinned part runs: the servers on server, the
// benchmark on client, both among the CPUs of orig, the affinity the
// benchmark had, which it gets back afterwards.
type placement struct {
	server, client int
	orig           unix.CPUSet
}

// cpus returns the CPUs in set, in order.
func cpus(set *unix.CPUSet) []int {
	var out []int
	for cpu := range len(set) * 64 {
		if set.IsSet(cpu) {
			out = append(out, cpu)
		}
	}
	return out
}

// choosePlacement decides, from c.Pin, whether the small-message
// comparison runs unpinned, pinned or both, and where pinned; the zero
// Pin means both when this process may run on 2 CPUs or more and
// measures servers it starts, and unpinned otherwise, saying why in note.
func (c *Config) choosePlacement() (unpinned bool, pl *placement, note string, err error) {
	mode := c.Pin
	if mode != "" && !slices.Contains(PinModes(), mode) {
		return false, nil, "", fmt.Errorf("bench: unknown placement %q; choose from %s", mode, strings.Join(PinModes(), ", "))
	}
	var orig unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil {
		return false, nil, "", fmt.Errorf("bench: sched_getaffinity: %w", err)
	}
	allowed := cpus(&orig)
	why := ""
	switch {
	case c.Socket != "":
		why = "--socket measures a server the benchmark did not start, which it cannot place"
	case len(allowed) < 2:
		why = fmt.Sprintf("the benchmark may run on %d CPU, and pinning needs 2", len(allowed))
	}
	if mode == "" {
		if why != "" {
			return true, nil, "pinned: skipped: " + why, nil
		}
		mode = PinBoth
	}
	if mode == PinUnpinned {
		return true, nil, "", nil
	}
	if why != "" {
		return false, nil, "", fmt.Errorf("bench: cannot measure %s: %s", mode, why)
	}
	return mode == PinBoth, &placement{server: allowed[0], client: allowed[1], orig: orig}, "", nil
}

// onCPU runs f on a thread pinned to cpu, so that every process f starts
// runs on cpu, all its threads included: a child inherits the affinity
// of the thread that forks it, as under taskset. The thread has its
// affinity back before f's caller goes on.
func onCPU(cpu int, f func() error) error {
	// The Go runtime starts no thread from a locked one (it asks a
	// thread of its own), so the pinning stays on this one.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return fmt.Errorf("bench: sched_getaffinity: %w", err)
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("bench: pinning to CPU %d: %w", cpu, err)
	}
	err := f()
	if rerr := unix.SchedSetaffinity(0, &old); rerr != nil && err == nil {
		err = fmt.Errorf("bench: restoring the affinity of a thread: %w", rerr)
	}
	return err
}

// threads lists the threads of process pid (0: this one).
func threads(pid int) ([]int, error) {
	dir := "/proc/self/task"
	if pid != 0 {
		dir = fmt.Sprintf("/proc/%d/task", pid)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// setThreadsAffinity gives every thread of this process the affinity
// set, those started meanwhile included: it goes through the threads
// again until it finds none it has not set (a thread started later
// inherits set from the thread that starts it, which is set by then).
func setThreadsAffinity(set *unix.CPUSet) error {
	done := map[int]bool{}
	for pass := 0; ; pass++ {
		tids, err := threads(0)
		if err != nil {
			return fmt.Errorf("bench: listing this process's threads: %w", err)
		}
		changed := false
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, set); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("bench: setting the affinity of thread %d: %w", tid, err)
			}
			done[tid], changed = true, true
		}
		if !changed {
			return nil
		}
		if pass == 100 {
			return errors.New("bench: this process keeps starting threads; cannot set the affinity of them all")
		}
	}
}

// pinSelf pins every thread of this process to cpu, with GOMAXPROCS 1,
// as the Go runtime sets it for a program started on one CPU. restore
// gives every thread the affinity orig and GOMAXPROCS its default, or
// the value it had if the GOMAXPROCS environment variable set it.
func pinSelf(cpu int, orig *unix.CPUSet) (restore func() error, err error) {
	var set unix.CPUSet
	set.Set(cpu)
	prev := runtime.GOMAXPROCS(1)
	restore = func() error {
		err := setThreadsAffinity(orig)
		if os.Getenv("GOMAXPROCS") != "" {
			runtime.GOMAXPROCS(prev)
		} else {
			runtime.SetDefaultGOMAXPROCS()
		}
		return err
	}
	if err := setThreadsAffinity(&set); err != nil {
		restore()
		return nil, err
	}
	return restore, nil
}

// pinned measures the small-message comparison again, pinned: the
// end-to-end round trips at the sizes up to pinMaxSize and the
// small-message throughput, against servers and peers started afresh on
// pl.server, driven from this process with every thread on pl.client.
// The benchmark has its affinity back afterwards, and the pinned servers
// are stopped.
func (e *environment) pinned(ctx context.Context, pl *placement) error {
	var sizes []int
	for _, s := range e.cfg.Sizes {
		if s <= pinMaxSize {
			sizes = append(sizes, s)
		}
	}
	if len(sizes) == 0 && e.cfg.SkipThroughput {
		e.report.note("pinned: nothing to measure: no size up to %s, and the throughput test is skipped", fmtSize(pinMaxSize))
		return nil
	}
	dir := filepath.Join(e.dir, "pinned")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	// The pinned systems' notes repeat the unpinned ones: a report of
	// their own keeps them out.
	pe := &environment{cfg: e.cfg, dir: dir, report: &Report{}, label: "pinned "}
	defer pe.close()
	if err := onCPU(pl.server, func() error { return pe.start(ctx) }); err != nil {
		return err
	}
	restore, err := pinSelf(pl.client, &pl.orig)
	if err != nil {
		return err
	}
	err = pe.latency(ctx, sizes)
	if err == nil && !e.cfg.SkipThroughput {
		err = pe.throughput(ctx)
	}
	if rerr := restore(); err == nil {
		err = rerr
	}
	if err != nil {
		return err
	}
	p := &Pinned{ServerCPU: pl.server, ClientCPU: pl.client, MaxSize: pinMaxSize,
		Latency: pe.report.Latency, Throughput: pe.report.Throughput}
	e.report.Pinned = p
	for _, line := range p.summary(e.report) {
		e.progress("%s", line)
	}
	return nil
}
