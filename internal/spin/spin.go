// Package spin reads a Unix stream socket by trying for a short while
// before parking: a reader that expects an answer within microseconds
// keeps calling recvmsg(2) without blocking, on its own CPU, instead of
// parking its goroutine in Go's network poller, whose wake-up (epoll, a
// futex, the scheduler) costs more than the answer itself on small
// request/response exchanges.
//
// Spinning trades CPU for latency, so it is bounded twice: in time (the
// budget of each wait) and in number (a Limiter: at most so many readers
// of a process spin at once; the rest park at once).
package spin

import (
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Limiter bounds how many readers spin at the same time. The zero value
// allows none; a nil *Limiter allows any number.
type Limiter struct {
	max     int32
	running atomic.Int32
}

// NewLimiter returns a Limiter that lets n readers spin at once.
func NewLimiter(n int) *Limiter { return &Limiter{max: int32(n)} }

// Running returns how many readers are spinning now.
func (l *Limiter) Running() int { return int(l.running.Load()) }

func (l *Limiter) acquire() bool {
	if l == nil {
		return true
	}
	for {
		n := l.running.Load()
		if n >= l.max {
			return false
		}
		if l.running.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (l *Limiter) release() {
	if l != nil {
		l.running.Add(-1)
	}
}

// Reader reads from a Unix stream socket like (*net.UnixConn).ReadMsgUnix,
// but when nothing is there to read it keeps trying, for up to its
// budget, before it parks. A reader whose spins keep finding nothing
// (FailLimit in a row: a peer that answers slowly, or that cannot run
// because this reader holds the CPU it was woken on) stops spinning, and
// tries again once every Probe waits; one spin that finds data makes it
// spin every time again. Read deadlines set on the connection still
// apply (one that passes while the reader spins takes effect when the
// spin ends), and so does closing it.
type Reader struct {
	uc    *net.UnixConn
	rc    syscall.RawConn
	rcErr error        // why uc has no RawConn (it is not a usable connection)
	max   atomic.Int64 // the budget of a spin, in nanoseconds; 0: never spin
	limit *Limiter

	// Touched only by the one goroutine reading.
	fails  int    // spins in a row that found nothing
	parked int    // waits without a spin since fails reached FailLimit
	op     readOp // the read under way
	try    func(uintptr) bool
}

// FailLimit is how many spins in a row may find nothing before a Reader
// stops spinning; Probe is how many waits it then parks at once before
// it tries a spin again.
const (
	FailLimit = 3
	Probe     = 64
)

// NewReader returns a Reader of uc that spins for up to max before
// parking, when limit lets it (nil: always).
func NewReader(uc *net.UnixConn, max time.Duration, limit *Limiter) *Reader {
	r := &Reader{uc: uc, limit: limit}
	r.rc, r.rcErr = uc.SyscallConn()
	r.try = r.tryRead
	r.max.Store(int64(max))
	return r
}

// SetMax changes the longest spin; 0 turns spinning off.
func (r *Reader) SetMax(d time.Duration) { r.max.Store(int64(d)) }

// next returns how long the coming wait may spin.
func (r *Reader) next() time.Duration {
	max := time.Duration(r.max.Load())
	if max <= 0 {
		return 0
	}
	if r.fails >= FailLimit {
		if r.parked++; r.parked <= Probe {
			return 0
		}
		r.parked = 0
		r.fails = FailLimit - 1 // a probe that finds nothing parks again
	}
	return max
}

// adapt learns from a spin that found data or not.
func (r *Reader) adapt(found bool) {
	if found {
		r.fails = 0
	} else {
		r.fails++
	}
}

// ReadMsgUnix reads what is there, up to len(b) bytes and the
// descriptors that came with them (close-on-exec), waiting as described
// for Reader. It returns n = 0 and no error at the end of the stream. addr
// is always nil.
func (r *Reader) ReadMsgUnix(b, oob []byte) (n, oobn, flags int, addr *net.UnixAddr, err error) {
	if r.rcErr != nil {
		return 0, 0, 0, nil, r.rcErr
	}
	r.op = readOp{b: b, oob: oob, budget: -1}
	err = r.rc.Read(r.try)
	op := &r.op
	if err == nil && op.err != nil {
		err = &net.OpError{Op: "read", Net: "unix", Source: r.uc.LocalAddr(), Addr: r.uc.RemoteAddr(), Err: os.NewSyscallError("recvmsg", op.err)}
	}
	n, oobn, flags = max(op.n, 0), op.oobn, op.flags
	r.op = readOp{}
	return n, oobn, flags, nil, err
}

// readOp is one ReadMsgUnix: its buffers, its spin and its result.
type readOp struct {
	b, oob         []byte
	budget         time.Duration // -1 until the spin is decided
	n, oobn, flags int
	err            error
}

// tryRead is the function RawConn.Read calls whenever the socket may be
// readable: it reports whether the read is over (with data, the end of
// the stream or an error) or must wait.
func (r *Reader) tryRead(fd uintptr) bool {
	op := &r.op
	op.n, op.oobn, op.flags, op.err = recvmsg(int(fd), op.b, op.oob)
	if op.err != unix.EAGAIN {
		return true
	}
	if op.budget >= 0 {
		return false // spun already: park until the socket is readable
	}
	if op.budget = r.next(); op.budget == 0 || !r.limit.acquire() {
		op.budget = 0
		return false
	}
	defer r.limit.release()
	start := time.Now()
	for i := 0; ; i++ {
		op.n, op.oobn, op.flags, op.err = recvmsg(int(fd), op.b, op.oob)
		if op.err != unix.EAGAIN {
			r.adapt(true)
			return true
		}
		if i%8 == 7 && time.Since(start) >= op.budget {
			r.adapt(false)
			return false
		}
	}
}

// recvmsg is recvmsg(2) on a connected socket without waiting, taking
// descriptors close-on-exec. Unlike the library's wrappers it allocates
// nothing: a connected stream socket has no source address to return.
func recvmsg(fd int, b, oob []byte) (n, oobn, flags int, err error) {
	var iov unix.Iovec
	if len(b) > 0 {
		iov.Base = &b[0]
		iov.SetLen(len(b))
	}
	var msg unix.Msghdr
	msg.Iov = &iov
	msg.SetIovlen(1)
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	r, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if e != 0 {
		return 0, 0, 0, e
	}
	return int(r), int(msg.Controllen), int(msg.Flags), nil
}
