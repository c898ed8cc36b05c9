// Package rawsock is blocking Unix stream sockets on raw descriptors, for
// the benchmark's peers.
package rawsock

import (
	"context"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Listen creates a Unix stream socket listening at path and returns its
// descriptor (close-on-exec, blocking), to be handed to Serve. An
// existing file at path is an error.
func Listen(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("rawsock: bind %s: %w", path, err)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("listen", err)
	}
	return fd, nil
}

// Dial connects a blocking, close-on-exec Unix stream socket to path and
// returns its descriptor.
func Dial(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	for {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		if err == unix.EINTR {
			continue
		}
		if err == unix.EISCONN {
			err = nil
		}
		break
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("rawsock: connect %s: %w", path, err)
	}
	return fd, nil
}

// Serve accepts connections on ln, a listening socket such as Listen
// returns, and runs serveConn on each in its own goroutine. Serve owns ln
// and every accepted descriptor: it closes each connection once its
// serveConn returns, and ln before returning; serveConn must not close
// its descriptor. If connDone is not nil, it is called with serveConn's
// result after the connection is closed.
//
// When ctx is done, Serve stops accepting, shuts every live connection
// down (SHUT_RDWR) so that blocked reads and writes return, waits for
// every serveConn to return and every connDone call to finish, and
// returns nil. It returns an error if accepting fails for another reason,
// after the same shutdown and wait.
func Serve(ctx context.Context, ln int, serveConn func(fd int) error, connDone func(error)) error {
	var (
		mu      sync.Mutex
		conns   = map[int]struct{}{}
		closing bool
		wg      sync.WaitGroup
	)
	shutdownAll := func() {
		mu.Lock()
		defer mu.Unlock()
		if closing {
			return
		}
		closing = true
		unix.Shutdown(ln, unix.SHUT_RDWR)
		for fd := range conns {
			unix.Shutdown(fd, unix.SHUT_RDWR)
		}
	}
	stop := context.AfterFunc(ctx, shutdownAll)
	defer stop()

	var err error
	for {
		fd, _, aerr := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if aerr == unix.EINTR || aerr == unix.ECONNABORTED {
			continue
		}
		if aerr != nil {
			if ctx.Err() == nil {
				err = os.NewSyscallError("accept4", aerr)
			}
			break
		}
		mu.Lock()
		if closing {
			mu.Unlock()
			unix.Close(fd)
			break
		}
		conns[fd] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			cerr := serveConn(fd)
			mu.Lock()
			delete(conns, fd)
			unix.Close(fd)
			mu.Unlock()
			if connDone != nil {
				connDone(cerr)
			}
		}()
	}
	shutdownAll()
	wg.Wait()
	unix.Close(ln)
	return err
}

// WriteFull writes all of b to fd, retrying after EINTR and short writes.
func WriteFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("write", err)
		}
		b = b[n:]
	}
	return nil
}
