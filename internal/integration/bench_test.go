package integration_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// benchReport is the part of machq bench --json the test checks.
type benchReport struct {
	Machine struct {
		CPUs int `json:"cpus"`
	} `json:"machine"`
	Latency []struct {
		System  string  `json:"system"`
		View    string  `json:"view"`
		Size    int     `json:"size"`
		Skipped string  `json:"skipped"`
		N       int     `json:"n"`
		Median  int64   `json:"median_ns"`
		P99     int64   `json:"p99_ns"`
		Ratio   float64 `json:"ratio_to_machq"`
	} `json:"latency"`
	Phases []struct {
		System string `json:"system"`
		Size   int    `json:"size"`
		Send   int64  `json:"send_ns"`
	} `json:"phases"`
	Digests []struct {
		Digest string  `json:"digest"`
		MBps   float64 `json:"mb_per_s"`
	} `json:"digests"`
	Throughput []struct {
		System    string  `json:"system"`
		Clients   int     `json:"clients"`
		Depth     int     `json:"depth"`
		Skipped   string  `json:"skipped"`
		PerSecond float64 `json:"round_trips_per_s"`
	} `json:"throughput"`
	Memory []struct {
		Messages int   `json:"messages"`
		Size     int   `json:"size"`
		RSS      int64 `json:"rss_bytes"`
		FDs      int   `json:"fds"`
	} `json:"memory"`
	Stream *struct {
		Size     int `json:"size"`
		Frames   int `json:"frames"`
		Variants []struct {
			Variant   string  `json:"variant"`
			PerSecond float64 `json:"frames_per_s"`
		} `json:"variants"`
	} `json:"stream"`
	Spin  int64    `json:"spin_ns"`
	Notes []string `json:"notes"`
}

// TestBench runs a small machq bench end to end: every system it can
// start, every part of the report (a short stream of small frames; the
// comparison unpinned only, the pinned part being the same measurements
// placed otherwise, which the bench package's tests cover), the JSON and
// the plot, and checks that no peer process outlives it.
func TestBench(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several server processes")
	}
	dir := t.TempDir()
	plot := filepath.Join(dir, "latency.png")
	saved := filepath.Join(dir, "saved.json")
	r := runCLI(t, nil, "bench", "--sizes", "0,64,96K", "--time", "40ms", "--rounds", "2", "--min-iters", "2",
		"--clients", "1,3", "--depth", "4", "--small-messages", "3000", "--large-messages", "20",
		"--stream-frames", "4", "--stream-size", "1M", "--pin", "unpinned", "--spin", "30us",
		"--json", "--save", saved, "--plot", plot)
	if r.code != 0 {
		t.Fatalf("machq bench exited %d: %s", r.code, r.stderr)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("--json output is not a report: %v\n%s", err, r.stdout)
	}
	if b, err := os.ReadFile(saved); err != nil || !bytes.Equal(bytes.TrimSpace(b), bytes.TrimSpace([]byte(r.stdout))) {
		t.Errorf("--save file differs from --json output (err %v)", err)
	}
	if rep.Machine.CPUs < 1 {
		t.Errorf("machine not described: %+v", rep.Machine)
	}

	// Every system that ran reports every size, machq's ratio to itself is 1.
	seen := map[string]int{}
	for _, l := range rep.Latency {
		if l.View != "end-to-end" {
			continue
		}
		if l.Skipped != "" {
			spinLimit := l.System == "machq-spin" && l.Size > 64<<10 && strings.Contains(l.Skipped, "spinning is about the wake-up of small requests")
			metricsLimit := l.System == "machq-metrics" && l.Size > 64<<10 && strings.Contains(l.Skipped, "metrics cost per request")
			if l.System != "mqueue" && l.System != "machq-inline" && l.System != "redis" && !spinLimit && !metricsLimit {
				t.Errorf("%s at %d skipped: %s", l.System, l.Size, l.Skipped)
			}
			continue
		}
		seen[l.System]++
		if l.N < 2 || l.Median <= 0 || l.P99 < l.Median {
			t.Errorf("%s at %d: n %d, median %d, p99 %d", l.System, l.Size, l.N, l.Median, l.P99)
		}
		if l.System == "machq" && l.Ratio != 1 {
			t.Errorf("machq's ratio to itself is %v", l.Ratio)
		}
		if l.Ratio <= 0 {
			t.Errorf("%s at %d has no ratio to machq", l.System, l.Size)
		}
	}
	for _, sys := range []string{"machq", "machq-inline", "machq-memfd", "memfd", "copy"} {
		if seen[sys] != 3 {
			t.Errorf("%s measured at %d sizes, want 3", sys, seen[sys])
		}
	}
	if seen["machq-spin"] != 2 { // not above 64 KiB
		t.Errorf("machq-spin measured at %d sizes, want 2 (0 and 64 B)", seen["machq-spin"])
	}
	if seen["machq-metrics"] != 2 { // not above 64 KiB
		t.Errorf("machq-metrics measured at %d sizes, want 2 (0 and 64 B)", seen["machq-metrics"])
	}
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "machq-metrics: machq as the machq system runs it") {
		t.Errorf("the notes do not say what machq-metrics is: %q", rep.Notes)
	}
	if rep.Spin != 30_000 || !strings.Contains(strings.Join(rep.Notes, "\n"), "machq-spin: machq as the machq system runs it") {
		t.Errorf("machq-spin's spin %dns (want 30µs), notes %q", rep.Spin, rep.Notes)
	}
	zeroCopy := 0
	for _, l := range rep.Latency {
		if l.View == "zero-copy" && l.Skipped == "" && l.Median > 0 {
			zeroCopy++
		}
	}
	if zeroCopy != 4 { // machq and memfd at 64 B and 96 KiB
		t.Errorf("%d zero-copy rows, want 4", zeroCopy)
	}
	if len(rep.Phases) != 4 {
		t.Errorf("%d phase rows, want 4 (machq and memfd at two sizes)", len(rep.Phases))
	}
	for _, p := range rep.Phases {
		if p.Send <= 0 {
			t.Errorf("phase row %+v has no send time", p)
		}
	}
	digests := map[string]bool{}
	for _, d := range rep.Digests {
		if d.MBps > 0 {
			digests[d.Digest] = true
		}
	}
	if !digests["sha256"] || !digests["blake3"] {
		t.Errorf("digest costs: %+v", rep.Digests)
	}
	rates := map[string]int{}
	for _, tp := range rep.Throughput {
		if tp.PerSecond > 0 {
			rates[tp.System]++
		}
	}
	for _, sys := range []string{"machq", "machq-spin"} {
		if rates[sys] != 3 { // 1 and 3 clients, and depth 4
			t.Errorf("%s throughput measured %d times, want 3: %+v", sys, rates[sys], rep.Throughput)
		}
	}
	if st := rep.Stream; st == nil || st.Size != 1<<20 || st.Frames != 4 || len(st.Variants) != 2 ||
		st.Variants[0].PerSecond <= 0 || st.Variants[1].PerSecond <= 0 {
		t.Errorf("stream of 4 frames of 1 MiB: %+v", st)
	}
	if len(rep.Memory) != 2 || rep.Memory[0].Messages != 3000 || rep.Memory[1].Messages != 20 {
		t.Fatalf("memory rows: %+v", rep.Memory)
	}
	if m := rep.Memory[1]; m.FDs < 20 {
		t.Errorf("server holding 20 pages has %d fds open", m.FDs)
	}

	png, err := os.ReadFile(plot)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("--plot did not write a PNG (err %v, %d bytes)", err, len(png))
	}

	// Every peer process is gone once machq bench has returned.
	waitFor(t, "bench peer processes to exit", func() bool { return len(peerProcesses()) == 0 })
}

