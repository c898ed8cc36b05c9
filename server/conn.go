package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/naming"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/wire"
)

var errConnReset = unix.ECONNRESET

// maxOutbox is how many response bytes may wait for a client before the
// server stops reading its requests: a client that pipelines without
// reading answers gets backpressure, not unbounded server memory.
const maxOutbox = 4 << 20

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
	info bool // info-level logging enabled: skip building log records otherwise

	private *queue.Queue
	hello   bool
	cred    *unix.Ucred // the peer's, read at accept; nil if unreadable
	credErr error

	mu       sync.Mutex
	cond     *sync.Cond // signalled when the outbox shrinks or closing
	out      []byte
	outFDs   []int
	fdAt     []int            // byte offset in out of the frame carrying outFDs[i]
	outMsgs  []*queue.Message // messages whose pages are in outFDs: release after sending
	closed   bool             // no more responses may be queued
	stopping bool             // Shutdown asked the reader to stop
	flushing bool             // a goroutine is writing the outbox
	// busy is set while the reader handles requests: it will flush the
	// outbox before it waits for more, so appending need not wake the
	// writer.
	busy bool
	// Buffers the flushing goroutine swaps with the outbox.
	spare     []byte
	spareFDs  []int
	spareFdAt []int
	spareMsgs []*queue.Message
	// Warnings of failed requests logged: when, and how many left out
	// since (see warnEvery).
	lastWarn   time.Time
	suppressed int
	waits      map[uint64]*waiter
	wake       chan struct{}
	quit       chan struct{} // closed when the writer must flush and exit
}

func newConn(s *Server, uc *net.UnixConn, cred *unix.Ucred, credErr error) *conn {
	c := &conn{
		s:       s,
		id:      s.nextConn.Add(1),
		uc:      uc,
		cred:    cred,
		credErr: credErr,
		waits:   make(map[uint64]*waiter),
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

	rd := wire.NewReader(c.uc)
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
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
	c.uc.SetWriteDeadline(time.Now().Add(c.s.cfg.DrainTimeout))
	close(c.quit)
	<-writerDone
	c.uc.Close()

	c.mu.Lock()
	lost := c.outMsgs
	c.outMsgs = nil
	c.mu.Unlock()
	for _, m := range lost {
		m.Release()
	}
	pages := c.private.Pages()
	n, b := c.private.Drain()
	c.log.Info("client gone; private queue freed", "reason", reason, "messages", n, "pages", pages, "bytes", b)
}

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
		if err != nil {
			if !c.hello && errors.Is(err, os.ErrDeadlineExceeded) && !c.s.closing.Load() {
				msg := fmt.Sprintf("no HELLO within %s of connecting; a connection must start with HELLO", c.s.cfg.HandshakeTimeout)
				c.log.Warn("closing connection: silent client", "err", msg)
				c.sendError(0, wire.CodeMalformed, msg)
				return "no handshake"
			}
			if isPeerGone(err) {
				if c.s.closing.Load() {
					return "server shutdown"
				}
				return "disconnected"
			}
			c.log.Warn("closing connection: protocol violation", "err", err)
			c.sendError(0, wire.CodeMalformed, err.Error())
			return "protocol violation"
		}
		c.mu.Lock()
		c.busy = true
		c.mu.Unlock()
		if fatal := c.handle(f); fatal {
			return "protocol violation"
		}
		c.backpressure()
	}
}

