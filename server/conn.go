package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/delivery"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/quota"
	"github.com/machq/machq/internal/spin"
	"github.com/machq/machq/internal/version"
	"github.com/machq/machq/internal/wire"
)

var errConnReset = unix.ECONNRESET

// maxOutbox is how many response bytes may wait for a client before the
// server stops reading its requests and stops delivering messages to its
// waiting retrieves: a client that pipelines without reading answers gets
// backpressure, and one that waits without reading gets no more messages
// (they stay queued, for others or for later), not unbounded server
// memory. maxOutboxPages bounds the pages waiting likewise.
const (
	maxOutbox      = 4 << 20
	maxOutboxPages = 64
)

// conn serves one client connection. Its reader goroutine (serve) decodes
// and handles requests in order and, before it waits for more, sends the
// responses they produced itself, batched into as few sendmsgs as
// possible: a request-response exchange costs no hand-off between
// goroutines. Its writer goroutine (writeLoop) sends what arrives while
// the reader waits: messages delivered to a waiting RETRIEVE by another
// connection's STORE, expired waits. One goroutine writes at a time.
//
// Lock order: queue.Queue.mu before conn.mu (Deliver is called with the
// queue lock held).
type conn struct {
	s    *Server
	id   uint64
	uc   *net.UnixConn
	log  *slog.Logger
	info bool           // info-level logging enabled: skip building log records otherwise
	acct *quota.Account // the peer's user: what it stores is charged there
	// version is the protocol version agreed at the handshake.
	version uint16
	// frameDeadline is set while a read deadline bounds the rest of a
	// partly received frame.
	frameDeadline bool

	private *queue.Queue
	hello   bool
	cred    *unix.Ucred // the peer's, read at accept; nil if unreadable
	credErr error

	mu      sync.Mutex
	cond    *sync.Cond // signalled when the outbox shrinks or closing
	out     []byte
	outFDs  []int
	fdAt    []int            // byte offset in out of the frame carrying outFDs[i]
	outMsgs []*queue.Message // messages in out or outFDs: release after sending
	// outTokens name the ack-mode deliveries in out: once written they
	// may be settled and their leases run.
	outTokens []uint64
	// outLSN is the last record of the durable queues' log that the
	// answers in out speak of: they are written once it is durable.
	outLSN uint64
	// acks are the deliveries this connection holds in ack mode.
	acks delivery.Set
	// ackUnread counts pages of ack-mode deliveries written but perhaps
	// not yet received (the peer's socket buffer holds them): they count
	// towards maxOutboxPages like unreceived pages.
	ackUnread int
	// batch numbers the writes of the outbox; writeDone is the number of
	// the last one that has ended.
	batch, writeDone uint64
	// unreceived are pages written but perhaps not yet received; see
	// unreceived.go.
	unreceived     []*queue.Message
	unreceivedPoll *time.Timer
	pollArmed      bool          // unreceivedPoll will fire
	pollEvery      time.Duration // its last interval, doubled while nothing is read
	writing        int           // bytes of the outbox being written now
	closed         bool          // no more responses may be queued
	stopping       bool          // Shutdown asked the reader to stop
	flushing       bool          // a goroutine is writing the outbox
	// busy is set while the reader handles requests: it will flush the
	// outbox before it waits for more, so appending need not wake the
	// writer.
	busy bool
	// Buffers the flushing goroutine swaps with the outbox.
	spare     []byte
	spareFDs  []int
	spareFdAt []int
	spareMsgs []*queue.Message
	spareToks []uint64
	// Warnings of failed requests logged: when, and how many left out
	// since (see warnEvery).
	lastWarn   time.Time
	suppressed int
	waits      map[uint64]*waiter
	blocked    map[uint64]*blockedStore // stores waiting for room, by request id
	parked     []*waiter                // waits skipped as Busy, to resume once the outbox drains
	wake       chan struct{}
	quit       chan struct{} // closed when the writer must flush and exit
}

func newConn(s *Server, uc *net.UnixConn, cred *unix.Ucred, credErr error, acct *quota.Account) *conn {
	c := &conn{
		s:       s,
		acct:    acct,
		id:      s.nextConn.Add(1),
		uc:      uc,
		cred:    cred,
		credErr: credErr,
		waits:   make(map[uint64]*waiter),
		blocked: make(map[uint64]*blockedStore),
		wake:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
	}
	c.cond = sync.NewCond(&c.mu)
	c.private = queue.New("", &s.total)
	return c
}

