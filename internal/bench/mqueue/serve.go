package mqueue

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/bench/fifo"
	"github.com/machq/machq/internal/bench/rawsock"
)

// Serve accepts control connections on ln, a listening Unix stream socket
// such as Listen returns, and serves the pair of queues each client names
// on its own goroutine, with its own FIFO. Serve owns ln: it closes it
// before returning. When ctx is done, Serve stops accepting, ends every
// control connection, waits until each pair's goroutine has freed what it
// stored and closed its queues, and returns nil. It returns an error if
// accepting fails for another reason. A client that breaks the protocol
// is dropped without affecting the others.
func Serve(ctx context.Context, ln int) error {
	return serve(ctx, ln, nil)
}

// serve is Serve with a hook called with each connection's outcome after
// everything it held is freed.
func serve(ctx context.Context, ln int, connDone func(error)) error {
	return rawsock.Serve(ctx, ln, serveConn, connDone)
}

// serveConn runs one client's session: the handshake on the control
// connection ctl, then the queues until ctl ends or the worker fails.
func serveConn(ctl int) error {
	base, err := readString(ctl)
	if err != nil {
		if err == errControlClosed {
			return nil
		}
		return err
	}
	w, err := openPair(base)
	if err != nil {
		writeString(ctl, err.Error())
		return err
	}
	defer w.close()
	if err := writeString(ctl, ""); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		err := w.run()
		// Wake the wait below if the worker ended by itself.
		unix.Shutdown(ctl, unix.SHUT_RDWR)
		done <- err
	}()
	waitEnd(ctl)
	w.dead.Store(true)
	unblock(w.req, w.rsp, w.msgsize)
	return <-done
}

// worker serves one pair of queues.
type worker struct {
	req, rsp int
	msgsize  int
	prio     uint32
	stored   fifo.Queue[[]byte]
	free     [][]byte // buffers of msgsize bytes for reuse
	dead     atomic.Bool
}

// openPair opens the queues named base-req and base-rsp, which the client
// created, and unlinks both names. It opens only names this package
// makes, so a client cannot have the peer remove other queues.
func openPair(base string) (*worker, error) {
	if !strings.HasPrefix(base, namePrefix) || strings.Contains(base[1:], "/") {
		return nil, fmt.Errorf("%w: queue name %q does not start with %s", errProtocol, base, namePrefix)
	}
	w := &worker{req: -1, rsp: -1}
	var err error
	if w.req, err = mqOpen(reqName(base), unix.O_RDWR|unix.O_CLOEXEC, nil); err != nil {
		return nil, fmt.Errorf("mqueue: mq_open %s: %w", reqName(base), err)
	}
	if w.rsp, err = mqOpen(rspName(base), unix.O_RDWR|unix.O_CLOEXEC, nil); err != nil {
		unix.Close(w.req)
		return nil, fmt.Errorf("mqueue: mq_open %s: %w", rspName(base), err)
	}
	mqUnlink(reqName(base))
	mqUnlink(rspName(base))
	ra, err := mqGetattr(w.req)
	if err == nil {
		var sa mqAttr
		if sa, err = mqGetattr(w.rsp); err == nil && sa.Msgsize != ra.Msgsize {
			err = fmt.Errorf("%w: the queues' message sizes differ (%d and %d bytes)", errProtocol, ra.Msgsize, sa.Msgsize)
		}
	}
	if err != nil {
		w.close()
		return nil, err
	}
	w.msgsize = ra.Msgsize
	return w, nil
}

func (w *worker) close() {
	unix.Close(w.req)
	unix.Close(w.rsp)
	w.stored = fifo.Queue[[]byte]{}
	w.free = nil
}

// buffer returns a buffer of msgsize bytes.
func (w *worker) buffer() []byte {
	if n := len(w.free); n > 0 {
		b := w.free[n-1]
		w.free[n-1] = nil
		w.free = w.free[:n-1]
		return b
	}
	return make([]byte, w.msgsize)
}

// run serves requests until the session is marked dead or a queue
// operation fails.
func (w *worker) run() error {
	var cur []byte
	for {
		if cur == nil {
			cur = w.buffer()
		}
		n, err := mqReceive(w.req, cur, &w.prio, nil)
		if w.dead.Load() {
			return nil
		}
		if err != nil {
			return os.NewSyscallError("mq_timedreceive", err)
		}
		switch w.prio {
		case prioStore:
			w.stored.Push(cur[:n])
			cur = nil
			err = mqSend(w.rsp, nil, prioAck, nil)
		case prioRetrieve:
			if b, ok := w.stored.Pop(); ok {
				err = mqSend(w.rsp, b, prioData, nil)
				w.free = append(w.free, b[:cap(b)])
			} else {
				err = mqSend(w.rsp, nil, prioEmpty, nil)
			}
		case prioWake:
			return nil
		default:
			return fmt.Errorf("%w: request of priority %d", errProtocol, w.prio)
		}
		if w.dead.Load() {
			return nil
		}
		if err != nil {
			return os.NewSyscallError("mq_timedsend", err)
		}
	}
}
