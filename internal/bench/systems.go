package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/bench/floor"
	"github.com/machq/machq/internal/bench/redis"
	"github.com/machq/machq/internal/peerproc"
	"github.com/machq/machq/internal/wire"
)

// System names, in the order they are reported.
const (
	sysMachq        = "machq"
	sysMachqSpin    = "machq-spin"
	sysMachqMetrics = "machq-metrics"
	sysMachqInline  = "machq-inline"
	sysMachqMemfd   = "machq-memfd"
	sysMachqAck     = "machq-ack"
	sysMemfd        = "memfd"
	sysCopy         = "copy"
	sysRedis        = "redis"
	sysRedisStreams = "redis-streams"
	sysMqueue       = "mqueue"
)

// SystemNames lists the systems a run can measure:
//
//	machq          machq as shipped: inline up to 64 KiB, memfd above
//	machq-spin     machq with its server and clients spinning before they
//	               park on a read (machqd --spin, WithSpin; Config.Spin),
//	               up to 64 KiB
//	machq-metrics  machq with its server counting Prometheus metrics
//	               (machqd --metrics), gathered every second, up to 64 KiB
//	machq-inline   machq with every payload inline (up to 1 MiB)
//	machq-memfd    machq with every non-empty payload in a memfd
//	machq-ack      machq in ack mode: Send + Reserve + Ack
//	memfd          bare floor: a sealed memfd passed with SCM_RIGHTS
//	copy           bare floor: the bytes copied through a stream socket
//	redis          Redis RPUSH + LPOP over a Unix socket
//	redis-streams  Redis Streams XADD + XREADGROUP + XACK over a Unix socket
//	mqueue         POSIX message queues between two processes
func SystemNames() []string {
	return []string{sysMachq, sysMachqSpin, sysMachqMetrics, sysMachqInline, sysMachqMemfd, sysMachqAck, sysMemfd, sysCopy, sysRedis, sysRedisStreams, sysMqueue}
}

// ackSystems are the systems whose round trip ends with the receiver
// acknowledging the message, which the report also compares with
// machq-ack.
var ackSystems = []string{sysMachqAck, sysRedisStreams}

func knownSystem(name string) bool { return slices.Contains(SystemNames(), name) }

// spinMaxSize is the largest payload machq-spin carries: spinning is
// about the wake-up of small requests, which the large ones do not wait
// on long enough for it to show.
const spinMaxSize = 64 << 10

// spinLimit says why machq-spin is not measured above spinMaxSize.
var spinLimit = fmt.Sprintf("not measured above %s: spinning is about the wake-up of small requests", fmtSize(spinMaxSize))

// target is one client connection to a system under test.
type target interface {
	// RoundTrip stores p, waits for the acknowledgement, retrieves it and
	// calls got with the bytes received, valid only during the call.
	RoundTrip(p []byte, got func([]byte)) error
	// Pipeline stores depth copies of p, then retrieves depth payloads,
	// with as few waits as the system allows.
	Pipeline(p []byte, depth int, got func([]byte)) error
	Close() error
}

// system is one system under test.
type system struct {
	name string
	// maxSize is the largest payload it can carry; limit says why.
	maxSize int
	limit   string
	// dial connects a client for payloads of size bytes.
	dial func(ctx context.Context, size int) (target, error)
}

const unlimited = int(^uint(0) >> 1)

// environment is the state of one run: the peers and the systems.
type environment struct {
	cfg    *Config
	dir    string
	report *Report
	peers  []*peerproc.Process
	// label starts each progress line: "pinned " for the pinned part.
	label string

	machqPath string
	machqPID  int // 0 when measuring a server started elsewhere
	// spinPath is the socket of machq-spin's server, a machqd of its own
	// started with Config.Spin; "" when it does not run.
	spinPath string
	floors   map[floor.Mechanism]string
	redis    *redis.Server
	systems  []*system
}

func (e *environment) wanted(name string) bool {
	return len(e.cfg.Systems) == 0 || slices.Contains(e.cfg.Systems, name)
}

