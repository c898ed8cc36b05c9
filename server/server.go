package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/machq/machq/internal/delivery"
	"github.com/machq/machq/internal/naming"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/quota"
	"github.com/machq/machq/internal/ratelog"
	"github.com/machq/machq/internal/spin"
	"github.com/machq/machq/internal/stats"
	"github.com/machq/machq/internal/wire"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("machq: server closed")

// DefaultMaxMessageSize is the default for Config.MaxMessageSize: 4 GiB.
const DefaultMaxMessageSize = 4 << 30

// DefaultSpin is the default for Config.Spin in machqd (--spin).
const DefaultSpin = 0

// DefaultFrameTimeout is the default for Config.FrameTimeout. A client
// writes a frame with one sendmsg, and the server reads it as it comes: on
// a Unix socket the whole of even the largest frame arrives in
// milliseconds.
const DefaultFrameTimeout = 3 * time.Second

// DefaultLogRate is the most records of one level and message the server
// logs per second (Config.LogRate).
const DefaultLogRate = 100

// Config configures a Server. The zero value is ready to use.
type Config struct {
	// Logger receives the server's structured logs. Every step of every
	// request is logged at slog.LevelInfo, connections and failures at
	// Info and Warn. Nil discards them.
	Logger *slog.Logger
	// LogRate bounds what the server logs, so that hostile clients
	// cannot flood the log: at most LogRate records of one level and
	// message per second, the rest counted in a summary record
	// (internal/ratelog). Zero means DefaultLogRate; a negative value
	// means no bound (for a Logger that is bounded already).
	LogRate int

	// MaxMessageSize is the largest payload, in bytes, the server stores.
	// Zero means DefaultMaxMessageSize.
	MaxMessageSize int64

	// MaxInline is the largest payload, in bytes, the server accepts
	// inside a frame instead of as a memfd; clients learn it at the
	// handshake. Zero means 1 MiB, which is also the most allowed; a
	// negative value accepts no payload inline but the empty one, so
	// every other travels as a page.
	MaxInline int

	// DrainTimeout bounds how long a closing connection may take to flush
	// its last responses to a client that is not reading. Zero means 5s.
	DrainTimeout time.Duration

	// HandshakeTimeout bounds how long a new connection may take to send
	// HELLO; a client that connects and sends nothing is disconnected
	// after it. Zero means 10s.
	HandshakeTimeout time.Duration

	// FrameTimeout bounds how long the rest of a frame may take to arrive
	// once its first byte has: a client that starts a frame and stalls is
	// disconnected after it, so that partly received frames cannot pin
	// the server's memory. Zero means DefaultFrameTimeout.
	FrameTimeout time.Duration

	// Spin is the longest a connection's reader keeps trying to read
	// the next request, on its CPU, before it parks until the socket is
	// readable: a client that answers within microseconds is served
	// without the wake-up of a parked goroutine (see internal/spin). How
	// long it spins adapts to how soon requests come, and at most
	// SpinReaders connections spin at once. Zero turns spinning off.
	Spin time.Duration

	// SpinReaders bounds how many connections spin at once. Zero means
	// half the CPUs the process may use, at least one.
	SpinReaders int

	// Limits bounds connections and what they may store.
	Limits Limits

	// Ack tunes acknowledged delivery: leases, credit, redeliveries and
	// dead letters.
	Ack AckConfig

	// Access says which users besides the server's own and root may
	// connect.
	Access Access

	// Durable, if not nil, makes named queues durable in a data
	// directory (docs/STORAGE.md).
	Durable *DurableConfig

	// Observer, if not nil, is told of requests, errors, deliveries and
	// syncs as they happen (machqd --metrics).
	Observer Observer
}

