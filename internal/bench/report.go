package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Duration is a time.Duration that marshals to JSON as nanoseconds.
type Duration time.Duration

// MarshalJSON encodes d as an integer number of nanoseconds.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(int64(d)) }

// UnmarshalJSON decodes an integer number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*d = Duration(n)
	return nil
}

// String formats d like time.Duration, rounded to three significant digits.
func (d Duration) String() string { return fmtDuration(time.Duration(d)) }

// Report is the outcome of a run. Every ratio is a system's figure divided
// by machq's at the same point (in the RatioAck fields, by machq-ack's),
// so that above 1 machq (machq-ack) is faster.
type Report struct {
	Machine Machine   `json:"machine"`
	Started time.Time `json:"started"`
	Elapsed Duration  `json:"elapsed_ns"`
	// Digest is the digest machq computed and verified in the comparison.
	Digest string `json:"digest"`
	// Spin is the spin budget of machq-spin's server and clients, when
	// machq-spin ran.
	Spin Duration `json:"spin_ns,omitempty"`
	// Placement is how the small-message comparison was placed:
	// "unpinned" (Latency and Throughput), "pinned" (Pinned; Latency
	// holds the larger sizes only) or "both".
	Placement string `json:"placement"`
	// Latency holds the round trips from a []byte in the sender to a
	// []byte in the receiver ("end-to-end") and, for the memfd systems,
	// from a filled page to the receiver's mapping ("zero-copy").
	Latency    []Latency    `json:"latency"`
	Phases     []Phases     `json:"phases,omitempty"`
	Digests    []DigestCost `json:"digests,omitempty"`
	Throughput []Throughput `json:"throughput,omitempty"`
	Memory     []Memory     `json:"memory,omitempty"`
	Stream     *Stream      `json:"stream,omitempty"`
	Durable    *Durable     `json:"durable,omitempty"`
	// Pinned is the small-message comparison with the servers on one
	// CPU and the benchmark on another.
	Pinned *Pinned `json:"pinned,omitempty"`
	// Notes say what was skipped and why.
	Notes []string `json:"notes,omitempty"`
}

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// Machine describes where the figures were measured.
type Machine struct {
	CPU         string `json:"cpu"`
	CPUs        int    `json:"cpus"`
	MemoryBytes int64  `json:"memory_bytes"`
	Kernel      string `json:"kernel"`
	OS          string `json:"os"`
	Go          string `json:"go"`
}

// Views of a round trip.
const (
	EndToEnd = "end-to-end"
	ZeroCopy = "zero-copy"
)

// Latency is one system's round trips at one size.
type Latency struct {
	System string `json:"system"`
	View   string `json:"view"`
	Size   int    `json:"size"`
	// Skipped, when set, says why there are no figures.
	Skipped string   `json:"skipped,omitempty"`
	N       int      `json:"n,omitempty"`
	Median  Duration `json:"median_ns,omitempty"`
	P99     Duration `json:"p99_ns,omitempty"`
	// MBps is the payload size over the median, in 10^6 bytes/s.
	MBps float64 `json:"mb_per_s,omitempty"`
	// Ratio is this system's median over machq's (above 1: machq faster).
	Ratio float64 `json:"ratio_to_machq,omitempty"`
	// RatioAck is, for a system whose receiver acknowledges each message
	// (machq-ack, redis-streams), its median over machq-ack's.
	RatioAck float64 `json:"ratio_to_machq_ack,omitempty"`
}

// Phases is where the time of one out-of-line round trip goes, by phase
// (medians over the iterations).
type Phases struct {
	System string `json:"system"`
	Size   int    `json:"size"`
	N      int    `json:"n"`
	// Create: memfd_create + ftruncate + writable mapping.
	Create Duration `json:"create_ns"`
	// Fill: the producer writing the payload into the mapping.
	Fill Duration `json:"fill_ns"`
	// Seal: unmapping and adding the seals.
	Seal Duration `json:"seal_ns"`
	// Send: the sendmsg(2) of the STORE with the descriptor.
	Send Duration `json:"send_ns"`
	// Store: from the send to the acknowledgement.
	Store Duration `json:"store_ns"`
	// Retrieve: from the RETRIEVE request to the descriptor received.
	Retrieve Duration `json:"retrieve_ns"`
	// Map: mapping the received page read-only without populating it.
	Map Duration `json:"map_ns"`
	// Read: the consumer reading every byte of the mapping.
	Read Duration `json:"read_ns"`
	// MapPopulate and ReadPopulated: the same with MAP_POPULATE.
	MapPopulate   Duration `json:"map_populate_ns"`
	ReadPopulated Duration `json:"read_populated_ns"`
	// Pread: reading the payload into a buffer with pread(2) instead.
	Pread Duration `json:"pread_ns"`
}