// start starts every peer the selected systems need.
func (e *environment) start(ctx context.Context) error {
	e.machqPath = e.cfg.Socket
	if e.machqPath == "" {
		e.machqPath = filepath.Join(e.dir, "machq.sock")
		p, err := e.startPeer(ctx, peerMachq, e.machqPath)
		if err != nil {
			return err
		}
		e.machqPID = p.PID()
	}
	// The server's own inline limit bounds machq-inline; its protocol
	// version says whether it has ack mode.
	maxInline, version := wire.MaxInline, 0
	if c, err := e.dialMachq(ctx, machq.WithInlineThreshold(0)); err != nil {
		return err
	} else {
		maxInline, version = c.MaxInline(), c.ProtocolVersion()
		c.Close()
	}
	e.systems = append(e.systems,
		&system{name: sysMachq, maxSize: unlimited, dial: e.machqDialer(e.machqPath, machq.DefaultInlineThreshold, false)},
		&system{name: sysMachqInline, maxSize: maxInline, limit: fmt.Sprintf("larger than the server's inline limit (%s)", fmtSize(maxInline)),
			dial: e.machqDialer(e.machqPath, maxInline, false)},
		&system{name: sysMachqMemfd, maxSize: unlimited, dial: e.machqDialer(e.machqPath, 0, false)},
	)
	if version >= wire.VersionAck {
		e.systems = append(e.systems, &system{name: sysMachqAck, maxSize: unlimited, dial: e.machqDialer(e.machqPath, machq.DefaultInlineThreshold, true)})
	} else if e.wanted(sysMachqAck) {
		e.report.note("machq-ack: skipped: the server speaks protocol version %d; ack mode needs %d", version, wire.VersionAck)
	}

	if e.wanted(sysMachqSpin) {
		if err := e.startSpin(ctx); err != nil {
			return err
		}
	}
	if e.wanted(sysMachqMetrics) {
		if err := e.startMetrics(ctx); err != nil {
			return err
		}
	}

	e.floors = map[floor.Mechanism]string{}
	for _, m := range []floor.Mechanism{floor.Memfd, floor.Copy} {
		name := sysMemfd
		if m == floor.Copy {
			name = sysCopy
		}
		if !e.wanted(name) && !(m == floor.Memfd && !e.cfg.SkipZeroCopy && e.wanted(sysMachq)) {
			continue
		}
		path := filepath.Join(e.dir, "floor-"+m.String()+".sock")
		if _, err := e.startPeer(ctx, peerFloor, m.String(), path); err != nil {
			return err
		}
		e.floors[m] = path
		e.systems = append(e.systems, &system{name: name, maxSize: unlimited, dial: func(context.Context, int) (target, error) {
			return floor.Dial(path, m)
		}})
	}

	if e.wanted(sysRedis) || e.wanted(sysRedisStreams) {
		dir := filepath.Join(e.dir, "redis")
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		srv, err := redis.Start(ctx, dir)
		switch {
		case errors.Is(err, redis.ErrNotInstalled):
			e.report.note("redis: skipped: %v", err)
		case err != nil:
			return err
		default:
			e.redis = srv
			e.report.note("redis: redis-server %s, persistence off, over a Unix socket", srv.Version())
			e.systems = append(e.systems, &system{name: sysRedis, maxSize: unlimited, dial: func(context.Context, int) (target, error) {
				return redis.Dial(srv.Path())
			}})
			switch {
			case !e.wanted(sysRedisStreams):
			case redisMajor(srv.Version()) < 5:
				e.report.note("redis-streams: skipped: redis-server %s has no streams (5.0 or later has)", srv.Version())
			default:
				e.report.note("redis-streams: each client's own stream, read through a consumer group; every XADD trims the stream (MAXLEN ~ the entries it adds), since XACK leaves acknowledged entries in it")
				e.systems = append(e.systems, &system{name: sysRedisStreams, maxSize: unlimited, dial: func(context.Context, int) (target, error) {
					return redis.DialStream(srv.Path())
				}})
			}
		}
	}

	if e.wanted(sysMqueue) {
		s, err := e.startMqueue(ctx)
		if err != nil {
			return err
		}
		if s != nil {
			e.systems = append(e.systems, s)
		}
	}
	e.systems = slices.DeleteFunc(e.systems, func(s *system) bool { return !e.wanted(s.name) })
	return nil
}