func (c *Config) setDefaults() error {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	} else if c.LogRate >= 0 {
		rate := c.LogRate
		if rate == 0 {
			rate = DefaultLogRate
		}
		c.Logger = slog.New(ratelog.New(c.Logger.Handler(), rate))
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.MaxMessageSize < 0 {
		return fmt.Errorf("machq: MaxMessageSize %d is negative", c.MaxMessageSize)
	}
	switch {
	case c.MaxInline == 0:
		c.MaxInline = wire.MaxInline
	case c.MaxInline < 0:
		c.MaxInline = 0 // every payload but an empty one as a page
	case c.MaxInline > wire.MaxInline:
		return fmt.Errorf("machq: MaxInline %d is more than %d", c.MaxInline, wire.MaxInline)
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 5 * time.Second
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.FrameTimeout <= 0 {
		c.FrameTimeout = DefaultFrameTimeout
	}
	if c.Spin < 0 {
		return fmt.Errorf("machq: Spin %v is negative", c.Spin)
	}
	if c.SpinReaders <= 0 {
		c.SpinReaders = max(1, runtime.GOMAXPROCS(0)/2)
	}
	c.Limits.setDefaults(c.Access.open())
	return c.Ack.setDefaults()
}

// Server is a machq message store. Create one with New, then call Serve
// with one or more listeners. A Server must not be copied.
type Server struct {
	cfg    Config
	log    *slog.Logger
	named  *queue.Registry
	total  totals // what the queues hold
	ledger *quota.Ledger
	pid    uint32
	policy delivery.Policy
	spin   *spin.Limiter // connections spinning for their next request
	obs    Observer      // Config.Observer; nil: nobody is told

	logState // durable queues; zero without Config.Durable

	nextConn  atomic.Uint64
	nextToken atomic.Uint64 // names each ack-mode delivery
	closing   atomic.Bool
	// keepListeners: closing for a handoff, listening sockets stay open
	// (not accepting) and checked in, for the successor.
	keepListeners atomic.Bool

	mu        sync.Mutex
	listeners map[*net.UnixListener]struct{}
	checkIns  map[*net.UnixListener]*naming.Registration // from Listen, released when served out
	conns     map[*conn]struct{}
	wg        sync.WaitGroup
	done      chan struct{}
	closeOnce sync.Once
}

// totals counts the messages and bytes held in every queue (the ledger
// counts everything held, queued or not).
type totals struct {
	messages atomic.Int64
	pages    atomic.Int64
	bytes    atomic.Int64
	// Out of line: pending with consumers in ack mode, or NAKed and
	// waiting out a delay.
	outMessages atomic.Int64
	outPages    atomic.Int64
	outBytes    atomic.Int64
}

// Add implements queue.Counter.
func (t *totals) Add(messages, pages, bytes int64) {
	t.messages.Add(messages)
	t.pages.Add(pages)
	t.bytes.Add(bytes)
}

// AddOut implements queue.Counter.
func (t *totals) AddOut(messages, pages, bytes int64) {
	t.outMessages.Add(messages)
	t.outPages.Add(pages)
	t.outBytes.Add(bytes)
}

var _ queue.Counter = (*totals)(nil)

// New returns a Server configured by cfg, which it copies.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		obs:       cfg.Observer,
		pid:       uint32(os.Getpid()),
		listeners: make(map[*net.UnixListener]struct{}),
		checkIns:  make(map[*net.UnixListener]*naming.Registration),
		conns:     make(map[*conn]struct{}),
		done:      make(chan struct{}),
	}
	s.named = queue.NewRegistry(&s.total, s.cfg.Limits.MaxQueues, s.cfg.Limits.MaxQueuesPerUID)
	s.named.SetGroupLimits(s.cfg.Limits.MaxGroups, s.cfg.Limits.MaxGroupsPerUID)
	s.policy = s.cfg.Ack.policy()
	s.spin = spin.NewLimiter(s.cfg.SpinReaders)
	s.ledger = newLedger(&s.cfg.Limits)
	if cfg.Durable != nil {
		if err := s.openDurable(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Serve accepts connections on l, serving each in its own goroutine, until
// Shutdown or Close. It always returns a non-nil error: ErrServerClosed
// after Shutdown or Close, otherwise the accept error. Serve closes l when
// it returns.
func (s *Server) Serve(l *net.UnixListener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		s.closeListener(l)
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer s.closeListener(l)

	s.log.Info("serving", "socket", l.Addr().String(), "max_message", s.cfg.MaxMessageSize, "max_inline", s.cfg.MaxInline, "limits", s.cfg.Limits)
	var backoff time.Duration
	for {
		uc, err := l.AcceptUnix()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of descriptors or memory: back off and try again
			// rather than spin or give up.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.done:
				return ErrServerClosed
			}
			continue
		}
		backoff = 0
		if !s.track(uc) {
			uc.Close()
			return ErrServerClosed
		}
	}
}