// DigestCost is the cost of one digest at one size.
type DigestCost struct {
	Digest string   `json:"digest"`
	Size   int      `json:"size"`
	Median Duration `json:"median_ns"`
	MBps   float64  `json:"mb_per_s"`
}

// Throughput is small-message round trips per second for one system at
// one client count and pipeline depth.
type Throughput struct {
	System  string `json:"system"`
	Size    int    `json:"size"`
	Clients int    `json:"clients"`
	Depth   int    `json:"depth"`
	// Skipped, when set, says why there are no figures.
	Skipped    string  `json:"skipped,omitempty"`
	RoundTrips int64   `json:"round_trips,omitempty"`
	PerSecond  float64 `json:"round_trips_per_s,omitempty"`
	// Ratio is machq's rate over this system's (above 1: machq faster).
	Ratio float64 `json:"ratio_to_machq,omitempty"`
	// RatioAck is, for a system whose receiver acknowledges each message
	// (machq-ack, redis-streams), machq-ack's rate over its own.
	RatioAck float64 `json:"ratio_to_machq_ack,omitempty"`
}

// Pinned is the small-message comparison measured again with each side
// on a CPU of its own: the server processes (machq's, the floors',
// Redis's, the message queue peer), started afresh on ServerCPU, and
// every thread of the benchmark, which drives them, on ClientCPU with
// GOMAXPROCS 1. A thread woken on the CPU it slept on is woken far
// sooner than across CPUs, which small round trips are made of.
type Pinned struct {
	ServerCPU int `json:"server_cpu"`
	ClientCPU int `json:"client_cpu"`
	// MaxSize is the largest payload of Latency's round trips.
	MaxSize int `json:"max_size"`
	// Latency and Throughput are as the report's own, for the sizes up
	// to MaxSize.
	Latency    []Latency    `json:"latency,omitempty"`
	Throughput []Throughput `json:"throughput,omitempty"`
}

// title says where the pinned processes ran.
func (p *Pinned) title() string {
	return fmt.Sprintf("pinned: servers on CPU %d, the benchmark (every thread, GOMAXPROCS 1) on CPU %d", p.ServerCPU, p.ClientCPU)
}

// summary returns a line per size and per throughput shape measured
// both unpinned (in r) and pinned: each system's figure both ways.
func (p *Pinned) summary(r *Report) []string {
	var lines []string
	var sizes []int
	for _, l := range p.Latency {
		if !slices.Contains(sizes, l.Size) {
			sizes = append(sizes, l.Size)
		}
	}
	for _, size := range sizes {
		var parts []string
		for _, pl := range p.Latency {
			if pl.Size != size || pl.Skipped != "" {
				continue
			}
			if u, ok := r.latency(EndToEnd, pl.System, size); ok {
				parts = append(parts, fmt.Sprintf("%s %s -> %s", pl.System, u.Median, pl.Median))
			}
		}
		if len(parts) > 0 {
			lines = append(lines, fmt.Sprintf("placement %s, median round trip unpinned -> pinned: %s", fmtSize(size), strings.Join(parts, ", ")))
		}
	}
	type shape struct{ c, d int }
	var shapes []shape
	for _, t := range p.Throughput {
		if k := (shape{t.Clients, t.Depth}); !slices.Contains(shapes, k) {
			shapes = append(shapes, k)
		}
	}
	for _, sh := range shapes {
		var parts []string
		for _, pt := range p.Throughput {
			if pt.Clients != sh.c || pt.Depth != sh.d || pt.Skipped != "" {
				continue
			}
			if u, ok := r.throughput(pt.System, sh.c, sh.d); ok {
				parts = append(parts, fmt.Sprintf("%s %.0f -> %.0f", pt.System, u.PerSecond, pt.PerSecond))
			}
		}
		if len(parts) > 0 {
			clients := fmt.Sprintf("%d clients", sh.c)
			if sh.c == 1 {
				clients = "1 client"
			}
			lines = append(lines, fmt.Sprintf("placement %s, depth %d, round trips/s unpinned -> pinned: %s", clients, sh.d, strings.Join(parts, ", ")))
		}
	}
	return lines
}