// peerProcesses lists the processes running this build's machq as a
// benchmark peer.
func peerProcesses() []string {
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 1 && args[0] == bin.machq && args[1] == "bench-peer" {
			found = append(found, e.Name())
		}
	}
	return found
}

// TestBenchUsage checks that bad flags are refused with a clear message
// and the usage exit status, before anything starts.
func TestBenchUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--sizes", "64,lots"}, "--sizes"},
		{[]string{"--systems", "memcached"}, "unknown system"},
		{[]string{"--digest", "md5"}, "--digest"},
		{[]string{"--skip", "everything"}, "--skip"},
		{[]string{"--plot", "chart.gif"}, "--plot"},
		{[]string{"--clients", "0"}, "--clients"},
		{[]string{"--spin", "0s"}, "--spin"},
		{[]string{"--spin", "2s"}, "--spin"},
	} {
		r := runCLI(t, nil, append([]string{"bench"}, tc.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("machq bench %v: exit %d, stderr %q; want 2 and a message about %s", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

// TestBenchAgainstARunningServer measures a machqd started elsewhere
// (--socket): machq's figures come from it, the memory test, which needs
// a server of its own, is skipped with a note, and the benchmark leaves
// nothing stored and no client connected.
func TestBenchAgainstARunningServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	d := startDaemon(t, "")
	r := runCLI(t, nil, "bench", "--socket", d.socket, "--systems", "machq,copy", "--sizes", "64,100K",
		"--time", "30ms", "--rounds", "2", "--min-iters", "2", "--skip", "zero-copy,phases,throughput", "--json", "--quiet")
	if r.code != 0 {
		t.Fatalf("machq bench exited %d: %s", r.code, r.stderr)
	}
	if r.stderr != "" {
		t.Errorf("--quiet still wrote to stderr: %q", r.stderr)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	measured := 0
	for _, l := range rep.Latency {
		if l.System == "machq" && l.Median > 0 {
			measured++
		}
	}
	if measured != 2 {
		t.Errorf("machq measured at %d sizes against the running server, want 2", measured)
	}
	if len(rep.Memory) != 0 || !strings.Contains(strings.Join(rep.Notes, "\n"), "memory: skipped") {
		t.Errorf("memory test with --socket: %d rows, notes %q", len(rep.Memory), rep.Notes)
	}
	waitFor(t, "the benchmark's clients gone", func() bool {
		st := d.stats()
		return st.Clients == 1 && st.Messages == 0 // the one asking
	})
}
