package mqueue

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/bench/rawsock"
)

// Message priorities: what a message is.
const (
	prioStore    = 0 // request: store this payload
	prioRetrieve = 1 // request: send back the oldest payload
	prioAck      = 0 // response: stored
	prioData     = 1 // response: the retrieved payload
	prioEmpty    = 2 // response: nothing to retrieve
	prioWake     = 3 // either queue: the other side is gone
)

// mqAttr is struct mq_attr.
type mqAttr struct {
	Flags   int
	Maxmsg  int
	Msgsize int
	Curmsgs int
	_       [4]int
}

// zeroTime is an absolute timeout long past: a send to a full queue or a
// receive from an empty one fails at once with ETIMEDOUT instead of
// blocking.
var zeroTime unix.Timespec

// sysName is the name the system calls take: the POSIX name without its
// leading slash.
func sysName(name string) (*byte, error) {
	if !strings.HasPrefix(name, "/") || strings.Contains(name[1:], "/") || len(name) < 2 {
		return nil, fmt.Errorf("mqueue: invalid queue name %q", name)
	}
	return unix.BytePtrFromString(name[1:])
}

// mqOpen is mq_open(3). attr is used only with O_CREAT and may be nil.
func mqOpen(name string, flags int, attr *mqAttr) (int, error) {
	p, err := sysName(name)
	if err != nil {
		return -1, err
	}
	for {
		r, _, e := unix.Syscall6(unix.SYS_MQ_OPEN, uintptr(unsafe.Pointer(p)), uintptr(flags), 0o600, uintptr(unsafe.Pointer(attr)), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return -1, e
		}
		return int(r), nil
	}
}

// mqUnlink is mq_unlink(3).
func mqUnlink(name string) error {
	p, err := sysName(name)
	if err != nil {
		return err
	}
	_, _, e := unix.Syscall(unix.SYS_MQ_UNLINK, uintptr(unsafe.Pointer(p)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// mqGetattr returns the attributes of the queue mqd.
func mqGetattr(mqd int) (mqAttr, error) {
	var a mqAttr
	_, _, e := unix.Syscall(unix.SYS_MQ_GETSETATTR, uintptr(mqd), 0, uintptr(unsafe.Pointer(&a)))
	if e != 0 {
		return a, os.NewSyscallError("mq_getsetattr", e)
	}
	return a, nil
}

var zeroByte byte

// mqSend is mq_timedsend(3): it blocks while the queue is full, forever if
// ts is nil.
func mqSend(mqd int, p []byte, prio uint, ts *unix.Timespec) error {
	ptr := unsafe.Pointer(&zeroByte)
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	for {
		_, _, e := unix.Syscall6(unix.SYS_MQ_TIMEDSEND, uintptr(mqd), uintptr(ptr), uintptr(len(p)), uintptr(prio), uintptr(unsafe.Pointer(ts)), 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}

// mqReceive is mq_timedreceive(3) into p, which must be at least the
// queue's mq_msgsize long. It stores the message's priority in *prio.
func mqReceive(mqd int, p []byte, prio *uint32, ts *unix.Timespec) (int, error) {
	for {
		r, _, e := unix.Syscall6(unix.SYS_MQ_TIMEDRECEIVE, uintptr(mqd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(unsafe.Pointer(prio)), uintptr(unsafe.Pointer(ts)), 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(r), nil
	}
}

// unblock frees the goroutine that receives from recvQ and sends to
// sendQ, once its side has been marked gone: it posts a wake message to
// recvQ, so a blocked receive returns, and takes every message out of
// sendQ, so a blocked send returns. Neither step blocks. A wake message
// found in sendQ belongs to the other side and is put back.
func unblock(recvQ, sendQ, msgsize int) {
	mqSend(recvQ, nil, prioWake, &zeroTime)
	buf := make([]byte, max(msgsize, 1))
	var prio uint32
	for {
		if _, err := mqReceive(sendQ, buf, &prio, &zeroTime); err != nil {
			return
		}
		if prio == prioWake {
			mqSend(sendQ, nil, prioWake, &zeroTime)
			return
		}
	}
}

// namePrefix starts the name of every queue this package creates.
const namePrefix = "/machq-bench-"

var seq atomic.Uint64

// baseName returns the name shared by the queues of the n-th pair this
// process creates.
func baseName(n uint64) string {
	return fmt.Sprintf("%s%d-%d", namePrefix, os.Getpid(), n)
}

func reqName(base string) string { return base + "-req" }
func rspName(base string) string { return base + "-rsp" }

// Listen creates a Unix stream socket listening at path and returns its
// descriptor (close-on-exec, blocking), to be handed to Serve as the
// control socket. An existing file at path is an error.
func Listen(path string) (int, error) { return rawsock.Listen(path) }

func readFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("read", err)
		}
		if n == 0 {
			return errControlClosed
		}
		b = b[n:]
	}
	return nil
}

// readString reads a length byte and that many bytes.
func readString(fd int) (string, error) {
	var n [1]byte
	if err := readFull(fd, n[:]); err != nil {
		return "", err
	}
	b := make([]byte, n[0])
	if err := readFull(fd, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// writeString writes a length byte and s, cut to 255 bytes.
func writeString(fd int, s string) error {
	if len(s) > 255 {
		s = s[:255]
	}
	return rawsock.WriteFull(fd, append([]byte{byte(len(s))}, s...))
}

// waitEnd blocks until anything happens on the control socket fd: end of
// file, an error, or unexpected bytes.
func waitEnd(fd int) {
	var b [1]byte
	for {
		if _, err := unix.Read(fd, b[:]); err != unix.EINTR {
			return
		}
	}
}
