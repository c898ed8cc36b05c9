package machq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/machq/machq/internal/naming"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/pagepool"
	"github.com/machq/machq/internal/spin"
	"github.com/machq/machq/internal/wire"
)

// writeGrace is how long a write that is under way when its caller gives
// up may still take before it is abandoned, which closes the connection
// (a frame may be half written) and fails every call on it: long enough
// that a server slow to read for a moment, on a loaded machine, does not
// cost the connection, short enough that a caller is not held long by a
// server that does not read at all. A write blocks only while the
// server's socket buffer is full.
const writeGrace = time.Second

// cancelWriteTimeout bounds the write of a CANCEL after a retrieve's
// context ended, and the wait for the server's answer to it.
const cancelWriteTimeout = time.Second

// Client is a connection to a machq server. It is safe for concurrent use
// by many goroutines: requests are pipelined on the one connection and
// their responses matched by id.
//
// The connection's private queue lives exactly as long as the Client: when
// it is closed, or its process dies, the server frees what it stored there.
type Client struct {
	uc      *net.UnixConn
	path    string
	opts    options
	welcome wire.Welcome
	next    *pagepool.Pool // the next large send's pages, allocated ahead

	wmu      sync.Mutex // guards the write side below
	wbuf     []byte
	wfds     []int // owned: closed once written
	wfdAt    []int // offset in wbuf of the frame carrying wfds[i]
	spare    []byte
	flushing bool
	werr     error

	mu      sync.Mutex // guards the fields below
	nextID  uint64
	pending map[uint64]*call
	private []sentDigest        // digests of private stores, oldest first
	orphans map[string][]result // retrieved after their caller gave up
	err     error               // why the connection ended

	// The socket is read by one caller at a time, whichever is waiting
	// for a response when nobody else is reading: it hands the responses
	// of others to their calls and stops reading once its own has come.
	// A request answered at once thus costs no switch between goroutines.
	rmu        sync.Mutex    // held by the goroutine reading the socket
	rd         *wire.Reader  // guarded by rmu
	readerFree chan struct{} // capacity 1: a token sent when rmu is released
	ended      bool          // guarded by rmu: the connection has been torn down
}

type call struct {
	op     wire.Op
	queue  string
	ch     chan result // capacity 1
	gaveUp bool        // the caller stopped waiting
	// waits: a RETRIEVE that may wait on the server (wait_ms != 0).
	// cancelled: a CANCEL was sent for it after its caller's context
	// ended; its answer is awaited a little longer.
	waits, cancelled bool
	// ack: a RETRIEVE in ack mode.
	ack bool
	// orphan: where a MESSAGE that comes after the caller gave up is
	// kept (orphanKey, with the consumer group).
	orphan string
	// For a private store: the digest to remember once stored.
	private *sentDigest
}

type result struct {
	seq     uint64
	msg     *Message
	expect  *sentDigest // for a private retrieve: the digest recorded at store
	settled wire.Settled
	kicked  uint32
	dropped wire.Dropped
	grouped wire.Grouped
	stats   []byte
	err     error
}

// Dial connects to the server registered under target: a service name
// (resolved in the runtime directory, see SocketPath) or, if target holds
// a slash, a socket path. The empty target means the default service,
// "machq". ctx bounds the connection and the handshake.
// Before sending anything it checks that the server, and a service's
// runtime directory and socket file, belong to root or this process's
// effective uid (or WithServerUID's): else ErrUntrustedServer.
func Dial(ctx context.Context, target string, opts ...Option) (*Client, error) {
	o := options{inline: DefaultInlineThreshold, digest: DigestSHA256, spare: DefaultSparePage}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	uc, path, err := dialTrusted(ctx, target, &o)
	if err != nil {
		return nil, err
	}
	c := &Client{
		uc:      uc,
		path:    path,
		opts:    o,
		pending: make(map[uint64]*call),
		orphans: make(map[string][]result),
		next:    pagepool.New("machq", o.spare),

		readerFree: make(chan struct{}, 1),
	}
	c.rd = wire.NewReader(spin.NewReader(c.uc, o.spin, clientSpinners))
	if err := c.handshake(ctx, c.rd); err != nil {
		c.rd.Close()
		c.uc.Close()
		return nil, err
	}
	return c, nil
}