// serve runs the connection until the client leaves or the server stops.
func (c *conn) serve() {
	attrs := []any{"conn", c.id}
	if c.cred != nil {
		attrs = append(attrs, "pid", c.cred.Pid, "uid", c.cred.Uid, "gid", c.cred.Gid)
	} else {
		attrs = append(attrs, "peer_credentials", c.credErr.Error())
	}
	c.log = c.s.log.With(attrs...)
	c.info = c.log.Enabled(context.Background(), slog.LevelInfo)
	c.log.Info("client connected")

	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()

	rd := wire.NewReader(spin.NewReader(c.uc, c.s.cfg.Spin, c.s.spin))
	rd.OnPartial(c.startFrameDeadline)
	c.mu.Lock()
	if !c.stopping { // Shutdown's deadline must stand
		c.uc.SetReadDeadline(time.Now().Add(c.s.cfg.HandshakeTimeout))
	}
	c.mu.Unlock()
	reason := c.readLoop(rd)
	rd.Close()

	// Stop deliveries, answer waiting retrieves, and let the writer
	// flush what is queued before the socket closes.
	c.mu.Lock()
	waits := c.waits
	c.waits = nil
	c.parked = nil
	c.acct.Unwait(len(waits))
	c.mu.Unlock()
	code, msg := wire.CodeCancelled, "connection closing"
	if c.s.closing.Load() {
		code, msg = wire.CodeShuttingDown, "server is shutting down; reconnect to a new instance"
	}
	for id, w := range waits {
		if w.timer != nil {
			w.timer.Stop()
		}
		if w.q.CancelWait(w) {
			c.sendError(id, code, msg)
		}
	}
	c.cancelAllStores(code, msg)
	c.mu.Lock()
	if reason == stopReason && c.hello {
		// Everything read is answered by now: say so, so that the client
		// may send what was not answered again, to the next server.
		c.out = wire.AppendError(c.out, 0, wire.CodeShuttingDown, "server stopping or restarting: every request not answered was not read, and may be sent again to the next server")
	}
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
	c.uc.SetWriteDeadline(time.Now().Add(c.s.cfg.DrainTimeout))
	close(c.quit)
	<-writerDone
	c.uc.Close()

	c.mu.Lock()
	lost := append(c.outMsgs, c.unreceived...)
	c.outMsgs, c.unreceived = nil, nil
	if c.unreceivedPoll != nil {
		c.unreceivedPoll.Stop()
	}
	c.mu.Unlock()
	for _, m := range lost {
		m.Release()
	}
	// Deliveries held in ack mode go back to their queues at once, to
	// other consumers waiting there.
	if n := c.returnPending(); n > 0 {
		c.log.Info("pending deliveries returned to their queues", "messages", n)
	}
	pages := c.private.Pages()
	n, b := c.private.Drain()
	c.log.Info("client gone; private queue freed", "reason", reason, "messages", n, "pages", pages, "bytes", b)
}

// stopReason is why readLoop returns when the server stops it.
const stopReason = "server shutdown"

// stopReading makes the reader finish the requests it has already
// received and then stop, and bounds how long the writer may still block
// on a client that does not read; used by Shutdown.
func (c *conn) stopReading() {
	c.mu.Lock()
	c.stopping = true
	c.cond.Broadcast()
	c.mu.Unlock()
	c.uc.SetReadDeadline(time.Now())
	c.uc.SetWriteDeadline(time.Now().Add(c.s.cfg.DrainTimeout))
}

