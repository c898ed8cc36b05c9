package machq_test

import (
	"io"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// socketPair returns both ends of a Unix socket pair of type typ as
// net.Conns driven by Go's netpoller, as machq's are.
func socketPair(b *testing.B, typ int) (net.Conn, net.Conn) {
	b.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	x, y := conn(fds[0]), conn(fds[1])
	b.Cleanup(func() { x.Close(); y.Close() })
	return x, y
}

// BenchmarkTransport compares the two connection-oriented Unix socket
// types for what machq does most: many small frames, pipelined. A
// SOCK_SEQPACKET socket needs one system call per frame on each side; a
// SOCK_STREAM socket carries a batch of length-prefixed frames in one.
// This is the measurement behind machq's choice of SOCK_STREAM
// (docs/ARCHITECTURE.md).
func BenchmarkTransport(b *testing.B) {
	const frame, depth = 64, 32
	b.Run("seqpacket", func(b *testing.B) {
		x, y := socketPair(b, unix.SOCK_SEQPACKET)
		go func() { // echo server: one packet in, one packet out
			buf := make([]byte, frame)
			for {
				n, err := y.Read(buf)
				if err != nil {
					return
				}
				if _, err := y.Write(buf[:n]); err != nil {
					return
				}
			}
		}()
		msg := make([]byte, frame)
		buf := make([]byte, frame)
		b.SetBytes(frame)
		for i := 0; b.Loop(); i++ {
			// Keep depth requests in flight, like a pipelining client.
			if _, err := x.Write(msg); err != nil {
				b.Fatal(err)
			}
			if i%depth == depth-1 {
				for range depth {
					if _, err := x.Read(buf); err != nil {
						b.Fatal(err)
					}
				}
			}
		}
	})
	b.Run("stream", func(b *testing.B) {
		x, y := socketPair(b, unix.SOCK_STREAM)
		go func() { // echo server: whatever arrived goes back in one write
			buf := make([]byte, 64<<10)
			for {
				n, err := y.Read(buf)
				if err != nil {
					return
				}
				if _, err := y.Write(buf[:n]); err != nil {
					return
				}
			}
		}()
		batch := make([]byte, frame*depth)
		buf := make([]byte, frame*depth)
		b.SetBytes(frame)
		for i := 0; b.Loop(); i++ {
			if i%depth == depth-1 {
				if _, err := x.Write(batch); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(x, buf); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