// redisMajor returns the major version of a Redis version such as
// "7.0.15", or 0 if it has none.
func redisMajor(version string) int {
	major, _, _ := strings.Cut(version, ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		return 0
	}
	return n
}

func (e *environment) close() {
	if e.redis != nil {
		e.redis.Close()
	}
	for _, p := range e.peers {
		p.Stop()
	}
}

// startSpin starts machq-spin's server: a machqd like machq's but for
// its spin (machqd --spin Config.Spin, --spin-readers left to its
// default), whose clients spin as long (WithSpin).
func (e *environment) startSpin(ctx context.Context) error {
	if e.cfg.Socket != "" {
		e.report.note("%s: skipped: --socket measures a server the benchmark did not start; machq-spin needs a machqd of its own, started with --spin", sysMachqSpin)
		return nil
	}
	path := filepath.Join(e.dir, "machq-spin.sock")
	if _, err := e.startPeer(ctx, peerMachq, path, "--spin="+e.cfg.Spin.String()); err != nil {
		return err
	}
	e.spinPath = path
	e.report.Spin = Duration(e.cfg.Spin)
	e.report.note("%s: machq as the machq system runs it (same inline threshold, digest and limits) but spinning: its server, a machqd of its own, keeps reading a connection for up to %s before it parks (machqd --spin %s; --spin-readers left to its default, half the CPUs, at least 1), and so does each client waiting for an answer (WithSpin(%s)); x machq compares it with machq, which does not spin; %s",
		sysMachqSpin, e.cfg.Spin, e.cfg.Spin, e.cfg.Spin, spinLimit)
	e.systems = append(e.systems, &system{name: sysMachqSpin, maxSize: spinMaxSize, limit: spinLimit,
		dial: e.machqDialer(path, machq.DefaultInlineThreshold, false, machq.WithSpin(e.cfg.Spin))})
	return nil
}

// metricsMaxSize is the largest payload machq-metrics carries: what
// metrics cost is per request, and shows where requests are cheapest.
const metricsMaxSize = 64 << 10

// metricsLimit says why machq-metrics is not measured above
// metricsMaxSize.
var metricsLimit = fmt.Sprintf("not measured above %s: metrics cost per request, and show most on small ones", fmtSize(metricsMaxSize))

// metricsScrape is how often machq-metrics's server gathers its metrics,
// as a Prometheus server scraping it would (more often than the usual
// 15 s or more, so that its cost is not understated).
const metricsScrape = time.Second

// startMetrics starts machq-metrics's server: a machqd like machq's but
// counting its metrics, as machqd --metrics does, and gathering them
// every metricsScrape.
func (e *environment) startMetrics(ctx context.Context) error {
	if e.cfg.Socket != "" {
		e.report.note("%s: skipped: --socket measures a server the benchmark did not start; machq-metrics needs a machqd of its own, counting metrics", sysMachqMetrics)
		return nil
	}
	path := filepath.Join(e.dir, "machq-metrics.sock")
	if _, err := e.startPeer(ctx, peerMachq, path, "--metrics-scrape="+metricsScrape.String()); err != nil {
		return err
	}
	e.report.note("%s: machq as the machq system runs it (same inline threshold, digest and limits, no spinning) but its server, a machqd of its own, counts Prometheus metrics as machqd --metrics does (every request's latency, errors, deliveries) and gathers them all every %s, as a Prometheus server scraping it would; x machq compares it with machq, which counts none; %s",
		sysMachqMetrics, metricsScrape, metricsLimit)
	e.systems = append(e.systems, &system{name: sysMachqMetrics, maxSize: metricsMaxSize, limit: metricsLimit,
		dial: e.machqDialer(path, machq.DefaultInlineThreshold, false)})
	return nil
}

// dialMachq connects to machq's server with the comparison's digest.
func (e *environment) dialMachq(ctx context.Context, opts ...machq.Option) (*machq.Client, error) {
	return e.dialMachqAt(ctx, e.machqPath, opts...)
}