// closeListener closes l, which removes its socket file if Listen made
// it, and gives up the path Listen checked in at.
func (s *Server) closeListener(l *net.UnixListener) {
	if s.keepListeners.Load() {
		return // Handoff passes it on
	}
	s.mu.Lock()
	delete(s.listeners, l)
	reg := s.checkIns[l]
	delete(s.checkIns, l)
	s.mu.Unlock()
	l.Close()
	if reg != nil {
		reg.Release()
	}
}

// track registers a new connection and starts serving it, unless it is
// over a connection or descriptor limit (then it is refused with a LIMIT
// error and closed). It reports false once shutdown has begun.
func (s *Server) track(uc *net.UnixConn) bool {
	cred, credErr := wire.PeerCred(uc)
	uid := unknownUID
	if cred != nil {
		uid = cred.Uid
	}
	acct := s.ledger.Account(uid)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	lim := &s.cfg.Limits
	var refusal error
	code := wire.CodeLimit
	if ok, why := s.cfg.Access.admits(cred); !ok {
		refusal, code = errors.New(why), wire.CodeDenied
	}
	switch {
	case refusal != nil:
	case len(s.conns) >= lim.MaxConnections:
		refusal = limitError("too many connections", int64(len(s.conns)), int64(lim.MaxConnections), "max-connections", "close idle clients or raise the limit")
	case acct.Connections() >= int64(lim.MaxConnectionsPerUID):
		refusal = limitError(fmt.Sprintf("too many connections for uid %d", uid), acct.Connections(), int64(lim.MaxConnectionsPerUID), "max-connections-per-uid", "close idle clients or raise the limit")
	default:
		if err := acct.Connect(); err != nil {
			refusal = refusalError(err, 0)
		}
	}
	if refusal != nil {
		attrs := []any{"err", refusal.Error()}
		if cred != nil {
			attrs = append(attrs, "pid", cred.Pid, "uid", cred.Uid)
		}
		s.log.Warn("connection refused", attrs...)
		// The socket buffer of a new connection is empty: this write
		// does not block, and the deadline makes sure of it.
		uc.SetWriteDeadline(time.Now().Add(time.Second))
		uc.Write(wire.AppendError(nil, 0, code, refusal.Error()))
		s.failed(code, limitOf(refusal))
		uc.Close()
		return true
	}
	c := newConn(s, uc, cred, credErr, acct)
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		c.serve()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		acct.Disconnect()
	}()
	return true
}

// Shutdown stops the server gracefully: it closes every listener, stops
// reading new requests, answers the requests already received (waiting
// retrieves get SHUTTING_DOWN), flushes responses, closes connections and
// frees every stored page. If ctx ends first, Shutdown closes what is left
// at once and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.beginClose()
	finished := s.stopConnections()
	select {
	case <-finished:
		s.freeAll()
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// closeConns closes every connection's socket at once.
func (s *Server) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.uc.Close()
	}
}

// stopConnections makes every connection stop reading, once closing is
// set, and returns a channel closed when every goroutine of the server
// has ended.
func (s *Server) stopConnections() <-chan struct{} {
	// No connection is added once closing is set; stop the ones there
	// without holding s.mu, which is never held while taking conn.mu.
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.stopReading()
	}
	finished := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(finished)
	}()
	return finished
}