// backpressure holds the reader while more than maxOutbox bytes of
// responses wait for a client that is not reading them.
func (c *conn) backpressure() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.out) > maxOutbox && !c.closed && !c.stopping {
		if !c.flushing {
			c.mu.Unlock()
			c.flush() // blocks while the client does not read
			c.mu.Lock()
			continue
		}
		c.cond.Wait()
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
	switch f.Op {
	case wire.OpStore:
		c.handleStore(f)
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

// noFDs closes descriptors sent with a request that takes none. The
// request itself is still served.
func (c *conn) noFDs(f wire.Frame) {
	if len(f.FDs) > 0 {
		c.log.Warn("closed descriptors sent with a request that takes none", "op", f.Op.String(), "id", f.ID, "fds", len(f.FDs))
		wire.CloseFDs(f.FDs)
	}
}

func (c *conn) handleHello(f wire.Frame) bool {
	h, err := wire.ParseHello(f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeMalformed, err.Error())
		return true
	}
	if h.MinVersion > wire.Version || h.MaxVersion < wire.Version {
		c.sendError(f.ID, wire.CodeVersion, fmt.Sprintf("client speaks protocol versions %d to %d, this server speaks %d; upgrade the older side", h.MinVersion, h.MaxVersion, wire.Version))
		return true
	}
	c.hello = true
	c.mu.Lock()
	if !c.stopping { // Shutdown's deadline must stand
		c.uc.SetReadDeadline(time.Time{})
	}
	c.out = wire.AppendWelcome(c.out, f.ID, wire.Welcome{
		Version:    wire.Version,
		MaxInline:  uint32(c.s.cfg.MaxInline),
		MaxFrame:   wire.MaxFrameSize,
		MaxMessage: uint64(c.s.cfg.MaxMessageSize),
		ServerPID:  c.s.pid,
	})
	c.signal()
	c.mu.Unlock()
	return false
}

// queueFor returns the queue a request names, held until c.release: the
// private queue for the empty name. Unless create is set, a named queue
// that does not exist is not created: queueFor then returns nil and no
// error. With FlagOwned in flags, a named queue it creates is restricted
// to this connection's user. A refusal comes with its code.
func (c *conn) queueFor(name []byte, flags uint8, create bool) (*queue.Queue, wire.Code, error) {
	if len(name) == 0 {
		return c.private, 0, nil
	}
	if err := naming.ValidQueueName(name); err != nil {
		return nil, wire.CodeBadQueueName, err
	}
	var q *queue.Queue
	if create {
		var owner *uint32
		if flags&wire.FlagOwned != 0 && c.cred != nil {
			owner = &c.cred.Uid
		}
		var err error
		if q, err = c.s.named.Acquire(name, owner); err != nil {
			max := c.s.cfg.Limits.MaxQueues
			return nil, wire.CodeLimit, limitError(fmt.Sprintf("cannot create queue %s: the server holds too many named queues", name), int64(c.s.named.Len()), int64(max), "max-queues", "use fewer queue names, or raise the limit")
		}
	} else if q = c.s.named.Lookup(name); q == nil {
		return nil, 0, nil
	}
	if owner, ok := q.Owner(); ok && (c.cred == nil || (c.cred.Uid != owner && c.cred.Uid != 0)) {
		c.s.named.Release(q)
		return nil, wire.CodeForbidden, fmt.Errorf("queue %s belongs to uid %d; only that user (or root) may use it: choose another queue name", q.Name(), owner)
	}
	return q, 0, nil
}

// release ends the hold queueFor took on q.
func (c *conn) release(q *queue.Queue) {
	if q != nil && q != c.private {
		c.s.named.Release(q)
	}
}

func queueLabel(q *queue.Queue) string {
	if q.Name() == "" {
		return "(private)"
	}
	return q.Name()
}

func (c *conn) handleStore(f wire.Frame) {
	st, inline, err := wire.ParseStore(f.Header, f.Body)
	if err != nil {
		wire.CloseFDs(f.FDs)
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return
	}
	m, code, err := c.admit(f, st, inline)
	if err != nil {
		c.sendError(f.ID, code, err.Error())
		return
	}
	q, code, err := c.queueFor(st.Queue, f.Flags, true)
	if err != nil {
		m.Release()
		c.sendError(f.ID, code, err.Error())
		return
	}
	defer c.release(q)
	isPage := m.FD >= 0 // m belongs to the queue once pushed
	lim := &c.s.cfg.Limits
	if held := c.s.total.messages.Load(); held >= lim.MaxStoredMessages {
		m.Release()
		c.sendError(f.ID, wire.CodeLimit, limitError("the server holds too many messages", held, lim.MaxStoredMessages, "max-stored-messages", "retrieve some, or raise the limit").Error())
		return
	}
	if held := c.s.total.bytes.Load(); m.Size > lim.MaxStoredBytes-held {
		m.Release()
		c.sendError(f.ID, wire.CodeLimit, limitError(fmt.Sprintf("storing %d more bytes would pass the server's byte limit", m.Size), held, lim.MaxStoredBytes, "max-stored-bytes", "retrieve some, or raise the limit").Error())
		return
	}
	if held := c.s.total.pages.Load(); isPage && held >= lim.MaxStoredPages {
		m.Release()
		c.sendError(f.ID, wire.CodeLimit, limitError("the server holds too many pages (each an open descriptor)", held, lim.MaxStoredPages, "max-stored-pages", "retrieve some, send small payloads inline, or raise the limit with ulimit -n").Error())
		return
	}
	maxMessages, maxBytes, flags := lim.MaxQueueMessages, lim.MaxQueueBytes, "queue"
	if q == c.private {
		maxMessages, maxBytes, flags = lim.MaxPrivateMessages, lim.MaxPrivateBytes, "private"
	}
	// STORED goes into the outbox before a waiter on this very connection
	// (a RETRIEVE of the private queue) can be handed the message, so the
	// client always learns of a store before it receives what it stored.
	seq, ok := q.PushWithin(m, maxMessages, maxBytes, func(seq uint64) {
		c.mu.Lock()
		c.out = wire.AppendStored(c.out, f.ID, seq)
		c.signal()
		c.mu.Unlock()
	})
	if !ok {
		size := m.Size
		m.Release()
		n, b := q.Len()
		var err error
		if int64(n) >= maxMessages {
			err = limitError(fmt.Sprintf("queue %s is full", queueLabel(q)), int64(n), maxMessages, "max-"+flags+"-messages", "retrieve some, or raise the limit")
		} else {
			err = limitError(fmt.Sprintf("storing %d more bytes would overfill queue %s", size, queueLabel(q)), b, maxBytes, "max-"+flags+"-bytes", "retrieve some, or raise the limit")
		}
		c.sendError(f.ID, wire.CodeLimit, err.Error())
		return
	}
	if c.info {
		c.log.Info("enqueued", "queue", queueLabel(q), "seq", seq, "bytes", st.Size, "page", isPage)
	}
}

// admit checks a STORE's payload and turns it into a queue.Message. It
// takes ownership of f.FDs whatever the outcome.
func (c *conn) admit(f wire.Frame, st wire.Store, inline []byte) (*queue.Message, wire.Code, error) {
	fail := func(code wire.Code, err error) (*queue.Message, wire.Code, error) {
		wire.CloseFDs(f.FDs)
		return nil, code, err
	}
	if st.Size > uint64(c.s.cfg.MaxMessageSize) {
		return fail(wire.CodeTooLarge, fmt.Errorf("payload of %d bytes exceeds the server's maximum of %d (machqd --max-message)", st.Size, c.s.cfg.MaxMessageSize))
	}
	m := &queue.Message{Size: int64(st.Size), FD: -1, DigestAlg: st.DigestAlg, Digest: string(st.Digest)}
	if f.Flags&wire.FlagInline != 0 {
		if len(f.FDs) > 0 {
			return fail(wire.CodeBadDescriptor, fmt.Errorf("inline STORE carried %d descriptor(s); send the payload either inline or as one memfd", len(f.FDs)))
		}
		if len(inline) > c.s.cfg.MaxInline {
			return fail(wire.CodeTooLarge, fmt.Errorf("inline payload of %d bytes exceeds the server's inline maximum of %d; send it as a sealed memfd", len(inline), c.s.cfg.MaxInline))
		}
		if f.Owned {
			m.Inline = inline // read into memory of its own: keep it
		} else {
			m.Inline = append([]byte(nil), inline...)
		}
		return m, 0, nil
	}
	if len(f.FDs) != 1 {
		return fail(wire.CodeBadDescriptor, fmt.Errorf("out-of-line STORE carried %d descriptors; it takes exactly one sealed memfd", len(f.FDs)))
	}
	if err := page.Check(f.FDs[0], int64(st.Size)); err != nil {
		return fail(wire.CodeBadPage, err)
	}
	m.FD = f.FDs[0]
	return m, 0, nil
}

// waiter is a RETRIEVE blocked on an empty queue.
type waiter struct {
	c     *conn
	id    uint64
	q     *queue.Queue
	timer *time.Timer
}

// Deliver implements queue.Waiter. The queue's lock is held.
func (w *waiter) Deliver(q *queue.Queue, m *queue.Message) bool {
	c := w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.waits[w.id] != w {
		return false
	}
	delete(c.waits, w.id)
	if w.timer != nil {
		w.timer.Stop()
	}
	c.appendMessage(w.id, q, m)
	return true
}

var _ queue.Waiter = (*waiter)(nil)

// handleRetrieve serves a RETRIEVE; it reports true when the connection
// must close.
func (c *conn) handleRetrieve(f wire.Frame) (fatal bool) {
	r, err := wire.ParseRetrieve(f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return false
	}
	q, code, err := c.queueFor(r.Queue, f.Flags, r.WaitMillis != 0)
	if err != nil {
		c.sendError(f.ID, code, err.Error())
		return false
	}
	defer c.release(q)
	if r.WaitMillis == 0 {
		var m *queue.Message
		if q != nil {
			m = q.Pop()
		}
		if m == nil {
			label := string(r.Queue)
			if q != nil {
				label = queueLabel(q)
			}
			c.sendError(f.ID, wire.CodeEmpty, fmt.Sprintf("queue %s is empty", label))
			return false
		}
		c.mu.Lock()
		c.appendMessage(f.ID, q, m)
		c.mu.Unlock()
		return false
	}

	w := &waiter{c: c, id: f.ID, q: q}
	c.mu.Lock()
	if max := c.s.cfg.Limits.MaxWaiting; len(c.waits) >= max {
		n := len(c.waits)
		c.mu.Unlock()
		c.sendError(f.ID, wire.CodeLimit, limitError("too many retrieves waiting on this connection", int64(n), int64(max), "max-waiting", "cancel some, or raise the limit").Error())
		return false
	}
	if _, dup := c.waits[f.ID]; dup {
		c.mu.Unlock()
		// An answer with this id would be ambiguous: end the connection.
		c.sendError(0, wire.CodeMalformed, fmt.Sprintf("request id %d is already waiting; ids of outstanding requests must be unique", f.ID))
		return true
	}
	c.waits[f.ID] = w
	c.mu.Unlock()

	if m := q.PopOrWait(w); m != nil {
		c.mu.Lock()
		delete(c.waits, f.ID)
		c.appendMessage(f.ID, q, m)
		c.mu.Unlock()
		return false
	}
	if c.info {
		c.log.Info("waiting for a message", "queue", queueLabel(q), "id", f.ID, "wait_ms", r.WaitMillis)
	}
	if r.WaitMillis != wire.WaitForever {
		c.mu.Lock()
		if c.waits[f.ID] == w { // not delivered meanwhile
			w.timer = time.AfterFunc(time.Duration(r.WaitMillis)*time.Millisecond, func() {
				c.expire(w, wire.CodeEmpty, fmt.Sprintf("queue %s stayed empty for the %dms wait", queueLabel(q), r.WaitMillis))
			})
		}
		c.mu.Unlock()
	}
	return false
}

// expire ends a wait that is still pending with an error response.
func (c *conn) expire(w *waiter, code wire.Code, msg string) {
	if !w.q.CancelWait(w) {
		return // a message was delivered first
	}
	c.mu.Lock()
	if c.waits != nil && c.waits[w.id] != w {
		c.mu.Unlock()
		return
	}
	// c.waits is nil while the connection tears down: the teardown will
	// find w no longer waiting, so answer it here.
	delete(c.waits, w.id)
	c.mu.Unlock()
	c.sendError(w.id, code, msg)
}

func (c *conn) handleCancel(f wire.Frame) {
	target, err := wire.ParseCancel(f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return
	}
	c.mu.Lock()
	w := c.waits[target]
	if w != nil && w.timer != nil {
		w.timer.Stop()
	}
	c.mu.Unlock()
	if w != nil {
		c.expire(w, wire.CodeCancelled, "retrieve cancelled by the client")
	}
}

func (c *conn) handleStat(f wire.Frame) {
	doc, err := statsDoc(c.s.Stats())
	if err != nil {
		c.sendError(f.ID, wire.CodeInternal, err.Error())
		return
	}
	c.mu.Lock()
	c.out = wire.AppendStats(c.out, f.ID, doc)
	c.signal()
	c.mu.Unlock()
}

// statsDoc encodes st as JSON that fits in one frame, listing only as many
// named queues as fit and saying how many were left out.
func statsDoc(st Stats) ([]byte, error) {
	limit := wire.MaxFrameSize - wire.HeaderSize
	all := st.Queues
	for n := len(all); ; n /= 2 {
		st.Queues = all[:n]
		st.QueuesOmitted = len(all) - n
		doc, err := json.Marshal(st)
		if err != nil || len(doc) <= limit {
			return doc, err
		}
	}
}

// appendMessage queues a MESSAGE response for m, taking ownership of m.
// c.mu is held on entry.
func (c *conn) appendMessage(id uint64, q *queue.Queue, m *queue.Message) {
	if c.info {
		c.log.Info("dequeued", "queue", queueLabel(q), "seq", m.Seq, "bytes", m.Size, "page", m.FD >= 0, "id", id)
	}
	wm := wire.Message{Seq: m.Seq, Size: uint64(m.Size), DigestAlg: m.DigestAlg, Digest: []byte(m.Digest)}
	if m.FD < 0 {
		c.out = wire.AppendMessage(c.out, id, wm, m.Inline, false)
		m.Inline = nil
	} else {
		c.fdAt = append(c.fdAt, len(c.out))
		c.outFDs = append(c.outFDs, m.FD)
		c.outMsgs = append(c.outMsgs, m)
		c.out = wire.AppendMessage(c.out, id, wm, nil, true)
	}
	c.signal()
}

// warnEvery bounds the warnings one connection's failed requests log: at
// most one per warnEvery, which counts the ones left out since the last,
// so that a client hammering a full queue cannot flood the log.
const warnEvery = time.Second

func (c *conn) sendError(id uint64, code wire.Code, msg string) {
	warn, suppressed := false, 0
	c.mu.Lock()
	c.out = wire.AppendError(c.out, id, code, msg)
	c.signal()
	if code != wire.CodeEmpty && code != wire.CodeCancelled {
		if now := time.Now(); now.Sub(c.lastWarn) >= warnEvery {
			warn, suppressed = true, c.suppressed
			c.lastWarn, c.suppressed = now, 0
		} else {
			c.suppressed++
		}
	}
	c.mu.Unlock()
	switch {
	case warn && suppressed > 0:
		c.log.Warn("request failed", "id", id, "code", code.String(), "err", msg, "failures_not_logged", suppressed)
	case warn:
		c.log.Warn("request failed", "id", id, "code", code.String(), "err", msg)
	case c.info:
		c.log.Info("request failed", "id", id, "code", code.String(), "err", msg)
	}
}

// signal makes sure what was just appended to the outbox gets sent: by
// the goroutine flushing it now, by the reader before it next waits, or
// else by the writer, which it wakes. c.mu is held on entry.
func (c *conn) signal() {
	if c.flushing || c.busy {
		return
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writeLoop sends what is appended while the reader waits, until quit is
// closed and the outbox is empty, or a write fails.
func (c *conn) writeLoop() {
	for {
		select {
		case <-c.wake:
			if !c.flush() {
				return
			}
		case <-c.quit:
			c.flush()
			return
		}
	}
}

// flush writes the outbox until it is empty, unless another goroutine is
// already doing so (it then sends what is pending too). It reports false
// once a write has failed and the connection is closing.
func (c *conn) flush() bool {
	c.mu.Lock()
	if c.flushing {
		c.mu.Unlock()
		return true
	}
	if c.closed && len(c.out) == 0 {
		c.mu.Unlock()
		return true
	}
	c.flushing = true
	for len(c.out) > 0 {
		buf, fds, fdAt, msgs := c.out, c.outFDs, c.fdAt, c.outMsgs
		c.out, c.outFDs, c.fdAt, c.outMsgs = c.spare[:0], c.spareFDs[:0], c.spareFdAt[:0], c.spareMsgs[:0]
		c.cond.Broadcast()
		c.mu.Unlock()

		err := c.write(buf, fds, fdAt)
		for i, m := range msgs {
			m.Release()
			msgs[i] = nil
		}
		if err != nil {
			if !isPeerGone(err) && !errors.Is(err, unix.EPIPE) {
				c.log.Warn("write failed; closing connection", "err", err)
			}
			c.uc.Close() // the reader notices and tears down
			c.mu.Lock()
			c.flushing = false
			c.mu.Unlock()
			c.discardOutbox()
			return false
		}
		if c.info {
			c.log.Info("responded", "bytes", len(buf), "pages", len(fds))
		}
		c.mu.Lock()
		c.spare, c.spareFDs, c.spareFdAt, c.spareMsgs = buf[:0], fds[:0], fdAt[:0], msgs[:0]
	}
	c.flushing = false
	c.cond.Broadcast()
	c.mu.Unlock()
	return true
}

// write sends buf; each frame carrying a page starts its own sendmsg.
func (c *conn) write(buf []byte, fds, fdAt []int) error {
	return wire.WriteFrames(c.uc, buf, fds, fdAt)
}

// discardOutbox drops responses that can no longer be sent, releasing
// their pages, and stops further queueing.
func (c *conn) discardOutbox() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for _, m := range c.outMsgs {
		m.Release()
	}
	c.out, c.outFDs, c.fdAt, c.outMsgs = nil, nil, nil, nil
	c.cond.Broadcast()
}

func peerCred(uc *net.UnixConn) (*unix.Ucred, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, errors.New("getsockopt(SO_PEERCRED): " + cerr.Error())
	}
	return cred, nil
}