// latency returns the measured row of system at size in view.
func (r *Report) latency(view, system string, size int) (Latency, bool) {
	for _, l := range r.Latency {
		if l.View == view && l.System == system && l.Size == size && l.Skipped == "" && l.Median > 0 {
			return l, true
		}
	}
	return Latency{}, false
}

// throughput returns the measured row of system with clients and depth.
func (r *Report) throughput(system string, clients, depth int) (Throughput, bool) {
	for _, t := range r.Throughput {
		if t.System == system && t.Clients == clients && t.Depth == depth && t.Skipped == "" && t.PerSecond > 0 {
			return t, true
		}
	}
	return Throughput{}, false
}

// Stream is a stream of frames from a producer process through a machq
// named queue to a consumer process that reads every byte of each, with
// each variant of the zero-copy API.
type Stream struct {
	Size   int `json:"size"`
	Frames int `json:"frames"`
	// QueueDepth is the most frames the queue holds; a producer ahead
	// of its consumer waits for room.
	QueueDepth int `json:"queue_depth"`
	Rounds     int `json:"rounds"`
	// Variants are page (NewPage + SendPage) and send (Send from a
	// reused buffer), in that order.
	Variants []StreamVariant `json:"variants"`
	// Ratio is page's frames per second over send's (above 1: page is
	// faster); Target is what it should be at least.
	Ratio  float64 `json:"ratio_page_to_send"`
	Target float64 `json:"target_ratio"`
}

// StreamVariant is one variant's frame rate.
type StreamVariant struct {
	Variant string `json:"variant"`
	API     string `json:"api"`
	// PerSecond is the median over the rounds of frames per second,
	// from the producer starting its first frame to the consumer having
	// read every byte of its last; MBps is the same in 10^6 bytes/s.
	PerSecond float64     `json:"frames_per_s"`
	MBps      float64     `json:"mb_per_s"`
	Runs      []StreamRun `json:"runs"`
}

// StreamRun is one variant's stream in one round.
type StreamRun struct {
	Round int `json:"round"`
	// Elapsed is from the producer starting its first frame to the
	// consumer having read its last; Producer is the producer's own
	// time, to its last frame stored.
	Elapsed   Duration `json:"elapsed_ns"`
	Producer  Duration `json:"producer_ns"`
	PerSecond float64  `json:"frames_per_s"`
}

// Memory is the server's footprint with many messages stored.
type Memory struct {
	Messages     int   `json:"messages"`
	Size         int   `json:"size"`
	PayloadBytes int64 `json:"payload_bytes"`
	BaselineRSS  int64 `json:"baseline_rss_bytes"`
	RSS          int64 `json:"rss_bytes"`
	BaselineFDs  int   `json:"baseline_fds"`
	FDs          int   `json:"fds"`
	// PerMessage is the server's RSS growth per stored message, less the
	// payload bytes it holds in its own memory (inline payloads only).
	PerMessage float64  `json:"bookkeeping_bytes_per_message"`
	StoreTime  Duration `json:"store_ns"`
}

// Durable is the outcome of the durable runs.
type Durable struct {
	// Dir is where their data went, and FileSystem what it is on.
	Dir        string `json:"dir"`
	FileSystem string `json:"file_system"`
	// Size is the payload of the durable stores and of recovery.
	Size     int             `json:"size"`
	Stores   []DurableStores `json:"stores,omitempty"`
	Large    []DurableLarge  `json:"large,omitempty"`
	Recovery *Recovery       `json:"recovery,omitempty"`
}

// DurableStores is one system's durable stores per second with some
// producers, each storing one message at a time and waiting for the
// answer, which comes once the message is on disk.
type DurableStores struct {
	System    string `json:"system"`
	Size      int    `json:"size"`
	Producers int    `json:"producers"`
	// Skipped, when set, says why there are no figures.
	Skipped   string  `json:"skipped,omitempty"`
	Stores    int64   `json:"stores,omitempty"`
	PerSecond float64 `json:"stores_per_s,omitempty"`
	// Ratio is machq's rate over this system's (above 1: machq faster).
	Ratio float64 `json:"ratio_to_machq,omitempty"`
}