// dialMachqAt connects to the machq server at path with the comparison's
// digest.
func (e *environment) dialMachqAt(ctx context.Context, path string, opts ...machq.Option) (*machq.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	opts = append([]machq.Option{machq.WithDigest(e.cfg.Digest)}, opts...)
	return machq.Dial(dctx, path, opts...)
}

// machqDialer returns the dial function of a machq system whose server
// listens at path, with the inline threshold inline, in ack mode if ack,
// and with the options opts besides.
func (e *environment) machqDialer(path string, inline int, ack bool, opts ...machq.Option) func(context.Context, int) (target, error) {
	opts = append([]machq.Option{machq.WithInlineThreshold(inline)}, opts...)
	return func(ctx context.Context, _ int) (target, error) {
		dial := func() (*machq.Client, error) { return e.dialMachqAt(ctx, path, opts...) }
		c, err := dial()
		if err != nil {
			return nil, err
		}
		return &machqTarget{ctx: ctx, c: c, dial: dial, ack: ack}, nil
	}
}

// machqTarget drives machq through its client library, in the private
// queue, as an application would. In ack mode it takes each message with
// Reserve and, once the bytes are read, acknowledges it with Ack.
type machqTarget struct {
	ctx   context.Context
	c     *machq.Client
	dial  func() (*machq.Client, error)
	ack   bool
	batch [][]byte
}

// settle reconnects: Close waits for a spare page being allocated in the
// background and frees it, so that it neither slows the next system down
// nor carries over to the next round.
func (t *machqTarget) settle() error {
	t.c.Close()
	c, err := t.dial()
	if err != nil {
		return err
	}
	t.c = c
	return nil
}

func (t *machqTarget) RoundTrip(p []byte, got func([]byte)) error {
	if _, err := t.c.Send(t.ctx, "", p); err != nil {
		return err
	}
	if t.ack {
		return t.reserve(got)
	}
	return t.retrieve(got)
}

// reserve takes the oldest message in ack mode, hands its bytes to got
// and acknowledges it.
func (t *machqTarget) reserve(got func([]byte)) error {
	d, err := t.c.Reserve(t.ctx, "", nil)
	if d != nil {
		defer d.Close()
	}
	if err != nil {
		return err
	}
	got(d.Bytes())
	return d.Ack(t.ctx)
}

func (t *machqTarget) retrieve(got func([]byte)) error {
	m, err := t.c.Retrieve(t.ctx, "")
	if m != nil {
		defer m.Close()
	}
	if err != nil {
		return err
	}
	got(m.Bytes())
	return nil
}

// Pipeline stores depth copies of p with one SendBatch, then takes them
// back with one RetrieveBatch: each is one write and one wait. In ack
// mode it takes them with one ReserveBatch, reads them, and acknowledges
// them with one AckBatch.
func (t *machqTarget) Pipeline(p []byte, depth int, got func([]byte)) error {
	if cap(t.batch) < depth {
		t.batch = make([][]byte, depth)
	}
	batch := t.batch[:depth]
	for i := range batch {
		batch[i] = p
	}
	if err := t.c.SendBatch(t.ctx, "", batch); err != nil {
		return err
	}
	if t.ack {
		return t.reserveBatch(depth, got)
	}
	msgs, err := t.c.RetrieveBatch(t.ctx, "", depth)
	for _, m := range msgs {
		if err == nil {
			got(m.Bytes())
		}
		m.Close()
	}
	if err == nil && len(msgs) != depth {
		err = fmt.Errorf("retrieved %d of the %d messages stored", len(msgs), depth)
	}
	return err
}

// reserveBatch takes n messages in ack mode in one write, reads each,
// and acknowledges them all in another.
func (t *machqTarget) reserveBatch(n int, got func([]byte)) error {
	ds, err := t.c.ReserveBatch(t.ctx, "", n, nil)
	if err == nil {
		for _, d := range ds {
			got(d.Bytes())
		}
		err = t.c.AckBatch(t.ctx, ds)
	}
	for _, d := range ds {
		d.Close()
	}
	if err == nil && len(ds) != n {
		err = fmt.Errorf("reserved %d of the %d messages stored", len(ds), n)
	}
	return err
}

func (t *machqTarget) Close() error { return t.c.Close() }
