package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/handoff"
	"github.com/machq/machq/internal/naming"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/wire"
)

// Restarts without a disk (docs/RESTART.md): Handoff stops a server the
// way Shutdown does, but leaves its listening sockets open and its
// memory-only named queues as they are, and describes both; a successor
// (the next machqd, or a new Server of the same process when starting
// one failed) takes them over with Adopt. Durable queues are not handed
// over: they are on disk, and the successor recovers them from there.

// Handoff stops serving for a successor: it stops accepting (connections
// that arrive meanwhile wait in the listening sockets' backlogs), ends
// every connection as Shutdown does (requests already read are answered,
// the connection then gets a last ERROR SHUTTING_DOWN saying that what
// was not answered was not read, and the deliveries it held in ack mode
// go back to their queues), closes the data directory, and returns what
// a successor needs. If ctx ends first, the connections left are closed
// at once and the handoff goes on.
//
// The server cannot serve again. The descriptors the state names stay
// open and the queues keep theirs: give the state to Adopt, here or in
// the successor, or exit. If Handoff fails, it does so before anything
// stops: the server serves on.
func (s *Server) Handoff(ctx context.Context) (*handoff.State, error) {
	// What can fail is done first, while the server still serves: if
	// it fails, nothing has stopped.
	st := &handoff.State{}
	fail := func(err error) (*handoff.State, error) {
		closeListenerFDs(st)
		return nil, err
	}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		return nil, ErrServerClosed
	}
	ls := make([]*net.UnixListener, 0, len(s.listeners)+len(s.checkIns))
	for l := range s.listeners {
		ls = append(ls, l)
	}
	for l := range s.checkIns {
		if _, ok := s.listeners[l]; !ok {
			ls = append(ls, l)
		}
	}
	regs := make(map[*net.UnixListener]*naming.Registration, len(s.checkIns))
	for l, r := range s.checkIns {
		regs[l] = r
	}
	s.mu.Unlock()
	for _, l := range ls {
		fd, err := dupConn(l)
		if err != nil {
			return fail(fmt.Errorf("machq: handoff of the socket %s: %w", l.Addr(), err))
		}
		reg := regs[l]
		if reg == nil {
			st.Listeners = append(st.Listeners, handoff.Listener{Managed: true, Path: l.Addr().String(), FD: fd, LockFD: -1, DirFD: -1})
			continue
		}
		h, err := reg.Handover()
		if err != nil {
			unix.Close(fd)
			return fail(err)
		}
		// The lock and the directory stay the registration's, unreleased
		// until this process exits; the state gets duplicates.
		lock, err1 := dupConn(h.Lock)
		dir, err2 := dupConn(h.Dir)
		if err := errors.Join(err1, err2); err != nil {
			wire.CloseFDs([]int{fd, lock, dir})
			return fail(fmt.Errorf("machq: handoff of %s: %w", h.Path, err))
		}
		st.Listeners = append(st.Listeners, handoff.Listener{Path: h.Path, FD: fd, LockFD: lock, DirFD: dir, Name: h.Name,
			SockID: handoff.ID{Dev: h.SockID[0], Ino: h.SockID[1]}, LockID: handoff.ID{Dev: h.LockID[0], Ino: h.LockID[1]}})
	}

	s.keepListeners.Store(true)
	s.beginClose()
	finished := s.stopConnections()
	select {
	case <-finished:
	case <-ctx.Done():
		s.closeConns()
		<-finished
	}
	s.closeDurable()
	st.Queues = s.named.Save(func(q *queue.Queue) bool { return !q.Logged() })
	messages := savedMessages(st)
	s.log.Info("ready to hand over", "listeners", len(st.Listeners), "queues", len(st.Queues.Queues), "messages", messages, "payloads", len(st.Queues.Payloads))
	return st, nil
}

// closeListenerFDs closes the descriptors of st's listeners: a handoff
// that goes no further.
func closeListenerFDs(st *handoff.State) {
	for _, l := range st.Listeners {
		wire.CloseFDs([]int{l.FD, l.LockFD, l.DirFD})
	}
}

// dupConn duplicates the descriptor of c (close-on-exec) without
// changing it: (*os.File).Fd would put a socket in blocking mode.
func dupConn(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	dup := -1
	cerr := rc.Control(func(fd uintptr) {
		dup, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if cerr != nil {
		return -1, cerr
	}
	if err != nil {
		return -1, os.NewSyscallError("fcntl", err)
	}
	return dup, nil
}

// Adopt takes over what a predecessor handed over (Handoff): its named
// queues, rebuilt with their messages, sequence numbers, owners,
// settings and consumer groups, each message charged to its storer; and
// its listening sockets, which it returns for Serve. Call it before
// serving. The server takes every descriptor st names, even on an error.
func (s *Server) Adopt(st *handoff.State) ([]*net.UnixListener, error) {
	start := time.Now()
	var ls []*net.UnixListener
	var errs []error
	for _, hl := range st.Listeners {
		if hl.Managed {
			f := os.NewFile(uintptr(hl.FD), hl.Path)
			l, err := net.FileListener(f)
			f.Close()
			if err != nil {
				errs = append(errs, fmt.Errorf("machq: the socket %s handed over: %w", hl.Path, err))
				continue
			}
			ul, ok := l.(*net.UnixListener)
			if !ok {
				l.Close()
				errs = append(errs, fmt.Errorf("machq: the socket %s handed over is not a Unix socket", hl.Path))
				continue
			}
			ls = append(ls, ul)
			continue
		}
		reg, err := naming.Adopt(hl.Path, hl.Name, hl.FD, hl.LockFD, hl.DirFD,
			[2]uint64{hl.SockID.Dev, hl.SockID.Ino}, [2]uint64{hl.LockID.Dev, hl.LockID.Ino})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.mu.Lock()
		s.checkIns[reg.Listener] = reg
		s.mu.Unlock()
		ls = append(ls, reg.Listener)
	}
	if err := s.named.Load(st.Queues, s.ledger.Account); err != nil {
		errs = append(errs, fmt.Errorf("machq: taking over the named queues: %w", err))
	}
	messages := savedMessages(st)
	var bytes int64
	for _, p := range st.Queues.Payloads {
		bytes += p.Size
	}
	s.log.Info("took over from the previous server", "listeners", len(ls), "queues", len(st.Queues.Queues), "messages", messages, "bytes", bytes, "took", time.Since(start))
	return ls, errors.Join(errs...)
}

// savedMessages counts the messages of st's queues, a view of a consumer
// group counted as one.
func savedMessages(st *handoff.State) int {
	n := 0
	for _, q := range st.Queues.Queues {
		n += len(q.Messages)
		for _, g := range q.Groups {
			n += len(g.Views)
		}
	}
	return n
}