// DurableLarge is one large page stored durably, by machq (sent to a
// durable queue, answered once on disk) or by the floor (a kernel copy
// into a new file, fdatasync and a sync of its directory).
type DurableLarge struct {
	System string   `json:"system"`
	Size   int      `json:"size"`
	N      int      `json:"n"`
	Median Duration `json:"median_ns"`
	P99    Duration `json:"p99_ns"`
	// MBps is the size over the median, in 10^6 bytes/s.
	MBps float64 `json:"mb_per_s"`
	// RatioFloor is this median over the floor's (above 1: slower than
	// the floor).
	RatioFloor float64 `json:"ratio_to_floor"`
}

// Recovery is the start of a machqd on a data directory holding many
// durable messages.
type Recovery struct {
	// Messages of Size bytes were stored, as Built says, in StoreTime.
	Messages  int      `json:"messages"`
	Size      int      `json:"size"`
	Built     string   `json:"built"`
	StoreTime Duration `json:"store_ns"`
	// Recovered, Queues, Segments, Records and Took are the server's
	// recovery report (its log record "durable queues recovered"): Took
	// is the time reading the log and replaying it.
	Recovered int      `json:"recovered"`
	Queues    int      `json:"queues"`
	Segments  int      `json:"segments"`
	Records   int      `json:"records"`
	Took      Duration `json:"took_ns"`
	// Serving is from starting the process to a client's STATS
	// answered, which counted Served messages.
	Serving Duration `json:"serving_ns"`
	Served  int64    `json:"served"`
}

// WriteJSON writes r as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes r as tables for people.
func (r *Report) WriteText(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "machine: %s, %d CPUs, %s RAM, Linux %s, %s\n", m.CPU, m.CPUs, fmtSize(int(m.MemoryBytes)), m.Kernel, m.Go)
	fmt.Fprintf(w, "machq digest during the comparison: %s\n", r.Digest)
	if r.Pinned != nil {
		fmt.Fprintf(w, "placement of the small-message comparison: %s (%s)\n", r.Placement, r.Pinned.title())
	}
	for _, view := range []string{EndToEnd, ZeroCopy} {
		r.writeLatency(w, view)
	}
	r.writeStream(w)
	r.writePhases(w)
	r.writeDigests(w)
	r.writeThroughput(w)
	r.writePinned(w)
	r.writeMemory(w)
	r.writeDurable(w)
	if len(r.Notes) > 0 {
		fmt.Fprintln(w, "\nnotes:")
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  - %s\n", n)
		}
	}
	fmt.Fprintf(w, "\nelapsed %s\n", r.Elapsed)
	return nil
}

// unpinnedLabel ends the title of a table measured unpinned when the
// report also has the pinned figures.
func (r *Report) unpinnedLabel() string {
	if r.Pinned == nil {
		return ""
	}
	return ", unpinned (the scheduler places every process)"
}

func (r *Report) writeLatency(w io.Writer, view string) {
	var rows []Latency
	for _, l := range r.Latency {
		if l.View == view {
			rows = append(rows, l)
		}
	}
	switch view {
	case EndToEnd:
		r.writeLatencyRows(w, "store + retrieve round trip, end to end ([]byte in the sender to []byte in the receiver)"+r.unpinnedLabel(), rows)
	case ZeroCopy:
		r.writeLatencyRows(w, "store + retrieve round trip, zero-copy (filled page to the receiver's mapping)"+r.unpinnedLabel(), rows)
	}
}

