package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/testtool"
	"github.com/machq/machq/server"
)

// peerEnv makes the test binary run as a benchmark peer (RunPeer) instead
// of running the tests, as `machq bench-peer` does for the benchmark.
const peerEnv = "MACHQ_BENCH_TEST_PEER"

func TestMain(m *testing.M) {
	if os.Getenv(peerEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		err := RunPeer(ctx, os.Args[1:], os.Stdin, os.Stdout)
		stop()
		if err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintf(os.Stderr, "bench peer: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// peerCommand runs a benchmark peer in a copy of the test binary. Built
// with the race detector, a program sleeps a second before it exits
// (GORACE's atexit_sleep_ms), which every stop of a peer would wait for;
// the peers are told not to.
func peerCommand(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), peerEnv+"=1", "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return cmd
}

// startServer runs a machq server in the test process and returns its
// socket path.
func startServer(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s.sock")
	s, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		<-done
	})
	return path
}

// TestMachqAckTarget checks machq-ack's round trip and pipeline: every
// payload comes back whole, and every message is acknowledged, so that
// the server holds nothing afterwards, pending or queued.
func TestMachqAckTarget(t *testing.T) {
	ctx := context.Background()
	e := &environment{cfg: &Config{Digest: machq.DigestNone}, machqPath: startServer(t)}
	for _, size := range []int{0, 64, 4 << 10, 100 << 10} {
		t.Run(fmtSize(size), func(t *testing.T) {
			tg, err := e.machqDialer(e.machqPath, machq.DefaultInlineThreshold, true)(ctx, size)
			if err != nil {
				t.Fatal(err)
			}
			defer tg.Close()
			mt := tg.(*machqTarget)
			want := payload(size)
			chk := newChecker(want)
			calls := 0
			got := func(b []byte) {
				calls++
				chk.got(b)
			}
			for range 3 {
				if err := tg.RoundTrip(want, got); err != nil {
					t.Fatal(err)
				}
			}
			for _, depth := range []int{1, 16, 3} {
				if err := tg.Pipeline(want, depth, got); err != nil {
					t.Fatalf("depth %d: %v", depth, err)
				}
			}
			if chk.err != nil {
				t.Fatal(chk.err)
			}
			if want := 3 + 1 + 16 + 3; calls != want {
				t.Errorf("read %d payloads, want %d", calls, want)
			}
			st, err := mt.c.Stat(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.Messages != 0 || st.Pending.Messages != 0 {
				t.Errorf("server holds %d messages, %d of them pending, after the round trips", st.Messages, st.Pending.Messages)
			}
			// settle reconnects; the target works on.
			if err := mt.settle(); err != nil {
				t.Fatal(err)
			}
			if err := tg.RoundTrip(want, got); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestMachqAckTargetError checks that a failed reserve in a pipeline is
// reported: with nothing stored for some of the reserves, they find the
// queue empty.
func TestMachqAckTargetError(t *testing.T) {
	ctx := context.Background()
	e := &environment{cfg: &Config{Digest: machq.DigestNone}, machqPath: startServer(t)}
	tg, err := e.machqDialer(e.machqPath, machq.DefaultInlineThreshold, true)(ctx, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	mt := tg.(*machqTarget)
	calls := 0
	err = mt.reserveBatch(4, func([]byte) { calls++ })
	if !errors.Is(err, machq.ErrEmpty) || calls != 0 {
		t.Errorf("reserves of an empty queue: %v, %d payloads read; want ErrEmpty", err, calls)
	}
	if err := tg.Pipeline(payload(64), 4, func([]byte) { calls++ }); err != nil || calls != 4 {
		t.Errorf("Pipeline after the failed reserves: %v, %d payloads read", err, calls)
	}
}

// TestRunAckSystems runs a small benchmark of machq beside machq-ack and
// redis-streams, with their peers in processes of their own, and checks
// that both ack-mode systems are measured everywhere, with their ratios.
func TestRunAckSystems(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	_, noRedis := exec.LookPath("redis-server")
	cfg := Config{
		Sizes:        []int{0, 64, 96 << 10},
		Time:         40 * time.Millisecond,
		Rounds:       2,
		MinIters:     2,
		Systems:      []string{sysMachq, sysMachqAck, sysRedisStreams},
		Clients:      []int{1, 2},
		Depth:        4,
		SkipZeroCopy: true,
		SkipPhases:   true,
		SkipMemory:   true,
		SkipStream:   true,
		Pin:          PinUnpinned,
		SkipDurable:  true,
		PeerCommand:  peerCommand,
	}
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}

	measured := map[string]int{}
	for _, l := range r.Latency {
		if l.Skipped != "" {
			t.Errorf("%s at %s skipped: %s", l.System, fmtSize(l.Size), l.Skipped)
			continue
		}
		measured[l.System]++
		if l.N < 2 || l.Median <= 0 || l.P99 < l.Median || l.Ratio <= 0 {
			t.Errorf("%s at %s: n %d, median %v, p99 %v, ratio %v", l.System, fmtSize(l.Size), l.N, l.Median, l.P99, l.Ratio)
		}
		switch l.System {
		case sysMachq:
			if l.RatioAck != 0 {
				t.Errorf("machq at %s has a ratio to machq-ack: %v", fmtSize(l.Size), l.RatioAck)
			}
		case sysMachqAck:
			if l.RatioAck != 1 {
				t.Errorf("machq-ack's ratio to itself at %s is %v", fmtSize(l.Size), l.RatioAck)
			}
		case sysRedisStreams:
			if l.RatioAck <= 0 {
				t.Errorf("redis-streams at %s has no ratio to machq-ack", fmtSize(l.Size))
			}
		}
	}
	rates := map[string]int{}
	for _, tp := range r.Throughput {
		if tp.Skipped != "" || tp.PerSecond <= 0 || tp.Ratio <= 0 {
			t.Errorf("throughput row %+v", tp)
			continue
		}
		rates[tp.System]++
		if isAck := tp.System != sysMachq; isAck != (tp.RatioAck > 0) {
			t.Errorf("throughput row %+v: ratio to machq-ack %v", tp, tp.RatioAck)
		}
	}
	for _, sys := range []string{sysMachq, sysMachqAck} {
		if measured[sys] != 3 || rates[sys] != 3 { // 1 and 2 clients, and depth 4
			t.Errorf("%s: latency at %d sizes, throughput at %d shapes; want 3 and 3", sys, measured[sys], rates[sys])
		}
	}

	back, text, js := checkReport(t, r, "machq-ack", "x ack", regexp.QuoteMeta(ackLegend))
	if len(back.Latency) != len(r.Latency) || len(back.Throughput) != len(r.Throughput) {
		t.Errorf("JSON report does not read back whole")
	}
	if !strings.Contains(js, `"ratio_to_machq_ack"`) {
		t.Errorf("JSON report has no ratio_to_machq_ack")
	}

	if noRedis != nil {
		testtool.Missing(t, "redis-server", "scripts/install-redis.sh, or apt-get install redis-server")
	}
	if measured[sysRedisStreams] != 3 || rates[sysRedisStreams] != 3 {
		t.Errorf("redis-streams: latency at %d sizes, throughput at %d shapes; want 3 and 3 (notes: %q)",
			measured[sysRedisStreams], rates[sysRedisStreams], r.Notes)
	}
	if !strings.Contains(text, "redis-streams") {
		t.Errorf("text report lacks redis-streams:\n%s", text)
	}
}

// TestRunDurable runs the durable runs, small, against a real machqd
// with a data directory and a real redis-server with its append-only file
// synced always, and checks their figures: rates for every producer
// count, the large store timed for machq and the floor, every stored
// message recovered, and nothing left in the durable directory.
func TestRunDurable(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	_, noRedis := exec.LookPath("redis-server")
	durableDir := t.TempDir()
	const stored = 5000
	cfg := Config{
		Sizes:             []int{64},
		Time:              20 * time.Millisecond,
		Rounds:            2,
		MinIters:          2,
		Systems:           []string{sysMachq, sysRedis},
		SkipThroughput:    true,
		SkipZeroCopy:      true,
		SkipPhases:        true,
		SkipMemory:        true,
		SkipStream:        true,
		Pin:               PinUnpinned,
		DurableDir:        durableDir,
		DurableTime:       300 * time.Millisecond,
		DurableProducers:  []int{1, 4},
		DurableLargeSize:  1 << 20,
		DurableLargeIters: 3,
		RecoveryMessages:  stored,
		PeerCommand:       peerCommand,
	}
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := r.Durable
	if d == nil {
		t.Fatalf("no durable figures; notes %q", r.Notes)
	}
	if d.Dir != durableDir || d.FileSystem == "" || d.Size != 64 {
		t.Errorf("durable runs in %q on %q of %d bytes", d.Dir, d.FileSystem, d.Size)
	}

	rates := map[string]int{}
	for _, s := range d.Stores {
		if s.Skipped != "" || s.Stores <= 0 || s.PerSecond <= 0 || s.Ratio <= 0 {
			t.Errorf("durable stores row %+v", s)
			continue
		}
		rates[s.System]++
		if s.System == sysMachq && s.Ratio != 1 {
			t.Errorf("machq's durable rate over itself is %v", s.Ratio)
		}
	}
	if rates[sysMachq] != 2 {
		t.Errorf("machq's durable stores measured with %d producer counts, want 2: %+v", rates[sysMachq], d.Stores)
	}

	if len(d.Large) != 2 {
		t.Fatalf("large durable store rows: %+v", d.Large)
	}
	for i, want := range []string{sysMachq, sysFileSync} {
		l := d.Large[i]
		if l.System != want || l.Size != 1<<20 || l.N < 3 || l.Median <= 0 || l.P99 < l.Median || l.MBps <= 0 || l.RatioFloor <= 0 {
			t.Errorf("large durable store row %d: %+v, want %s", i, l, want)
		}
	}
	if d.Large[1].RatioFloor != 1 {
		t.Errorf("the floor's ratio to itself is %v", d.Large[1].RatioFloor)
	}

	rc := d.Recovery
	if rc == nil {
		t.Fatal("no recovery figures")
	}
	if rc.Messages != stored || rc.Recovered != stored || rc.Served != stored {
		t.Errorf("recovery: %d stored, %d recovered, %d served; want %d", rc.Messages, rc.Recovered, rc.Served, stored)
	}
	if rc.Queues < 1 || rc.Queues > recoveryQueues || rc.Segments < 1 || rc.Records < stored {
		t.Errorf("recovery report: %d queues, %d segments, %d records", rc.Queues, rc.Segments, rc.Records)
	}
	if rc.Took <= 0 || rc.Serving < rc.Took || rc.StoreTime <= 0 {
		t.Errorf("recovery took %v, served after %v, stored in %v", rc.Took, rc.Serving, rc.StoreTime)
	}

	left, err := os.ReadDir(durableDir)
	if err != nil || len(left) != 0 {
		t.Errorf("the durable directory holds %d entries after the run (%v)", len(left), err)
	}

	back, _, _ := checkReport(t, r,
		`durable stores of 64 B per second`,
		`producers +system +stores/s +x machq`,
		`^ +1 +machq +\d+ +1\.00`,
		`^ +4 +machq +\d+ +1\.00`,
		`durable store of a 1 MiB page`,
		`file\+sync +\S+ +\S+ +\S+ +1\.00 +\d+`,
		fmt.Sprintf(`recovery of %d durable messages`, stored),
		fmt.Sprintf(`^ +%d +\d+ +\d+ +\d+ +\S+ +\S+`, stored),
	)
	if back.Durable == nil || back.Durable.Recovery == nil || len(back.Durable.Stores) != len(d.Stores) || back.Durable.Recovery.Took != rc.Took {
		t.Errorf("JSON report does not read back the durable figures")
	}

	if noRedis != nil {
		testtool.Missing(t, "redis-server", "scripts/install-redis.sh, or apt-get install redis-server")
	}
	if rates[sysRedisAOF] != 2 {
		t.Errorf("redis-aof's durable stores measured with %d producer counts, want 2 (notes %q)", rates[sysRedisAOF], r.Notes)
	}
	if !strings.Contains(strings.Join(r.Notes, "\n"), "appendfsync always") {
		t.Errorf("no note says how Redis was run: %q", r.Notes)
	}
}

// TestRunDurableSkipped checks that --skip durable and --socket leave the
// durable runs out, the second with a note saying why.
func TestRunDurableSkipped(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	base := Config{
		Sizes: []int{64}, Time: 10 * time.Millisecond, Rounds: 1, MinIters: 1, Systems: []string{sysMachq},
		SkipThroughput: true, SkipZeroCopy: true, SkipPhases: true, SkipMemory: true, SkipStream: true, Pin: PinUnpinned, PeerCommand: peerCommand,
		DurableDir: t.TempDir(),
	}
	skip := base
	skip.SkipDurable = true
	r, err := Run(context.Background(), skip)
	if err != nil {
		t.Fatal(err)
	}
	if r.Durable != nil {
		t.Errorf("SkipDurable ran the durable runs: %+v", r.Durable)
	}
	sock := base
	sock.Socket = startServer(t)
	r, err = Run(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	if r.Durable != nil || !strings.Contains(strings.Join(r.Notes, "\n"), "durable: skipped") {
		t.Errorf("with a socket: durable %+v, notes %q", r.Durable, r.Notes)
	}
}

// TestWriteTextAckColumn checks that the tables have a column comparing
// with machq-ack only when an ack-mode system was measured.
func TestWriteTextAckColumn(t *testing.T) {
	plain := &Report{
		Latency:    []Latency{{System: sysMachq, View: EndToEnd, Size: 64, N: 5, Median: 1000, P99: 2000, Ratio: 1}},
		Throughput: []Throughput{{System: sysMachq, Size: 64, Clients: 1, Depth: 1, RoundTrips: 10, PerSecond: 100, Ratio: 1}},
	}
	var b bytes.Buffer
	if err := plain.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "x ack") || strings.Contains(b.String(), ackLegend) {
		t.Errorf("report without ack-mode systems has an ack column:\n%s", b.String())
	}

	withAck := &Report{
		Latency: []Latency{
			{System: sysMachq, View: EndToEnd, Size: 64, N: 5, Median: 1000, P99: 2000, Ratio: 1},
			{System: sysMachqAck, View: EndToEnd, Size: 64, N: 5, Median: 2000, P99: 3000, Ratio: 2, RatioAck: 1},
			{System: sysRedisStreams, View: EndToEnd, Size: 64, N: 5, Median: 3000, P99: 4000, Ratio: 3, RatioAck: 1.5},
			{System: sysMqueue, View: EndToEnd, Size: 64, Skipped: "too large"},
		},
		Throughput: []Throughput{
			{System: sysMachq, Size: 64, Clients: 1, Depth: 16, PerSecond: 300, Ratio: 1},
			{System: sysMachqAck, Size: 64, Clients: 1, Depth: 16, PerSecond: 100, Ratio: 3, RatioAck: 1},
			{System: sysRedisStreams, Size: 64, Clients: 1, Depth: 16, PerSecond: 200, Ratio: 1.5, RatioAck: 0.5},
			{System: sysRedis, Size: 64, Clients: 1, Depth: 16, Skipped: "failed"},
		},
	}
	b.Reset()
	if err := withAck.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, re := range []string{
		`size +system +median +p99 +MB/s +x machq +x ack +n`,
		`redis-streams +3µs +4µs +- +3\.00 +1\.50 +5`,
		`machq +1µs +2µs +- +1\.00 +- +5`,
		`mqueue +- +- +- +- +- +- +too large`,
		`size +clients +depth +system +round trips/s +x machq +x ack`,
		`redis-streams +200 +1\.50 +0\.50`,
		`redis +- +- +- +failed`,
	} {
		if !matchLine(out, re) {
			t.Errorf("no line matches %q in:\n%s", re, out)
		}
	}
}

// matchLine reports whether a line of s contains a match of the regular
// expression re.
// checkReport writes r as text, fails the test for each regular
// expression no line of it matches, and returns r written as JSON and
// read back, with the text and the JSON.
func checkReport(t *testing.T, r *Report, lines ...string) (back Report, text, js string) {
	t.Helper()
	var tb, jb bytes.Buffer
	if err := r.WriteText(&tb); err != nil {
		t.Fatal(err)
	}
	for _, re := range lines {
		if !matchLine(tb.String(), re) {
			t.Errorf("no line matches %q in:\n%s", re, tb.String())
		}
	}
	if err := r.WriteJSON(&jb); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(jb.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	return back, tb.String(), jb.String()
}

func matchLine(s, re string) bool {
	for line := range strings.Lines(s) {
		if ok, _ := regexp.MatchString(re, line); ok {
			return true
		}
	}
	return false
}

func TestSummarizeAckRatio(t *testing.T) {
	runs := []*samples{
		{sys: &system{name: sysMachq}, d: []time.Duration{10, 10, 10}},
		{sys: &system{name: sysMachqAck}, d: []time.Duration{20, 20, 20}},
		{sys: &system{name: sysRedis}, d: []time.Duration{5, 5, 5}},
		{sys: &system{name: sysRedisStreams}, d: []time.Duration{30, 30, 30}},
	}
	rows := summarize(EndToEnd, 64, runs)
	want := map[string][2]float64{sysMachq: {1, 0}, sysMachqAck: {2, 1}, sysRedis: {0.5, 0}, sysRedisStreams: {3, 1.5}}
	for _, r := range rows {
		if w := want[r.System]; r.Ratio != w[0] || r.RatioAck != w[1] {
			t.Errorf("%s: ratio %v, to machq-ack %v; want %v and %v", r.System, r.Ratio, r.RatioAck, w[0], w[1])
		}
	}
}

func TestRedisMajor(t *testing.T) {
	for v, want := range map[string]int{"7.0.15": 7, "5.0.0": 5, "4.0.14": 4, "10.2": 10, "": 0, "unstable": 0} {
		if got := redisMajor(v); got != want {
			t.Errorf("redisMajor(%q) = %d, want %d", v, got, want)
		}
	}
}

// TestRunSpin runs a small benchmark of machq beside machq-spin and
// checks that machq-spin runs a machqd of its own with the spin budget
// given, is measured at the small sizes and in the throughput test with
// ratios to plain machq, is skipped above 64 KiB saying why, and is
// described in the notes and the tables.
func TestRunSpin(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	const budget = 20 * time.Microsecond
	cfg := Config{
		Sizes: []int{64, 64 << 10, 96 << 10}, Time: 30 * time.Millisecond, Rounds: 2, MinIters: 2,
		Systems: []string{sysMachq, sysMachqSpin}, Clients: []int{2}, Depth: 4, Spin: budget,
		SkipZeroCopy: true, SkipPhases: true, SkipMemory: true, SkipStream: true, SkipDurable: true,
		Pin: PinUnpinned, PeerCommand: peerCommand,
	}
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range r.Latency {
		switch {
		case l.System == sysMachqSpin && l.Size > spinMaxSize:
			if l.Skipped != spinLimit || l.N != 0 {
				t.Errorf("machq-spin at %s: %+v; want skipped: %s", fmtSize(l.Size), l, spinLimit)
			}
		case l.Skipped != "" || l.N < 2 || l.Median <= 0 || l.Ratio <= 0:
			t.Errorf("%s at %s: %+v", l.System, fmtSize(l.Size), l)
		case l.System == sysMachq && l.Ratio != 1:
			t.Errorf("machq's ratio to itself at %s is %v", fmtSize(l.Size), l.Ratio)
		}
	}
	if len(r.Latency) != 6 {
		t.Errorf("%d latency rows, want 6 (2 systems at 3 sizes): %+v", len(r.Latency), r.Latency)
	}
	rates := map[string]int{}
	for _, tp := range r.Throughput {
		if tp.Skipped != "" || tp.PerSecond <= 0 || tp.Ratio <= 0 {
			t.Errorf("throughput row %+v", tp)
			continue
		}
		rates[tp.System]++
	}
	if rates[sysMachq] != 2 || rates[sysMachqSpin] != 2 { // 2 clients, and depth 4
		t.Errorf("throughput measured for %v; want machq and machq-spin with 2 shapes each", rates)
	}
	if r.Spin != Duration(budget) {
		t.Errorf("report's spin %v, want %v", r.Spin, budget)
	}
	notes := strings.Join(r.Notes, "\n")
	if !strings.Contains(notes, "machq-spin: machq as the machq system runs it") || !strings.Contains(notes, "--spin "+budget.String()) {
		t.Errorf("notes do not say what machq-spin is: %q", r.Notes)
	}
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	legend := r.spinLegend()
	if !strings.Contains(legend, budget.String()) || strings.Count(text.String(), legend) != 2 {
		t.Errorf("the latency and throughput tables do not both have the legend %q:\n%s", legend, text.String())
	}
	for _, re := range []string{
		`^ +machq-spin +\S+ +\S+ +\S+ +\d+\.\d\d +\d+\s*$`,
		`^ +machq-spin( +-){5} +not measured above 64 KiB: spinning is about the wake-up of small requests\s*$`,
		`^ +64 B +machq-spin +\d+ +\d+\.\d\d\s*$`,
	} {
		if !matchLine(text.String(), re) {
			t.Errorf("no line matches %q in:\n%s", re, text.String())
		}
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(js.String(), `"system": "machq-spin"`) || !strings.Contains(js.String(), fmt.Sprintf(`"spin_ns": %d`, budget)) {
		t.Errorf("JSON report lacks machq-spin or its spin:\n%s", js.String())
	}
}

// TestSpinServer checks that machq-spin's server is a peer of its own,
// started with the spin budget, that its clients work, and that with a
// server started elsewhere (Socket) machq-spin is skipped with a note.
func TestSpinServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	e := &environment{cfg: &Config{Systems: []string{sysMachq, sysMachqSpin}, SkipZeroCopy: true, PeerCommand: peerCommand},
		dir: t.TempDir(), report: &Report{}}
	defer e.close()
	if err := e.cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if err := e.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.spinPath == "" || e.spinPath == e.machqPath || len(e.peers) != 2 {
		t.Fatalf("machq-spin's socket %q, machq's %q, %d peers; want a machqd of its own", e.spinPath, e.machqPath, len(e.peers))
	}
	want := []string{peerMachq, e.spinPath, "--spin=" + DefaultSpin.String()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", e.peers[1].PID()))
	if args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"); err != nil || len(args) < 3 || !slices.Equal(args[len(args)-3:], want) {
		t.Errorf("machq-spin's peer runs %q (%v); want it to end with %q", args, err, want)
	}
	var names []string
	for _, s := range e.systems {
		names = append(names, s.name)
		if s.name != sysMachqSpin {
			continue
		}
		if s.maxSize != spinMaxSize || s.limit != spinLimit {
			t.Errorf("machq-spin carries up to %d (%q)", s.maxSize, s.limit)
		}
		tg, err := s.dial(context.Background(), 64)
		if err != nil {
			t.Fatal(err)
		}
		chk := newChecker(payload(64))
		for range 3 {
			if err := tg.RoundTrip(payload(64), chk.got); err != nil || chk.err != nil {
				t.Errorf("round trip: %v, %v", err, chk.err)
			}
		}
		if err := tg.Pipeline(payload(64), 4, chk.got); err != nil || chk.err != nil {
			t.Errorf("pipeline: %v, %v", err, chk.err)
		}
		tg.Close()
	}
	if !slices.Equal(names, []string{sysMachq, sysMachqSpin}) {
		t.Errorf("systems %q", names)
	}

	// Against a server started elsewhere.
	se := &environment{cfg: &Config{Socket: startServer(t), Systems: []string{sysMachqSpin}, PeerCommand: peerCommand}, dir: t.TempDir(), report: &Report{}}
	defer se.close()
	if err := se.cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if err := se.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(se.systems) != 0 || len(se.peers) != 0 || !strings.Contains(strings.Join(se.report.Notes, "\n"), "machq-spin: skipped: --socket") {
		t.Errorf("with a socket: systems %d, peers %d, notes %q", len(se.systems), len(se.peers), se.report.Notes)
	}
}

// TestSpinConfig checks the default spin budget and the longest allowed.
func TestSpinConfig(t *testing.T) {
	c := Config{PeerCommand: peerCommand}
	if err := c.setDefaults(); err != nil || c.Spin != DefaultSpin || DefaultSpin != 50*time.Microsecond {
		t.Errorf("default spin %v (%v)", c.Spin, err)
	}
	c = Config{PeerCommand: peerCommand, Spin: MaxSpin + 1}
	if err := c.setDefaults(); err == nil || !strings.Contains(err.Error(), "spin") {
		t.Errorf("spin %v accepted (%v)", c.Spin, err)
	}
}