// readLoop handles requests until the connection fails; it returns why.
func (c *conn) readLoop(rd *wire.Reader) string {
	for {
		if !rd.Buffered() {
			// About to wait for the client: send what is pending first.
			// busy is cleared before flushing so that anything appended
			// after this flush wakes the writer.
			c.mu.Lock()
			c.busy = false
			c.mu.Unlock()
			c.flush()
		}
		f, err := rd.ReadFrame()
		if err == nil && c.frameDeadline {
			c.endFrameDeadline()
		}
		if err != nil {
			if c.frameDeadline && c.hello && errors.Is(err, os.ErrDeadlineExceeded) && !c.s.closing.Load() {
				msg := fmt.Sprintf("a frame did not arrive whole within %s of its first byte; send each frame at once (machqd --frame-timeout)", c.s.cfg.FrameTimeout)
				c.log.Warn("closing connection: stalled frame", "err", msg)
				c.closeWith(wire.CodeMalformed, msg)
				return "stalled frame"
			}
			if !c.hello && errors.Is(err, os.ErrDeadlineExceeded) && !c.s.closing.Load() {
				msg := fmt.Sprintf("no HELLO within %s of connecting; a connection must start with HELLO", c.s.cfg.HandshakeTimeout)
				c.log.Warn("closing connection: silent client", "err", msg)
				c.closeWith(wire.CodeMalformed, msg)
				return "no handshake"
			}
			if isPeerGone(err) {
				if c.s.closing.Load() {
					return stopReason
				}
				return "disconnected"
			}
			c.log.Warn("closing connection: protocol violation", "err", err)
			c.closeWith(wire.CodeMalformed, err.Error())
			return "protocol violation"
		}
		c.mu.Lock()
		c.busy = true
		out := c.pagesOut()
		c.mu.Unlock()
		if out {
			c.refreshReceived()
		}
		var start time.Time
		if c.s.obs != nil {
			start = time.Now()
		}
		fatal := c.handle(f)
		if c.s.obs != nil {
			c.s.obs.Handled(uint8(f.Op), time.Since(start))
		}
		if fatal {
			return "protocol violation"
		}
		c.backpressure()
	}
}

// handle serves one request; it takes ownership of f.FDs. It reports true
// when the connection must close.
func (c *conn) handle(f wire.Frame) (fatal bool) {
	if c.info {
		c.log.Info("received a message", "op", f.Op.String(), "id", f.ID, "bytes", f.Length, "fds", len(f.FDs))
	}
	if !c.hello {
		wire.CloseFDs(f.FDs)
		if f.Op != wire.OpHello {
			c.sendError(f.ID, wire.CodeMalformed, fmt.Sprintf("first frame is %s; a connection must start with HELLO", f.Op))
			return true
		}
		return c.handleHello(f)
	}
	if h := laterOps[f.Op]; h.handle != nil && c.version >= h.since {
		c.noFDs(f)
		h.handle(c, f)
		return false
	}
	switch f.Op {
	case wire.OpStore:
		return c.handleStore(f)
	case wire.OpRetrieve:
		c.noFDs(f)
		return c.handleRetrieve(f)
	case wire.OpCancel:
		c.noFDs(f)
		c.handleCancel(f)
	case wire.OpStat:
		c.noFDs(f)
		c.handleStat(f)
	case wire.OpHello:
		wire.CloseFDs(f.FDs)
		c.sendError(f.ID, wire.CodeMalformed, "HELLO sent twice")
		return true
	default:
		wire.CloseFDs(f.FDs)
		c.sendError(f.ID, wire.CodeUnknownOp, fmt.Sprintf("unknown operation %s; this server speaks protocol version %d", f.Op, wire.Version))
	}
	return false
}

// laterOps are the requests of protocol versions after the first, by
// operation, with the version that has each: on an older connection they
// are unknown operations. None takes a descriptor.
var laterOps = [256]struct {
	since  uint16
	handle func(*conn, wire.Frame)
}{
	wire.OpDisown: {wire.VersionDisown, (*conn).handleDisown},
	wire.OpAck:    {wire.VersionAck, (*conn).handleSettle},
	wire.OpNak:    {wire.VersionAck, (*conn).handleSettle},
	wire.OpTouch:  {wire.VersionAck, (*conn).handleSettle},
	wire.OpTerm:   {wire.VersionAck, (*conn).handleSettle},
	wire.OpKick:   {wire.VersionAck, (*conn).handleKick},
	wire.OpPeek:   {wire.VersionAck, (*conn).handlePeek},
	wire.OpPurge:  {wire.VersionAck, (*conn).handlePurge},
	wire.OpDelete: {wire.VersionAck, (*conn).handleDelete},
	wire.OpGroup:  {wire.VersionAck, (*conn).handleGroup},
	wire.OpConfig: {wire.VersionAck, (*conn).handleConfig},
}

// noFDs closes descriptors sent with a request that takes none. The
// request itself is still served.
func (c *conn) noFDs(f wire.Frame) {
	if len(f.FDs) == 0 {
		return
	}
	wire.CloseFDs(f.FDs)
	c.mu.Lock()
	warn, suppressed := c.admitWarning()
	c.mu.Unlock()
	if warn {
		c.log.Warn("closed descriptors sent with a request that takes none", "op", f.Op.String(), "id", f.ID, "fds", len(f.FDs), "warnings_not_logged", suppressed)
	}
}