// clientSpinners bounds the clients of this process spinning at once
// (WithSpin): half the CPUs it may use, at least one, so that many clients
// waiting at once do not take the CPUs their own work needs.
var clientSpinners = spin.NewLimiter(max(1, runtime.GOMAXPROCS(0)/2))

// SocketPath returns the socket path of the service called name: the file
// NAME.sock in $MACHQ_RUNTIME_DIR, else $XDG_RUNTIME_DIR/machq, else
// /run/machq for root, else machq-UID under the temporary directory.
func SocketPath(name string) (string, error) {
	p, err := naming.SocketPath(name)
	if err != nil {
		return "", fmt.Errorf("machq: %w", err)
	}
	return p, nil
}

func (c *Client) handshake(ctx context.Context, rd *wire.Reader) error {
	if dl, ok := ctx.Deadline(); ok {
		c.uc.SetDeadline(dl)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.uc.SetDeadline(time.Now())
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired // it ran: clear the deadline only after it did
		}
		c.uc.SetDeadline(time.Time{})
	}()
	if _, err := c.uc.Write(wire.AppendHello(nil, 0, wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.Version})); err != nil {
		// A server refusing the connection (a connection limit) says why
		// and closes it, perhaps before the HELLO arrived: read the why.
		if f, rerr := rd.ReadFrame(); rerr == nil && f.Op == wire.OpError {
			code, msg, _ := wire.ParseError(f.Body)
			return &ServerError{Code: ErrorCode(code), Message: msg}
		}
		if peerGone(err) {
			return fmt.Errorf("%w: server at %s closed the connection during the handshake (stopping or restarting?): %w", ErrClosed, c.path, err)
		}
		return fmt.Errorf("machq: handshake with %s: %w", c.path, err)
	}
	f, err := rd.ReadFrame()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("machq: handshake with %s: %w", c.path, ctx.Err())
		}
		if peerGone(err) {
			return fmt.Errorf("%w: server at %s closed the connection during the handshake (stopping or restarting?): %w", ErrClosed, c.path, err)
		}
		return fmt.Errorf("%w: handshake with %s: %w", ErrProtocol, c.path, err)
	}
	wire.CloseFDs(f.FDs)
	switch f.Op {
	case wire.OpWelcome:
		w, err := wire.ParseWelcome(f.Body)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		if w.Version < wire.MinVersion || w.Version > wire.Version {
			return fmt.Errorf("%w: server chose protocol version %d; this client speaks %d to %d", ErrProtocol, w.Version, wire.MinVersion, wire.Version)
		}
		c.welcome = w
		c.opts.inline = min(c.opts.inline, int(w.MaxInline))
		return nil
	case wire.OpError:
		code, msg, _ := wire.ParseError(f.Body)
		return &ServerError{Code: ErrorCode(code), Message: msg}
	}
	return fmt.Errorf("%w: server answered HELLO with %s", ErrProtocol, f.Op)
}

// peerGone reports errors that mean the server closed the connection.
func peerGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// Path returns the socket path the client is connected to.
func (c *Client) Path() string { return c.path }

// ServerPID returns the process id the server reported at the handshake.
func (c *Client) ServerPID() int { return int(c.welcome.ServerPID) }

// ProtocolVersion returns the protocol version agreed with the server at
// the handshake: ProtocolAck or more for acknowledged delivery.
func (c *Client) ProtocolVersion() int { return int(c.welcome.Version) }

// ProtocolAck is the first protocol version with acknowledged delivery
// (Reserve, Kick).
const ProtocolAck = wire.VersionAck

// MaxMessageSize returns the largest payload the server accepts.
func (c *Client) MaxMessageSize() int64 {
	if c.welcome.MaxMessage > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(c.welcome.MaxMessage)
}

// MaxInline returns the largest payload the server accepts inline, as it
// announced at the handshake; larger payloads travel as memfds.
func (c *Client) MaxInline() int { return int(c.welcome.MaxInline) }

// Close closes the connection. The server frees the private queue; calls
// in progress fail with ErrClosed. Messages already retrieved stay valid
// until their own Close.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	err := c.uc.Close()
	// A caller reading the socket fails at once and tears down; wait for
	// it, or tear down here.
	c.rmu.Lock()
	c.teardown(net.ErrClosed)
	c.rmu.Unlock()
	c.releaseReader()
	c.next.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// fail records why the connection ended, if it is the first reason.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

