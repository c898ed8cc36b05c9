// Package metrics serves a machq server's metrics to Prometheus
// (machqd --metrics), through Prometheus's own client library: the text
// format, the process and Go runtime collectors and the HTTP handler are
// theirs.
//
// Two kinds of metric are served. Events (requests and their latency,
// errors by code, limit refusals, deliveries, dead letters, syncs of the
// durable log) are counted as they happen: Metrics implements
// server.Observer, each event an atomic add or two. What the server holds
// (queues, consumer groups, users, pages, descriptors, the durable log)
// is read from its statistics (server.Stats) when Prometheus scrapes, so
// it costs nothing in between.
//
// Series per named queue, consumer group and user are bounded: at most
// Options.MaxQueues queues (the deepest) and as many users (the ones
// holding the most) get series of their own; the rest are summed into a
// series whose label is empty, and machq_queues_unlabelled says how many
// queues went there.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/machq/machq/internal/stats"
	"github.com/machq/machq/internal/wire"
)

// DefaultMaxQueues is how many named queues, and how many users, get
// series of their own unless Options say otherwise.
const DefaultMaxQueues = 100

// Options tune Metrics.
type Options struct {
	// MaxQueues bounds the named queues, and separately the users, with
	// series of their own (0: DefaultMaxQueues).
	MaxQueues int
	// Durable registers the durable log's metrics (the server keeps
	// durable queues).
	Durable bool
	// Version is the server's version, served as machq_build_info.
	Version string
	// StatsInterval is the least time between two readings of the
	// server's statistics: scrapes closer together are served the last
	// reading, so that no one scraping in a loop can make the server
	// walk every queue and connection more often. 0:
	// DefaultStatsInterval; negative: every scrape reads them.
	StatsInterval time.Duration
}

// DefaultStatsInterval is the default of Options.StatsInterval.
const DefaultStatsInterval = time.Second

// Metrics counts a server's events and gathers its statistics for
// Prometheus. Create one with New, give it to the server as its
// server.Config.Observer, and tell it where to read statistics with
// Watch. Its methods are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	handled   [256]prometheus.Observer // by operation; nil: not a request
	otherOp   prometheus.Observer
	failed    *prometheus.CounterVec
	refused   *prometheus.CounterVec
	delivered [2]prometheus.Counter // plain, ack mode
	redeliver prometheus.Counter
	dead      *prometheus.CounterVec
	syncTook  prometheus.Histogram
	syncSize  prometheus.Histogram

	held *holdings
}

// requestOps are the operations a client may send.
var requestOps = []wire.Op{
	wire.OpHello, wire.OpStore, wire.OpRetrieve, wire.OpCancel, wire.OpStat,
	wire.OpDisown, wire.OpAck, wire.OpNak, wire.OpTouch, wire.OpTerm,
	wire.OpKick, wire.OpPeek, wire.OpPurge, wire.OpDelete, wire.OpGroup, wire.OpConfig,
}

