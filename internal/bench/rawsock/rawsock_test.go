package rawsock

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const waitLimit = 20 * time.Second

// openFds returns how many descriptors the process has open.
func openFds() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	return len(ents), err
}

func countFds(t *testing.T) int {
	t.Helper()
	n, err := openFds()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitFds polls until the process has want descriptors open, failing the
// test if it has not by the deadline.
func waitFds(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		n := countFds(t)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors open, want %d", n, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// echo writes back everything it reads from fd until end of file.
func echo(fd int) error {
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if err := WriteFull(fd, buf[:n]); err != nil {
			return err
		}
	}
}

func readFull(t *testing.T, fd int, b []byte) {
	t.Helper()
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if n == 0 {
			t.Fatal("read: unexpected end of file")
		}
		b = b[n:]
	}
}

func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("%s did not happen", what)
		panic("unreachable")
	}
}

func TestRoundTripAndCancel(t *testing.T) {
	base := countFds(t)
	path := filepath.Join(t.TempDir(), "s")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan int, 2)
	conns := make(chan error, 2)
	done := make(chan error, 1)
	serveConn := func(fd int) error {
		started <- fd
		return echo(fd)
	}
	go func() { done <- Serve(ctx, ln, serveConn, func(err error) { conns <- err }) }()

	var clients []int
	for range 2 {
		fd, err := Dial(path)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, fd)
		wait(t, started, "serving a connection")
	}
	for i, fd := range clients {
		msg := bytes.Repeat([]byte{byte('a' + i)}, 10000)
		if err := WriteFull(fd, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		readFull(t, fd, got)
		if !bytes.Equal(got, msg) {
			t.Fatalf("connection %d echoed different bytes", i)
		}
	}

	// Both connections are now blocked reading; cancelling must end them.
	cancel()
	if err := wait(t, done, "Serve returning"); err != nil {
		t.Errorf("Serve returned %v after cancel, want nil", err)
	}
	for range clients {
		if err := wait(t, conns, "connDone call"); err != nil {
			t.Errorf("connection ended with %v", err)
		}
	}
	for _, fd := range clients {
		var b [1]byte
		n, err := unix.Read(fd, b[:])
		if n != 0 || err != nil {
			t.Errorf("client read after cancel = %d, %v; want end of file", n, err)
		}
		unix.Close(fd)
	}
	waitFds(t, base)
	if _, err := Dial(path); err == nil {
		t.Error("Dial succeeded after Serve closed the listener")
	}
	waitFds(t, base)
}

// TestServeEnds checks that Serve returns, having closed ln, when its
// context is done before it starts and when accepting fails.
func TestServeEnds(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name   string
		listen bool
		ctx    context.Context
		want   error
	}{
		{"cancelled before start", true, cancelled, nil},
		// accept4 fails with EINVAL on a socket that is not listening.
		{"accept fails", false, context.Background(), unix.EINVAL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := countFds(t)
			var ln int
			var err error
			if tc.listen {
				ln, err = Listen(filepath.Join(t.TempDir(), "s"))
			} else {
				ln, err = unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			}
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				done <- Serve(tc.ctx, ln, func(int) error { t.Error("served a connection"); return nil }, nil)
			}()
			err = wait(t, done, "Serve returning")
			if !errors.Is(err, tc.want) {
				t.Errorf("Serve returned %v, want %v", err, tc.want)
			}
			waitFds(t, base)
		})
	}
}

func TestListenDialErrors(t *testing.T) {
	base := countFds(t)
	dir := t.TempDir()
	taken := filepath.Join(dir, "taken")
	if err := os.WriteFile(taken, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if fd, err := Listen(taken); err == nil {
		t.Errorf("Listen on an existing file returned %d", fd)
	}
	if fd, err := Dial(filepath.Join(dir, "absent")); err == nil {
		t.Errorf("Dial to a missing socket returned %d", fd)
	} else if !errors.Is(err, unix.ENOENT) {
		t.Errorf("Dial to a missing socket: %v, want ENOENT", err)
	}
	waitFds(t, base)
}