// register allocates a request id for cl, unless ctx has already ended:
// then nothing is sent at all.
func (c *Client) register(ctx context.Context, cl *call) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, &notSentError{c.err}
	}
	c.nextID++
	c.pending[c.nextID] = cl
	return c.nextID, nil
}

// unregister forgets a call whose request was never sent.
func (c *Client) unregister(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// enqueue appends a frame, encoded by encode, and the descriptor it
// carries (fd, or -1), to the write buffer and flushes it unless another
// goroutine is already flushing, in which case that goroutine sends it in
// the same batch. The client takes ownership of fd.
//
// A write blocks only while the server is not reading. If ctx ends while
// this goroutine is blocked writing, the write is abandoned and, since a
// frame may be half written, the connection is closed.
func (c *Client) enqueue(ctx context.Context, fd int, encode func([]byte) []byte) error {
	return c.enqueueFrames(ctx, []outFrame{{fd: fd, encode: encode}})
}

// outFrame is one frame for enqueueFrames: encode appends it, and fd (or
// -1) is the descriptor it carries. The frames of batches, many at a time,
// are described instead (op OpStore or OpRetrieve, with id and st, inline
// and page, or req), which costs no closure per frame.
type outFrame struct {
	fd     int
	encode func([]byte) []byte

	op     wire.Op
	id     uint64
	st     wire.Store
	inline []byte
	page   bool
	req    wire.Retrieve
}

// appendTo appends the frame to b.
func (f *outFrame) appendTo(b []byte) []byte {
	switch {
	case f.encode != nil:
		return f.encode(b)
	case f.op == wire.OpStore:
		return wire.AppendStore(b, f.id, f.st, f.inline, f.page)
	default:
		return wire.AppendRetrieve(b, f.id, f.req)
	}
}

// enqueueFrames is enqueue for several frames, which go out in order and
// together; it takes ownership of their descriptors.
func (c *Client) enqueueFrames(ctx context.Context, frames []outFrame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		for _, f := range frames {
			closeFD(f.fd)
		}
		return &notSentError{c.werr} // none of these frames went out
	}
	for i := range frames {
		f := &frames[i]
		if f.fd >= 0 {
			c.wfdAt = append(c.wfdAt, len(c.wbuf))
			c.wfds = append(c.wfds, f.fd)
		}
		c.wbuf = f.appendTo(c.wbuf)
	}
	if c.flushing {
		return nil
	}
	c.flushing = true
	defer func() { c.flushing = false }()
	for len(c.wbuf) > 0 && c.werr == nil {
		buf, fds, fdAt := c.wbuf, c.wfds, c.wfdAt
		c.wbuf, c.wfds, c.wfdAt = c.spare[:0], nil, nil
		c.wmu.Unlock()
		err := c.write(ctx, buf, fds, fdAt)
		wire.CloseFDs(fds)
		c.wmu.Lock()
		c.spare = buf[:0]
		if err != nil && ctx.Err() == nil && peerGone(err) {
			// The server closed the connection. What it sent before
			// closing is still to be read, and says what became of the
			// requests sent (a stopping server's last ERROR says it read
			// none it did not answer): the callers of this batch wait
			// for the reader rather than fail now.
			c.werr = c.connErr(err)
			c.uc.CloseWrite()
			wire.CloseFDs(c.wfds)
			c.wbuf, c.wfds, c.wfdAt = nil, nil, nil
			return nil
		}
		if err != nil {
			c.werr = c.connErr(err)
			c.uc.Close() // the reader fails every pending call
			wire.CloseFDs(c.wfds)
			c.wbuf, c.wfds, c.wfdAt = nil, nil, nil
			if ctx.Err() != nil {
				// This caller gave up; say so, and that the connection
				// went with it.
				return fmt.Errorf("%w while writing to a server that is not reading: %w", ctx.Err(), c.werr)
			}
		}
	}
	return c.werr
}

// write sends buf, abandoning the write if it is still blocked
// writeGrace after ctx ends.
func (c *Client) write(ctx context.Context, buf []byte, fds, fdAt []int) error {
	if ctx.Done() == nil {
		return wire.WriteFrames(c.uc, buf, fds, fdAt) // nothing to abandon it for
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.uc.SetWriteDeadline(time.Now().Add(writeGrace))
		close(fired)
	})
	err := wire.WriteFrames(c.uc, buf, fds, fdAt)
	if !stop() {
		<-fired
		if err == nil {
			c.uc.SetWriteDeadline(time.Time{}) // fired just after the write
		}
	}
	return err
}