// writeLatencyRows writes a table of round trips under title.
func (r *Report) writeLatencyRows(w io.Writer, title string, rows []Latency) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s\n", title)
	fmt.Fprintln(w, "x machq: the system's median over machq's; above 1, machq is faster")
	if slices.ContainsFunc(rows, func(l Latency) bool { return l.System == sysMachqSpin }) {
		fmt.Fprintln(w, r.spinLegend())
	}
	ack := slices.ContainsFunc(rows, func(l Latency) bool { return l.RatioAck > 0 })
	if ack {
		fmt.Fprintln(w, ackLegend)
		fmt.Fprintln(w, "x ack: the system's median over machq-ack's; above 1, machq-ack is faster")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "size\tsystem\tmedian\tp99\tMB/s\tx machq\t%sn\t\n", ackColumn(ack, "x ack"))
	last := -1
	for _, l := range rows {
		size := ""
		if l.Size != last {
			size, last = fmtSize(l.Size), l.Size
		}
		if l.Skipped != "" {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t%s-\t  %s\n", size, l.System, ackColumn(ack, "-"), l.Skipped)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s%d\t\n", size, l.System, l.Median, l.P99, fmtRate(l.MBps), fmtRatio(l.Ratio),
			ackColumn(ack, fmtRatio(l.RatioAck)), l.N)
	}
	tw.Flush()
}

// spinLegend says what machq-spin is.
func (r *Report) spinLegend() string {
	return fmt.Sprintf("machq-spin: machq whose server and clients spin up to %s on a read before they park (machqd --spin, WithSpin); up to %s only",
		r.Spin, fmtSize(spinMaxSize))
}

// ackLegend says what the round trip of the ack-mode systems is.
const ackLegend = "machq-ack, redis-streams: store + take + acknowledge (Send + Reserve + Ack; XADD + XREADGROUP + XACK)"

// ackColumn returns the cell s and its separator when the table has a
// column comparing with machq-ack, and nothing when it has none.
func ackColumn(ack bool, s string) string {
	if !ack {
		return ""
	}
	return s + "\t"
}

