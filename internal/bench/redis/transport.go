package redis

import (
	"io"
	"net"
	"syscall"
	"time"
	"unsafe"
)

// transport is a connected Unix stream socket.
type transport interface {
	io.Reader
	// writeAll writes every byte of bufs, in order, with as few system
	// calls as it can. It may modify bufs.
	writeAll(bufs [][]byte) error
	Close() error
}

// rawConn is a blocking socket driven with plain system calls. A goroutine
// waiting for a reply sleeps in read(2) instead of parking in Go's network
// poller, which saves an epoll wake-up and a failed read on every reply.
type rawConn struct {
	fd  int
	iov []syscall.Iovec
}

// maxIOV is the most iovecs one writev(2) takes on Linux (IOV_MAX).
const maxIOV = 1024

func dialRaw(path string) (*rawConn, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "unix", Err: err}
	}
	for {
		err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		syscall.Close(fd)
		return nil, &net.OpError{Op: "dial", Net: "unix", Addr: &net.UnixAddr{Name: path, Net: "unix"}, Err: err}
	}
	return &rawConn{fd: fd}, nil
}

// Read reads from the socket, returning io.EOF when the server has closed it.
func (c *rawConn) Read(b []byte) (int, error) {
	for {
		n, err := syscall.Read(c.fd, b)
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			return 0, &net.OpError{Op: "read", Net: "unix", Err: err}
		case n == 0 && len(b) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

func (c *rawConn) writeAll(bufs [][]byte) error {
	if len(bufs) == 1 {
		return c.write(bufs[0])
	}
	for {
		iov := c.iov[:0]
		for _, b := range bufs {
			if len(iov) == maxIOV {
				break
			}
			if len(b) > 0 {
				v := syscall.Iovec{Base: &b[0]}
				v.SetLen(len(b))
				iov = append(iov, v)
			}
		}
		c.iov = iov
		if len(iov) == 0 {
			return nil
		}
		n, _, errno := syscall.Syscall(syscall.SYS_WRITEV, uintptr(c.fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		clear(iov) // drop the references to the caller's payload
		switch errno {
		case 0:
		case syscall.EINTR:
			continue
		default:
			return &net.OpError{Op: "write", Net: "unix", Err: errno}
		}
		bufs = consume(bufs, int(n))
	}
}

func (c *rawConn) write(b []byte) error {
	for len(b) > 0 {
		n, err := syscall.Write(c.fd, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return &net.OpError{Op: "write", Net: "unix", Err: err}
		}
		b = b[n:]
	}
	return nil
}

// Close closes the socket.
func (c *rawConn) Close() error {
	if c.fd < 0 {
		return nil
	}
	err := syscall.Close(c.fd)
	c.fd = -1
	return err
}

// consume drops the first n bytes of bufs.
func consume(bufs [][]byte, n int) [][]byte {
	for len(bufs) > 0 && n >= len(bufs[0]) {
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	if len(bufs) > 0 {
		bufs[0] = bufs[0][n:]
	}
	return bufs
}

// netConn is a socket driven through Go's network poller. The client uses
// it to probe a starting server, where it needs deadlines, and the
// transport benchmark compares it with rawConn.
type netConn struct {
	*net.UnixConn
}

func dialNet(path string, timeout time.Duration) (netConn, error) {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return netConn{}, err
	}
	return netConn{c.(*net.UnixConn)}, nil
}

func (c netConn) writeAll(bufs [][]byte) error {
	if len(bufs) == 1 {
		_, err := c.Write(bufs[0])
		return err
	}
	b := net.Buffers(bufs)
	_, err := b.WriteTo(c.UnixConn)
	return err
}