// connErr turns a transport error into the error callers see.
func (c *Client) connErr(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	return fmt.Errorf("%w: connection to %s lost: %v; Dial again", ErrClosed, c.path, err)
}

// read reads and dispatches responses, as the one goroutine reading the
// socket (rmu held), until cl has its result, ctx ends or the connection
// fails. It reports whether cl has its result.
func (c *Client) read(ctx context.Context, cl *call) bool {
	if c.ended {
		return len(cl.ch) > 0
	}
	// Only a read that may block needs ctx to interrupt it: frames
	// already buffered are taken without arming it.
	var disarm func()
	defer func() {
		if disarm != nil {
			disarm()
		}
	}()
	for len(cl.ch) == 0 {
		if disarm == nil && ctx.Done() != nil && !c.rd.Buffered() {
			disarm = c.interruptRead(ctx)
		}
		f, err := c.rd.ReadFrame()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil {
				return false // this caller gave up; the stream is intact
			}
			c.teardown(err)
			break
		}
		if f.Op == wire.OpError && f.ID == 0 {
			code, msg, _ := wire.ParseError(f.Body)
			var err error = &ServerError{Code: ErrorCode(code), Message: msg}
			if ErrorCode(code) == CodeShuttingDown {
				// The server answered all it read: the requests it did
				// not answer were never read, and may be sent again.
				err = &notSentError{err}
			}
			c.teardown(err)
			break
		}
		c.dispatch(f)
	}
	return len(cl.ch) > 0
}

// interruptRead makes the end of ctx interrupt the reading of the
// socket (a read deadline now), until the function it returns is called,
// which also lifts that deadline if it was set.
func (c *Client) interruptRead(ctx context.Context) func() {
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.uc.SetReadDeadline(time.Now())
		close(fired)
	})
	return func() {
		if !stop() {
			<-fired
			c.uc.SetReadDeadline(time.Time{})
		}
	}
}

// releaseReader tells waiting callers that nobody reads the socket now,
// so that one of them takes over.
func (c *Client) releaseReader() {
	select {
	case c.readerFree <- struct{}{}:
	default:
	}
}

// teardown ends the connection after a read failed with err: every
// pending call fails with the reason. rmu is held.
func (c *Client) teardown(err error) {
	if c.ended {
		return
	}
	c.ended = true
	c.rd.Close()
	c.uc.Close()
	c.fail(c.describe(err))

	c.mu.Lock()
	pending := c.pending
	c.pending = nil
	cause := c.err
	var ns *notSentError
	if errors.As(err, &ns) {
		cause = &notSentError{cause}
	}
	orphans := c.orphans
	c.orphans = nil
	c.mu.Unlock()
	for _, cl := range pending {
		if len(cl.ch) == 0 {
			cl.ch <- result{err: cause}
		}
	}
	for _, rs := range orphans {
		for _, r := range rs {
			r.msg.Close()
		}
	}
}

func (c *Client) describe(err error) error {
	var se *ServerError
	switch {
	case errors.As(err, &se) && se.Code == CodeShuttingDown:
		return fmt.Errorf("%w: %w; Dial again", ErrClosed, se)
	case errors.As(err, &se):
		return fmt.Errorf("%w: server closed the connection: %w", ErrClosed, se)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("%w: server at %s closed the connection (stopped or restarted?); Dial again", ErrClosed, c.path)
	case errors.Is(err, net.ErrClosed):
		return ErrClosed
	}
	return fmt.Errorf("%w: %w: %v", ErrClosed, ErrProtocol, err)
}