func (r *Report) writeStream(w io.Writer) {
	s := r.Stream
	if s == nil || len(s.Variants) != 2 {
		return
	}
	fmt.Fprintf(w, "\nstreaming %d frames of %s: producer process -> machq named queue (at most %d frames) -> consumer process reading every byte\n",
		s.Frames, fmtSize(s.Size), s.QueueDepth)
	fmt.Fprintf(w, "frames/s from the producer starting its first frame to the consumer having read its last; median of %d rounds\n", s.Rounds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "variant\tAPI\tframes/s\tMB/s\tframes/s by round\t")
	for _, v := range s.Variants {
		rounds := make([]string, len(v.Runs))
		for i, run := range v.Runs {
			rounds[i] = fmt.Sprintf("%.0f", run.PerSecond)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%s\t%s\t\n", v.Variant, v.API, v.PerSecond, fmtRate(v.MBps), strings.Join(rounds, " "))
	}
	tw.Flush()
	verdict := "missed"
	if s.Ratio >= s.Target {
		verdict = "met"
	}
	fmt.Fprintf(w, "%s over %s: %s (target %.2f or more: %s)\n", s.Variants[0].Variant, s.Variants[1].Variant, fmtRatio(s.Ratio), s.Target, verdict)
}

func (r *Report) writePhases(w io.Writer) {
	if len(r.Phases) == 0 {
		return
	}
	fmt.Fprintln(w, "\nwhere an out-of-line round trip's time goes (medians)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "size\tsystem\tcreate\tfill\tseal\tsend\tstore\tretrieve\tmap\tread\tmap+pop\tread\tpread\t")
	last := -1
	for _, p := range r.Phases {
		size := ""
		if p.Size != last {
			size, last = fmtSize(p.Size), p.Size
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", size, p.System,
			p.Create, p.Fill, p.Seal, p.Send, p.Store, p.Retrieve, p.Map, p.Read, p.MapPopulate, p.ReadPopulated, p.Pread)
	}
	tw.Flush()
}

func (r *Report) writeDigests(w io.Writer) {
	if len(r.Digests) == 0 {
		return
	}
	fmt.Fprintln(w, "\ndigest cost (computed once by the sender, once by the receiver)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	var names []string
	for _, d := range r.Digests {
		if !slices.Contains(names, d.Digest) {
			names = append(names, d.Digest)
		}
	}
	fmt.Fprintf(tw, "size\t%s\t\n", strings.Join(names, "\t"))
	bySize := map[int][]string{}
	var sizes []int
	for _, d := range r.Digests {
		if _, ok := bySize[d.Size]; !ok {
			sizes = append(sizes, d.Size)
		}
		bySize[d.Size] = append(bySize[d.Size], fmt.Sprintf("%s (%s MB/s)", d.Median, fmtRate(d.MBps)))
	}
	for _, s := range sizes {
		fmt.Fprintf(tw, "%s\t%s\t\n", fmtSize(s), strings.Join(bySize[s], "\t"))
	}
	tw.Flush()
}

func (r *Report) writeThroughput(w io.Writer) {
	r.writeThroughputRows(w, "small-message throughput (store + retrieve round trips per second)"+r.unpinnedLabel(), r.Throughput)
}

// writeThroughputRows writes a table of round trips per second under
// title.
func (r *Report) writeThroughputRows(w io.Writer, title string, rows []Throughput) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s\n", title)
	fmt.Fprintln(w, "x machq: machq's rate over the system's; above 1, machq is faster")
	if slices.ContainsFunc(rows, func(t Throughput) bool { return t.System == sysMachqSpin }) {
		fmt.Fprintln(w, r.spinLegend())
	}
	ack := slices.ContainsFunc(rows, func(t Throughput) bool { return t.RatioAck > 0 })
	if ack {
		fmt.Fprintln(w, ackLegend)
		fmt.Fprintln(w, "x ack: machq-ack's rate over the system's; above 1, machq-ack is faster")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "size\tclients\tdepth\tsystem\tround trips/s\tx machq\t%s\n", ackColumn(ack, "x ack"))
	type key struct{ c, d int }
	var last key
	for i, t := range rows {
		c, d := "", ""
		if k := (key{t.Clients, t.Depth}); i == 0 || k != last {
			c, d, last = fmt.Sprint(t.Clients), fmt.Sprint(t.Depth), k
		}
		if t.Skipped != "" {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t-\t-\t%s  %s\n", fmtSize(t.Size), c, d, t.System, ackColumn(ack, "-"), t.Skipped)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0f\t%s\t%s\n", fmtSize(t.Size), c, d, t.System, t.PerSecond, fmtRatio(t.Ratio),
			ackColumn(ack, fmtRatio(t.RatioAck)))
	}
	tw.Flush()
}

// writePinned writes the pinned tables, and each pinned figure beside
// its unpinned one.
func (r *Report) writePinned(w io.Writer) {
	p := r.Pinned
	if p == nil {
		return
	}
	r.writeLatencyRows(w, fmt.Sprintf("store + retrieve round trip, end to end, up to %s, %s", fmtSize(p.MaxSize), p.title()), p.Latency)
	r.writeThroughputRows(w, "small-message throughput (store + retrieve round trips per second), "+p.title(), p.Throughput)

	var lat [][]string
	for _, pl := range p.Latency {
		if u, ok := r.latency(EndToEnd, pl.System, pl.Size); ok && pl.Skipped == "" && pl.Median > 0 {
			lat = append(lat, []string{fmtSize(pl.Size), pl.System, u.Median.String(), pl.Median.String(), fmtRatio(float64(pl.Median) / float64(u.Median))})
		}
	}
	if len(lat) > 0 {
		fmt.Fprintln(w, "\npinned against unpinned, median round trip (pinned/unpinned below 1: faster pinned)")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "size\tsystem\tunpinned\tpinned\tpinned/unpinned\t")
		last := ""
		for _, row := range lat {
			if row[0] == last {
				row[0] = ""
			} else {
				last = row[0]
			}
			fmt.Fprintf(tw, "%s\t\n", strings.Join(row, "\t"))
		}
		tw.Flush()
	}
	var tp [][]string
	for _, pt := range p.Throughput {
		if u, ok := r.throughput(pt.System, pt.Clients, pt.Depth); ok && pt.Skipped == "" && pt.PerSecond > 0 {
			tp = append(tp, []string{fmt.Sprint(pt.Clients), fmt.Sprint(pt.Depth), pt.System, fmt.Sprintf("%.0f", u.PerSecond),
				fmt.Sprintf("%.0f", pt.PerSecond), fmtRatio(pt.PerSecond / u.PerSecond)})
		}
	}
	if len(tp) > 0 {
		fmt.Fprintln(w, "\npinned against unpinned, small-message round trips per second (pinned/unpinned above 1: faster pinned)")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "clients\tdepth\tsystem\tunpinned\tpinned\tpinned/unpinned\t")
		last := ""
		for _, row := range tp {
			if k := row[0] + "/" + row[1]; k == last {
				row[0], row[1] = "", ""
			} else {
				last = k
			}
			fmt.Fprintf(tw, "%s\t\n", strings.Join(row, "\t"))
		}
		tw.Flush()
	}
}