// New returns Metrics registering every machq metric, the process's and
// the Go runtime's.
func New(opts Options) *Metrics {
	if opts.MaxQueues <= 0 {
		opts.MaxQueues = DefaultMaxQueues
	}
	m := &Metrics{reg: prometheus.NewRegistry()}
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "machq_request_duration_seconds",
		Help: "Time the server took to handle a request, from its frame read whole to its answer queued or the request parked to wait (waits and syncs not included), by operation; _count counts requests.",
		// 1µs to about 4s, by fours.
		Buckets: prometheus.ExponentialBuckets(1e-6, 4, 12),
	}, []string{"op"})
	for _, op := range requestOps {
		m.handled[op] = latency.WithLabelValues(op.String())
	}
	m.otherOp = latency.WithLabelValues("unknown")
	m.failed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "machq_errors_total",
		Help: "ERROR answers sent, by code (docs/PROTOCOL.md section 7); EMPTY and CANCELLED are ordinary outcomes.",
	}, []string{"code"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "machq_limit_refusals_total",
		Help: "Requests and connections refused with LIMIT, by the limit (the machqd flag that sets it).",
	}, []string{"limit"})
	deliveries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "machq_deliveries_total",
		Help: "Messages handed to consumers, by mode (plain: removed; ack: held until settled); every redelivery counts.",
	}, []string{"mode"})
	m.delivered[0] = deliveries.WithLabelValues("plain")
	m.delivered[1] = deliveries.WithLabelValues("ack")
	m.redeliver = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "machq_redeliveries_total",
		Help: "Ack-mode deliveries of a message delivered before (its consumer NAKed it, let its lease run out, or went away).",
	})
	m.dead = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "machq_dead_letters_total",
		Help: "Messages that became dead letters, by reason (term: TERM; max-deliveries: delivered too often).",
	}, []string{"reason"})
	m.dead.WithLabelValues("term")
	m.dead.WithLabelValues("max-deliveries")
	m.reg.MustRegister(latency, m.failed, m.refused, deliveries, m.redeliver, m.dead,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "machq_build_info",
			Help:        "Always 1; the version label is machqd's.",
			ConstLabels: prometheus.Labels{"version": opts.Version},
		}, func() float64 { return 1 }),
	)
	if opts.Durable {
		m.syncTook = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "machq_journal_sync_duration_seconds",
			Help: "Time each sync (fdatasync) of the durable queues' log took.",
			// 10µs to about 10s, by fours.
			Buckets: prometheus.ExponentialBuckets(1e-5, 4, 11),
		})
		m.syncSize = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "machq_journal_sync_records",
			Help: "Records each sync of the durable queues' log made durable: the size of a group commit.",
			// 1 to 4096, by twos.
			Buckets: prometheus.ExponentialBuckets(1, 2, 13),
		})
		m.reg.MustRegister(m.syncTook, m.syncSize)
	}
	if opts.StatsInterval == 0 {
		opts.StatsInterval = DefaultStatsInterval
	}
	m.held = &holdings{max: opts.MaxQueues, fresh: max(opts.StatsInterval, 0)}
	m.reg.MustRegister(m.held)
	return m
}

// Watch makes every scrape from now on read the server's statistics from
// stats (server.Server.Stats); until it is called nothing held is
// served.
func (m *Metrics) Watch(stats func() stats.Stats) {
	m.held.mu.Lock()
	m.held.read, m.held.when = stats, time.Time{}
	m.held.mu.Unlock()
}

// Registry returns the registry every metric is in, for a test or a
// program that serves it with others.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler returns the HTTP handler of the metrics, in Prometheus's text
// (or, as asked, OpenMetrics) format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
		EnableOpenMetrics:   true,
	})
}

// Handled implements server.Observer.
func (m *Metrics) Handled(op uint8, took time.Duration) {
	h := m.handled[op]
	if h == nil {
		h = m.otherOp
	}
	h.Observe(took.Seconds())
}

// Failed implements server.Observer.
func (m *Metrics) Failed(code, limit string) {
	m.failed.WithLabelValues(code).Inc()
	if limit != "" {
		m.refused.WithLabelValues(limit).Inc()
	}
}

// Delivered implements server.Observer.
func (m *Metrics) Delivered(ack, redelivery bool) {
	if ack {
		m.delivered[1].Inc()
	} else {
		m.delivered[0].Inc()
	}
	if redelivery {
		m.redeliver.Inc()
	}
}

// DeadLettered implements server.Observer.
func (m *Metrics) DeadLettered(reason string) {
	m.dead.WithLabelValues(reason).Inc()
}

// Synced implements server.Observer.
func (m *Metrics) Synced(took time.Duration, records int) {
	if m.syncTook == nil {
		return
	}
	m.syncTook.Observe(took.Seconds())
	m.syncSize.Observe(float64(records))
}

// uidLabel is a user id as a label value.
func uidLabel(uid uint32) string { return strconv.FormatUint(uint64(uid), 10) }