// dispatch routes one response to its call. It owns f.FDs.
func (c *Client) dispatch(f wire.Frame) {
	c.mu.Lock()
	cl := c.pending[f.ID]
	delete(c.pending, f.ID)
	c.mu.Unlock()
	if cl == nil {
		wire.CloseFDs(f.FDs)
		return // a response to a request that is no longer pending
	}
	var r result
	if want := responseOp(cl.op); f.Op != want && f.Op != wire.OpError {
		wire.CloseFDs(f.FDs)
		r.err = fmt.Errorf("%w: server answered %s with %s", ErrProtocol, cl.op, f.Op)
		c.mu.Lock()
		defer c.mu.Unlock()
		if !cl.gaveUp {
			cl.ch <- r
		}
		return
	}
	switch f.Op {
	case wire.OpStored:
		r.seq, r.err = wire.ParseStored(f.Body)
		if r.err == nil && cl.private != nil {
			cl.private.seq = r.seq
			c.mu.Lock()
			c.private = append(c.private, *cl.private)
			c.mu.Unlock()
		}
	case wire.OpMessage:
		r = c.message(cl, f)
	case wire.OpStats:
		r.stats = bytes.Clone(f.Body)
	case wire.OpDisowned:
		wire.CloseFDs(f.FDs)
	case wire.OpSettled:
		wire.CloseFDs(f.FDs)
		r.settled, r.err = wire.ParseSettled(f.Body)
	case wire.OpKicked:
		wire.CloseFDs(f.FDs)
		r.kicked, r.err = wire.ParseKicked(f.Body)
	case wire.OpPurged, wire.OpDeleted:
		wire.CloseFDs(f.FDs)
		r.dropped, r.err = wire.ParseDropped(f.Body)
	case wire.OpGrouped:
		wire.CloseFDs(f.FDs)
		r.grouped, r.err = wire.ParseGrouped(f.Body)
	case wire.OpConfigured:
		wire.CloseFDs(f.FDs)
	case wire.OpError:
		wire.CloseFDs(f.FDs)
		code, msg, err := wire.ParseError(f.Body)
		if err != nil {
			r.err = fmt.Errorf("%w: %v", ErrProtocol, err)
		} else {
			r.err = &ServerError{Code: ErrorCode(code), Message: msg}
			if ErrorCode(code) == CodeShuttingDown {
				// Refused unexecuted (a wait or a store waiting for
				// room) by a server that is stopping: safe to resend.
				r.err = &notSentError{fmt.Errorf("%w: %w", ErrClosed, r.err)}
			}
		}
	default:
		wire.CloseFDs(f.FDs)
		r.err = fmt.Errorf("%w: unexpected %s response to %s", ErrProtocol, f.Op, cl.op)
	}

	// Under c.mu, so that wait sees either the result or gaveUp set.
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl.gaveUp {
		if r.msg != nil && cl.op == wire.OpPeek {
			r.msg.Close() // a copy nobody waits for
			return
		}
		if r.msg != nil {
			// Keep it for the next retrieve from the same queue rather
			// than lose a message the server has already handed over.
			c.orphans[cl.orphan] = append(c.orphans[cl.orphan], r)
		}
		return
	}
	cl.ch <- r // never blocks: capacity 1, one send
}

// responseOp returns the operation that answers a request.
func responseOp(req wire.Op) wire.Op {
	switch req {
	case wire.OpStore:
		return wire.OpStored
	case wire.OpRetrieve:
		return wire.OpMessage
	case wire.OpStat:
		return wire.OpStats
	case wire.OpDisown:
		return wire.OpDisowned
	case wire.OpAck, wire.OpNak, wire.OpTouch, wire.OpTerm:
		return wire.OpSettled
	case wire.OpKick:
		return wire.OpKicked
	case wire.OpPeek:
		return wire.OpMessage
	case wire.OpPurge:
		return wire.OpPurged
	case wire.OpDelete:
		return wire.OpDeleted
	case wire.OpGroup:
		return wire.OpGrouped
	case wire.OpConfig:
		return wire.OpConfigured
	}
	return wire.OpError
}

// orphanKey names the orphans of retrieves of queue in one mode: a
// message delivered in ack mode goes only to a later ack-mode retrieve,
// which will settle it.
func orphanKey(queue string, ack bool) string {
	if ack {
		return queue + "\x00ack"
	}
	return queue
}

