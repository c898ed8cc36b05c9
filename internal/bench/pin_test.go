package bench

import (
	"bytes"
	"context"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/testtool"
)

// allowed returns the CPUs this thread may run on, and their set.
func allowed(t *testing.T) ([]int, unix.CPUSet) {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	return cpus(&set), set
}

// needCPUs skips a test when this process may run on fewer than 2 CPUs.
func needCPUs(t *testing.T) ([]int, unix.CPUSet) {
	t.Helper()
	list, set := allowed(t)
	if len(list) < 2 {
		t.Skipf("pinning needs 2 CPUs; this process may run on %d", len(list))
	}
	return list, set
}

// checkThreads fails unless every thread of process pid (0: this one)
// has the affinity want.
func checkThreads(t *testing.T, what string, pid int, want *unix.CPUSet) {
	t.Helper()
	tids, err := threads(pid)
	if err != nil || len(tids) == 0 {
		t.Fatalf("%s: threads %v, %v", what, tids, err)
	}
	for _, tid := range tids {
		var got unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &got); err != nil {
			t.Fatalf("%s: thread %d: %v", what, tid, err)
		}
		if got != *want {
			t.Errorf("%s: thread %d of %d may run on CPUs %v, want %v", what, tid, len(tids), cpus(&got), cpus(want))
		}
	}
}

// TestPinSelf pins every thread of the test process to one CPU, threads
// started meanwhile included, and back.
func TestPinSelf(t *testing.T) {
	list, orig := allowed(t)
	cpu := list[len(list)-1]
	var want unix.CPUSet
	want.Set(cpu)
	// Goroutines blocked in system calls keep threads of their own busy,
	// so that the process has several.
	stop := make(chan struct{})
	defer close(stop)
	for range 4 {
		go func() {
			runtime.LockOSThread()
			<-stop
		}()
	}
	before := runtime.GOMAXPROCS(0)
	restore, err := pinSelf(cpu, &orig)
	if err != nil {
		t.Fatal(err)
	}
	checkThreads(t, "pinned", 0, &want)
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Errorf("GOMAXPROCS %d while pinned, want 1", n)
	}
	// A thread started while pinned is pinned too.
	started := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		close(started)
		<-stop
	}()
	<-started
	checkThreads(t, "pinned, with a new thread", 0, &want)
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	checkThreads(t, "restored", 0, &orig)
	if n := runtime.GOMAXPROCS(0); n != before {
		t.Errorf("GOMAXPROCS %d after pinning, want %d as before", n, before)
	}
}

// TestPinnedServers starts every system's servers and peers the way the
// pinned part does, and checks that every thread of each runs on the
// server's CPU alone, while the test process keeps its affinity.
func TestPinnedServers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	list, orig := needCPUs(t)
	e := &environment{cfg: &Config{PeerCommand: peerCommand}, dir: t.TempDir(), report: &Report{}}
	defer e.close()
	if err := e.cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if err := onCPU(list[0], func() error { return e.start(context.Background()) }); err != nil {
		t.Fatal(err)
	}
	var want unix.CPUSet
	want.Set(list[0])
	if len(e.peers) < 3 { // machqd and the two floors at least
		t.Fatalf("%d peers started", len(e.peers))
	}
	for _, p := range e.peers {
		checkThreads(t, "peer", p.PID(), &want)
	}
	_, noRedis := exec.LookPath("redis-server")
	if e.redis != nil {
		checkThreads(t, "redis-server", e.redis.PID(), &want)
	} else if noRedis == nil {
		t.Errorf("redis-server is installed but was not started: %q", e.report.Notes)
	}
	checkThreads(t, "the test process", 0, &orig)
	// The systems work, pinned.
	for _, s := range e.systems {
		tg, err := s.dial(context.Background(), 64)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		chk := newChecker(payload(64))
		if err := tg.RoundTrip(payload(64), chk.got); err != nil || chk.err != nil {
			t.Errorf("%s: %v, %v", s.name, err, chk.err)
		}
		tg.Close()
	}
	if noRedis != nil {
		testtool.Missing(t, "redis-server", "scripts/install-redis.sh, or apt-get install redis-server")
	}
}

// TestChoosePlacement checks what each Pin means, on 2 CPUs and on one.
func TestChoosePlacement(t *testing.T) {
	list, orig := needCPUs(t)
	for _, tc := range []struct {
		pin, socket string
		unpinned    bool
		pinned      bool
		note, err   string
	}{
		{pin: "", unpinned: true, pinned: true},
		{pin: PinBoth, unpinned: true, pinned: true},
		{pin: PinPinned, pinned: true},
		{pin: PinUnpinned, unpinned: true},
		{pin: "", socket: "/s", unpinned: true, note: "pinned: skipped: --socket"},
		{pin: PinUnpinned, socket: "/s", unpinned: true},
		{pin: PinBoth, socket: "/s", err: "cannot measure both: --socket"},
		{pin: "sideways", err: `unknown placement "sideways"`},
	} {
		c := Config{Pin: tc.pin, Socket: tc.socket}
		unpinned, pl, note, err := c.choosePlacement()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("pin %q, socket %q: error %v, want %q", tc.pin, tc.socket, err, tc.err)
			}
			continue
		}
		if err != nil || unpinned != tc.unpinned || (pl != nil) != tc.pinned || !strings.HasPrefix(note, tc.note) || (tc.note == "") != (note == "") {
			t.Errorf("pin %q, socket %q: unpinned %v, placement %+v, note %q, %v", tc.pin, tc.socket, unpinned, pl, note, err)
		}
		if pl != nil && (pl.server != list[0] || pl.client != list[1] || pl.orig != orig) {
			t.Errorf("pin %q: placement %+v", tc.pin, pl)
		}
	}

	// On one CPU.
	restore, err := pinSelf(list[0], &orig)
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	c := Config{}
	if unpinned, pl, note, err := c.choosePlacement(); err != nil || !unpinned || pl != nil || !strings.Contains(note, "1 CPU") {
		t.Errorf("default on one CPU: unpinned %v, placement %+v, note %q, %v", unpinned, pl, note, err)
	}
	c.Pin = PinPinned
	if _, _, _, err := c.choosePlacement(); err == nil || !strings.Contains(err.Error(), "1 CPU") {
		t.Errorf("pinned on one CPU: %v", err)
	}
}