// Close stops the server at once: listeners and connections are closed
// without flushing responses, and every stored page is freed.
func (s *Server) Close() error {
	s.beginClose()
	s.closeConns()
	s.wg.Wait()
	s.freeAll()
	return nil
}

func (s *Server) beginClose() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing.Store(true)
		close(s.done)
		keep := s.keepListeners.Load()
		for l := range s.listeners {
			if keep {
				l.SetDeadline(time.Now()) // Accept returns; the socket stays
			} else {
				l.Close()
			}
		}
		// Sockets checked in by Listen but never served are given up
		// too; those being served are, by Serve, as it returns.
		var unserved []*net.UnixListener
		for l := range s.checkIns {
			if _, serving := s.listeners[l]; !serving && !keep {
				unserved = append(unserved, l)
			}
		}
		s.mu.Unlock()
		for _, l := range unserved {
			s.closeListener(l)
		}
		s.log.Info("shutting down")
	})
}

func (s *Server) freeAll() {
	if n, b := s.named.DrainAll(); n > 0 {
		s.log.Info("named queues freed", "messages", n, "bytes", b)
	}
	s.closeDurable()
}

// Stats describes the server at one instant: the STATS document
// (docs/PROTOCOL.md section 6.8).
type Stats = stats.Stats

// Held counts messages, their bytes and the pages among them.
type Held = stats.Held

// UserStats is one user id's share of what the server holds.
type UserStats = stats.User

// QueueStats describes one named queue.
type QueueStats = stats.Queue

// DurableStats describes the data directory of durable queues.
type DurableStats = stats.Durable

// GroupStats describes one consumer group of a queue.
type GroupStats = stats.Group

// LimitStats are the server's limits as Stats reports them, -1 for none.
type LimitStats = stats.Limits

// Responsive reports whether the server's own lock and its named queues'
// registry can be taken before ctx ends: a deadlocked server is not. It
// is what machqd's watchdog checks before it tells the service manager
// the server is alive.
func (s *Server) Responsive(ctx context.Context) bool {
	done := make(chan struct{})
	go func() {
		s.mu.Lock()
		//lint:ignore SA2001 taking the lock is the check
		s.mu.Unlock()
		s.named.Len()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// Stats returns the server's current counts.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	clients := len(s.conns)
	conns := make([]*conn, 0, clients)
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	// Pages their consumers have read since the last look are released
	// first, so that the counts are those of this instant.
	for _, c := range conns {
		c.refreshReceived()
	}
	qs := s.named.Snapshot()
	held := s.ledger.Total()
	out := Held{Messages: s.total.outMessages.Load(), Bytes: s.total.outBytes.Load(), Pages: s.total.outPages.Load()}
	queued := Held{Messages: s.total.messages.Load() + out.Messages, Bytes: s.total.bytes.Load() + out.Bytes, Pages: s.total.pages.Load() + out.Pages}
	fds, fdLimit := s.ledger.DescriptorsUsed()
	st := Stats{
		Clients:  clients,
		Messages: held.Messages,
		Bytes:    held.Bytes,
		Pages:    held.Pages,
		Unsent: Held{
			Messages: max(held.Messages-queued.Messages, 0),
			Bytes:    max(held.Bytes-queued.Bytes, 0),
			Pages:    max(held.Pages-queued.Pages, 0),
		},
		Pending:         out,
		Waiting:         held.Waiting,
		Descriptors:     fds,
		DescriptorLimit: fdLimit,
		Goroutines:      runtime.NumGoroutine(),
		Queues:          qs,
	}
	created := s.named.CreatedBy()
	for _, u := range s.ledger.Users() {
		st.Users = append(st.Users, UserStats{UID: u.UID, Connections: u.Connections, Messages: u.Messages, Bytes: u.Bytes, Pages: u.Pages, Waiting: u.Waiting, Descriptors: u.Descriptors, Queues: created[u.UID]})
		delete(created, u.UID)
	}
	for uid, n := range created {
		st.Users = append(st.Users, UserStats{UID: uid, Queues: n})
	}
	slices.SortFunc(st.Users, func(a, b UserStats) int { return cmp.Compare(a.UID, b.UID) })
	st.Durable = s.durableStats()
	st.Limits = s.limitStats()
	return st
}

// limitStats reports the limits, -1 for none.
func (s *Server) limitStats() *stats.Limits {
	l := &s.cfg.Limits
	v := func(n int64) int64 {
		if n >= unlimited {
			return -1
		}
		return n
	}
	i := func(n int) int64 { return v(int64(n)) }
	return &stats.Limits{
		MaxConnections: i(l.MaxConnections), MaxConnectionsPerUID: i(l.MaxConnectionsPerUID),
		MaxStoredMessages: v(l.MaxStoredMessages), MaxStoredBytes: v(l.MaxStoredBytes), MaxStoredPages: v(l.MaxStoredPages),
		MaxStoredMessagesPerUID: v(l.MaxStoredMessagesPerUID), MaxStoredBytesPerUID: v(l.MaxStoredBytesPerUID), MaxStoredPagesPerUID: v(l.MaxStoredPagesPerUID),
		MaxQueueMessages: v(l.MaxQueueMessages), MaxQueueBytes: v(l.MaxQueueBytes),
		MaxPrivateMessages: v(l.MaxPrivateMessages), MaxPrivateBytes: v(l.MaxPrivateBytes),
		MaxQueues: i(l.MaxQueues), MaxQueuesPerUID: i(l.MaxQueuesPerUID),
		MaxWaiting: i(l.MaxWaiting), MaxWaitingTotal: v(l.MaxWaitingTotal), MaxWaitingPerUID: v(l.MaxWaitingPerUID),
		MaxGroups: i(l.MaxGroups), MaxGroupsPerUID: i(l.MaxGroupsPerUID),
		MaxPending:           i(s.cfg.Ack.MaxPending),
		MaxDescriptorsPerUID: v(l.MaxDescriptorsPerUID),
	}
}

// isPeerGone reports errors that only mean the client went away.
func isPeerGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, errConnReset)
}