// message builds the result of a MESSAGE response. It owns f.FDs.
func (c *Client) message(cl *call, f wire.Frame) result {
	wm, inline, err := wire.ParseMessage(f.Header, f.Body)
	if err == nil && f.Flags&wire.FlagInline == 0 && len(f.FDs) != 1 {
		err = fmt.Errorf("out-of-line MESSAGE carried %d descriptors", len(f.FDs))
	}
	if err == nil && wm.Ack != cl.ack {
		err = fmt.Errorf("server answered a RETRIEVE (ack mode %v) with a MESSAGE in ack mode %v", cl.ack, wm.Ack)
	}
	if err != nil {
		wire.CloseFDs(f.FDs)
		return result{err: fmt.Errorf("%w: %v", ErrProtocol, err)}
	}
	m := &Message{
		Seq:       wm.Seq,
		Queue:     cl.queue,
		size:      int64(wm.Size),
		fd:        -1,
		digestAlg: Digest(wm.DigestAlg),
		digest:    bytes.Clone(wm.Digest),
		accept:    c.opts.accept,
	}
	if wm.Ack {
		m.ack = &ackInfo{token: wm.Token, deliveries: wm.Deliveries, dead: DeadReason(wm.Dead), note: string(wm.Note), diedAfter: wm.DiedAfter}
	}
	r := result{msg: m}
	if f.Flags&wire.FlagInline != 0 {
		wire.CloseFDs(f.FDs) // none belong to an inline message
		if f.Owned {
			m.data = inline // read into memory of its own: keep it
		} else {
			m.data = bytes.Clone(inline)
		}
	} else {
		m.fd = f.FDs[0]
		// Map only what is sealed and of the announced size: a page that
		// could still change, or is shorter than announced, cannot be
		// verified (and touching a short one would fault).
		if err := page.Check(m.fd, m.size); err != nil {
			r.err = &TamperedError{Queue: cl.queue, Seq: m.Seq, Reason: "the page received cannot be trusted: " + err.Error()}
			m.Close()
			r.msg = nil
		}
	}
	if cl.queue == "" && cl.op == wire.OpPeek {
		r.expect = c.lookPrivate(m.Seq)
	} else if cl.queue == "" {
		r.expect = c.expectPrivate(m.Seq, cl.ack)
	}
	return r
}

// wait waits for cl's result or for ctx to end. While nobody else reads
// the socket, it reads it itself.
func (c *Client) wait(ctx context.Context, id uint64, cl *call) (result, error) {
	// A caller woken by readerFree holds the token: it passes it on unless
	// it reads itself, so that no waiter is left with nobody reading.
	token := false
	defer func() {
		if token {
			c.releaseReader()
		}
	}()
	for ctx.Err() == nil {
		select {
		case r := <-cl.ch:
			return r, r.err
		default:
		}
		if c.rmu.TryLock() {
			token = false
			got := c.read(ctx, cl)
			c.rmu.Unlock()
			c.releaseReader()
			if got {
				r := <-cl.ch
				return r, r.err
			}
			continue
		}
		token = false // the goroutine reading passes it on when it stops
		select {
		case r := <-cl.ch:
			return r, r.err
		case <-c.readerFree:
			token = true
		case <-ctx.Done():
		}
	}
	select {
	case r := <-cl.ch:
		return r, r.err
	default:
	}
	if cl.waits && !cl.cancelled {
		// Cancel the waiting retrieve and let the server's answer
		// decide: it may have handed a message over already, which is
		// returned rather than lost. Bounded: a server that reads
		// nothing gets the connection closed. The reader's turn is
		// passed on first, so that nobody waits on this write.
		if token {
			token = false
			c.releaseReader()
		}
		cl.cancelled = true
		cctx, cancel := context.WithTimeout(context.Background(), cancelWriteTimeout)
		c.enqueue(cctx, -1, func(b []byte) []byte { return wire.AppendCancel(b, 0, id) })
		r, err := c.wait(cctx, id, cl)
		answered := cctx.Err() == nil
		cancel()
		var se *ServerError
		switch {
		case r.msg != nil:
			return r, r.err
		case answered && err == nil:
			return r, nil // a store done just as its caller gave up
		case errors.As(err, &se) && (se.Code == CodeCancelled || se.Code == CodeEmpty):
			return result{}, ctx.Err() // answered: no message came
		case answered && err != nil:
			return result{}, err // the answer was a failure of its own
		}
		// No answer in time: a message that comes later is kept below.
	}
	c.mu.Lock()
	select {
	case r := <-cl.ch:
		c.mu.Unlock()
		return r, r.err
	default:
	}
	cl.gaveUp = true
	c.mu.Unlock()
	return result{}, ctx.Err()
}