func (r *Report) writeMemory(w io.Writer) {
	if len(r.Memory) == 0 {
		return
	}
	fmt.Fprintln(w, "\nserver memory with messages stored")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "messages\tsize\tpayload\tRSS before\tRSS after\tfds before\tfds after\tbookkeeping/msg\t")
	for _, m := range r.Memory {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%.0f B\t\n", m.Messages, fmtSize(m.Size), fmtSize(int(m.PayloadBytes)),
			fmtSize(int(m.BaselineRSS)), fmtSize(int(m.RSS)), m.BaselineFDs, m.FDs, m.PerMessage)
	}
	tw.Flush()
}

func (r *Report) writeDurable(w io.Writer) {
	d := r.Durable
	if d == nil {
		return
	}
	if len(d.Stores) > 0 {
		fmt.Fprintf(w, "\ndurable stores of %s per second, each answered once on disk (%s, %s)\n", fmtSize(d.Size), d.Dir, d.FileSystem)
		fmt.Fprintln(w, "each producer stores one message at a time; machq: a durable named queue of machqd --data-dir; redis-aof: RPUSH, appendfsync always")
		fmt.Fprintln(w, "x machq: machq's rate over the system's; above 1, machq is faster")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "producers\tsystem\tstores/s\tx machq\t")
		last := 0
		for _, s := range d.Stores {
			p := ""
			if s.Producers != last {
				p, last = fmt.Sprint(s.Producers), s.Producers
			}
			if s.Skipped != "" {
				fmt.Fprintf(tw, "%s\t%s\t-\t-\t  %s\n", p, s.System, s.Skipped)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%s\t\n", p, s.System, s.PerSecond, fmtRatio(s.Ratio))
		}
		tw.Flush()
	}
	if len(d.Large) > 0 {
		fmt.Fprintf(w, "\ndurable store of a %s page, answered once on disk\n", fmtSize(d.Large[0].Size))
		fmt.Fprintln(w, "machq: SendFile of a sealed memfd to a durable queue; file+sync: the floor, a kernel copy of it into a new file, fdatasync, and a sync of the directory")
		fmt.Fprintln(w, "x floor: the system's median over the floor's; above 1, the floor is faster")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "system\tmedian\tp99\tMB/s\tx floor\tn\t")
		for _, l := range d.Large {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t\n", l.System, l.Median, l.P99, fmtRate(l.MBps), fmtRatio(l.RatioFloor), l.N)
		}
		tw.Flush()
	}
	if rc := d.Recovery; rc != nil {
		fmt.Fprintf(w, "\nrecovery of %d durable messages of %s (%s, in %s)\n", rc.Messages, fmtSize(rc.Size), rc.Built, rc.StoreTime)
		fmt.Fprintln(w, "took: the server's recovery report (reading and replaying the log); serving: from starting machqd to a client's STATS answered")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "recovered\tqueues\tsegments\trecords\ttook\tserving\t")
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%s\t%s\t\n", rc.Recovered, rc.Queues, rc.Segments, rc.Records, rc.Took, rc.Serving)
		tw.Flush()
	}
}

// fmtSize formats n bytes with a binary unit.
func fmtSize(n int) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// fmtDuration rounds d to three significant digits.
func fmtDuration(d time.Duration) string {
	for _, unit := range []time.Duration{time.Second, time.Millisecond, time.Microsecond} {
		if d >= unit {
			r := unit / 100
			switch {
			case d >= 100*unit:
				r = unit
			case d >= 10*unit:
				r = unit / 10
			}
			return d.Round(r).String()
		}
	}
	return d.String()
}

func fmtRate(mbps float64) string {
	switch {
	case mbps == 0:
		return "-"
	case mbps < 10:
		return fmt.Sprintf("%.2f", mbps)
	case mbps < 100:
		return fmt.Sprintf("%.1f", mbps)
	}
	return fmt.Sprintf("%.0f", mbps)
}

func fmtRatio(r float64) string {
	if r == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", r)
}