func (c *conn) handleHello(f wire.Frame) bool {
	h, err := wire.ParseHello(f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeMalformed, err.Error())
		return true
	}
	if h.MinVersion > wire.Version || h.MaxVersion < wire.MinVersion || h.MinVersion > h.MaxVersion {
		c.sendError(f.ID, wire.CodeVersion, fmt.Sprintf("client speaks protocol versions %d to %d, this server speaks %d to %d; upgrade the older side", h.MinVersion, h.MaxVersion, wire.MinVersion, wire.Version))
		return true
	}
	c.version = min(h.MaxVersion, wire.Version)
	c.hello = true
	c.mu.Lock()
	if !c.stopping { // Shutdown's deadline must stand
		c.uc.SetReadDeadline(time.Time{})
	}
	c.out = wire.AppendWelcome(c.out, f.ID, wire.Welcome{
		Version:    c.version,
		MaxInline:  uint32(c.s.cfg.MaxInline),
		MaxFrame:   wire.MaxFrameSize,
		MaxMessage: uint64(c.s.cfg.MaxMessageSize),
		ServerPID:  c.s.pid,
		Software:   software,
	})
	c.signal()
	c.mu.Unlock()
	return false
}

// admitWarning reports whether the connection may log a warning now (at
// most one per warnEvery), and how many it left out since the last one
// it logged. c.mu is held.
func (c *conn) admitWarning() (bool, int) {
	now := time.Now()
	if now.Sub(c.lastWarn) < warnEvery {
		c.suppressed++
		return false, 0
	}
	n := c.suppressed
	c.lastWarn, c.suppressed = now, 0
	return true, n
}

// closeWith queues the ERROR of code saying msg (for no request: id 0)
// with which the server closes the connection, and tells the Observer;
// the caller has logged why, once.
func (c *conn) closeWith(code wire.Code, msg string) {
	c.mu.Lock()
	c.out = wire.AppendError(c.out, 0, code, msg)
	c.signal()
	c.mu.Unlock()
	c.s.failed(code, "")
}

// software is what the server says of its build in WELCOME.
var software = "machqd " + version.String()

// startFrameDeadline bounds the time the rest of a partly received frame
// may take; the reader calls it before it waits for that rest.
func (c *conn) startFrameDeadline() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopping || !c.hello {
		return // Shutdown's or the handshake's deadline stands
	}
	c.uc.SetReadDeadline(time.Now().Add(c.s.cfg.FrameTimeout))
	c.frameDeadline = true
}

// endFrameDeadline lifts the deadline of a frame that has arrived.
func (c *conn) endFrameDeadline() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.frameDeadline = false
	if !c.stopping {
		c.uc.SetReadDeadline(time.Time{})
	}
}

// warnEvery bounds the warnings one connection's failed requests log: at
// most one per warnEvery, which counts the ones left out since the last,
// so that a client hammering a full queue cannot flood the log.
const warnEvery = time.Second

func (c *conn) sendError(id uint64, code wire.Code, msg string) {
	c.answerError(id, code, msg, "")
}

// fail answers request id with an ERROR of code saying err; the
// Observer learns the limit a LIMIT names (limitOf).
func (c *conn) fail(id uint64, code wire.Code, err error) {
	c.answerError(id, code, err.Error(), limitOf(err))
}

// answerError queues an ERROR, logs it (boundedly, warnEvery) and tells
// the Observer, with the limit a LIMIT is for.
func (c *conn) answerError(id uint64, code wire.Code, msg, limit string) {
	warn, suppressed := false, 0
	c.mu.Lock()
	c.out = wire.AppendError(c.out, id, code, msg)
	c.signal()
	if code != wire.CodeEmpty && code != wire.CodeCancelled {
		warn, suppressed = c.admitWarning()
	}
	c.mu.Unlock()
	c.s.failed(code, limit)
	switch {
	case warn && suppressed > 0:
		c.log.Warn("request failed", "id", id, "code", code.String(), "err", msg, "failures_not_logged", suppressed)
	case warn:
		c.log.Warn("request failed", "id", id, "code", code.String(), "err", msg)
	case c.info:
		c.log.Info("request failed", "id", id, "code", code.String(), "err", msg)
	}
}