// Listen checks the server in at the socket path and returns the
// listener, for Serve. It creates the socket's directory if missing (mode
// 0700), refuses a path that a live server holds (an exclusive lock on
// PATH.lock tells), replaces a stale socket file left by a server that
// died, and listens with mode 0600. When Config.Access admits other users
// the socket is 0666 and a directory it creates 0711, so that the kernel
// lets everyone through and the server decides; it warns if an existing
// directory would stop them. When Serve returns, the socket file is
// removed and the path given up.
func (s *Server) Listen(path string) (*net.UnixListener, error) {
	// A path outside the runtime directory was chosen by the caller: it
	// may sit in a directory of root's, or a sticky shared one (warned).
	explicit := filepath.Dir(filepath.Clean(path)) != filepath.Clean(naming.RuntimeDir())
	reg, err := naming.CheckInWith(path, naming.Options{Shared: s.cfg.Access.open(), ExplicitPath: explicit})
	if err != nil {
		return nil, err
	}
	for _, w := range reg.Warnings {
		s.log.Warn(w, "socket", path)
	}
	if reg.ReplacedStale {
		s.log.Info("replaced the socket left by a server that died", "socket", path)
	}
	if s.cfg.Access.open() {
		if fi, err := os.Stat(filepath.Dir(path)); err == nil && fi.Mode().Perm()&0o001 == 0 {
			s.log.Warn("allowed users cannot reach the socket: its directory is not searchable by others; chmod o+x it",
				"dir", filepath.Dir(path), "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
		}
	}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		reg.Listener.Close()
		reg.Release()
		return nil, ErrServerClosed
	}
	s.checkIns[reg.Listener] = reg
	s.mu.Unlock()
	return reg.Listener, nil
}

// ListenAndServe is Listen, then Serve until Shutdown or Close. It always
// returns a non-nil error.
func (s *Server) ListenAndServe(path string) error {
	l, err := s.Listen(path)
	if err != nil {
		return err
	}
	return s.Serve(l)
}