// TestRunPinned runs a small comparison both ways and pinned alone, and
// checks where each figure goes: the unpinned ones where they always
// were, the pinned ones, small sizes only, in Pinned; the tables'
// labels; and the benchmark's affinity afterwards.
func TestRunPinned(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	list, orig := needCPUs(t)
	base := Config{
		Sizes: []int{64, 64 << 10}, Time: 20 * time.Millisecond, Rounds: 2, MinIters: 2,
		Systems: []string{sysMachq, sysMachqSpin, sysCopy, sysRedis, sysMqueue}, Clients: []int{2}, Depth: 2,
		SkipZeroCopy: true, SkipPhases: true, SkipMemory: true, SkipDurable: true, SkipStream: true,
		PeerCommand: peerCommand,
	}
	var progress bytes.Buffer
	base.Progress = &progress
	r, err := Run(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	checkThreads(t, "the benchmark after the run", 0, &orig)
	if r.Placement != PinBoth || r.Pinned == nil {
		t.Fatalf("placement %q, pinned %+v", r.Placement, r.Pinned)
	}
	p := r.Pinned
	if p.ServerCPU != list[0] || p.ClientCPU != list[1] || p.MaxSize != pinMaxSize {
		t.Errorf("pinned %+v", p)
	}
	count := func(rows []Latency, size int) map[string]bool {
		m := map[string]bool{}
		for _, l := range rows {
			if l.Size == size && l.View == EndToEnd && l.Skipped == "" && l.Median > 0 && l.N >= 2 {
				m[l.System] = true
			}
		}
		return m
	}
	unpinned64, pinned64 := count(r.Latency, 64), count(p.Latency, 64)
	if !unpinned64[sysMachq] || !unpinned64[sysMachqSpin] || !unpinned64[sysCopy] || len(pinned64) != len(unpinned64) {
		t.Errorf("64 B measured unpinned for %v, pinned for %v", unpinned64, pinned64)
	}
	if len(count(r.Latency, 64<<10)) == 0 || len(count(p.Latency, 64<<10)) != 0 {
		t.Errorf("64 KiB: unpinned %v, pinned %v", count(r.Latency, 64<<10), count(p.Latency, 64<<10))
	}
	if len(p.Throughput) != len(r.Throughput) || len(p.Throughput) == 0 {
		t.Errorf("throughput rows: %d pinned, %d unpinned", len(p.Throughput), len(r.Throughput))
	}
	if !slices.ContainsFunc(p.Throughput, func(tp Throughput) bool { return tp.System == sysMachqSpin && tp.PerSecond > 0 }) {
		t.Errorf("machq-spin's throughput not measured pinned: %+v", p.Throughput)
	}
	for _, tp := range p.Throughput {
		if shape := [2]int{tp.Clients, tp.Depth}; tp.Skipped == "" && (tp.PerSecond <= 0 || shape != [2]int{2, 1} && shape != [2]int{1, 2}) {
			t.Errorf("pinned throughput row %+v", tp)
		}
	}
	if !strings.Contains(progress.String(), "pinned 64 B [") || !strings.Contains(progress.String(), "placement 64 B, median round trip unpinned -> pinned: machq ") {
		t.Errorf("progress lacks the pinned rounds or their summary:\n%s", progress.String())
	}
	back, _, _ := checkReport(t, r,
		`^placement of the small-message comparison: both \(pinned: servers on CPU \d+, the benchmark \(every thread, GOMAXPROCS 1\) on CPU \d+\)`,
		`^store \+ retrieve round trip, end to end .*, unpinned \(the scheduler places every process\)\n`,
		`^small-message throughput .*, unpinned \(the scheduler places every process\)\n`,
		`^store \+ retrieve round trip, end to end, up to 4 KiB, pinned: servers on CPU`,
		`^small-message throughput \(store \+ retrieve round trips per second\), pinned: servers on CPU`,
		`^ +64 B +machq +\S+ +\S+ +\d+\.\d\d *\n`,
		`^ +2 +1 +machq +\d+ +\d+ +\d+\.\d\d *\n`,
		`^ +machq-spin +\S+ +\S+ +\d+\.\d\d *\n`,
	)
	if back.Placement != PinBoth || back.Pinned == nil || len(back.Pinned.Latency) != len(p.Latency) || len(back.Pinned.Throughput) != len(p.Throughput) {
		t.Errorf("JSON report does not read back the pinned figures")
	}

	// Pinned alone: the small sizes and the throughput are in Pinned only.
	only := base
	only.Pin = PinPinned
	only.SkipThroughput = true
	r, err = Run(context.Background(), only)
	if err != nil {
		t.Fatal(err)
	}
	checkThreads(t, "the benchmark after the pinned run", 0, &orig)
	if r.Placement != PinPinned || r.Pinned == nil || len(count(r.Pinned.Latency, 64)) == 0 || len(count(r.Latency, 64)) != 0 ||
		len(count(r.Latency, 64<<10)) == 0 || len(r.Throughput) != 0 || len(r.Pinned.Throughput) != 0 {
		t.Errorf("pinned alone: placement %q, latency %+v, pinned %+v", r.Placement, r.Latency, r.Pinned)
	}
}
