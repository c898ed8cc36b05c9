package wire_test

import (
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/machq/machq/internal/wire"
)

// Fixtures shared by the benchmarks and by TestSteadyStateAllocs: a small
// inline STORE/MESSAGE as a client with the default SHA-256 digest sends it.
var (
	benchPayload = make([]byte, 64)
	benchDigest  = func() []byte { d := sha256.Sum256(benchPayload); return d[:] }()
	benchQueue   = []byte("jobs")
	benchStore   = wire.Store{Size: 64, DigestAlg: wire.DigestSHA256, Digest: benchDigest, Queue: benchQueue}
	benchMessage = wire.Message{Seq: 42, Size: 64, DigestAlg: wire.DigestSHA256, Digest: benchDigest}
	// benchStoreOOL is the fixed part of an out-of-line STORE of a 16 MiB
	// page: the frame is the header and body only.
	benchStoreOOL   = wire.Store{Size: 16 << 20, DigestAlg: wire.DigestSHA256, Digest: benchDigest, Queue: benchQueue}
	benchMessageOOL = wire.Message{Seq: 42, Size: 16 << 20, DigestAlg: wire.DigestSHA256, Digest: benchDigest}
)

// Sinks keep results alive so that nothing is optimised away.
var (
	sinkBytes  []byte
	sinkHeader wire.Header
	sinkStore  wire.Store
	sinkMsg    wire.Message
	sinkU64    uint64
)

// splitHeader returns the header and body of the single frame in b.
func splitHeader(tb testing.TB, b []byte) (wire.Header, []byte) {
	tb.Helper()
	h, err := wire.ParseHeader(b)
	if err != nil {
		tb.Fatalf("ParseHeader: %v", err)
	}
	if int(h.Length) != len(b) {
		tb.Fatalf("frame length %d, buffer %d", h.Length, len(b))
	}
	return h, b[wire.HeaderSize:]
}

func BenchmarkAppendStore(b *testing.B) {
	b.Run("inline64", func(b *testing.B) {
		buf := make([]byte, 0, 4096)
		b.ReportAllocs()
		b.SetBytes(int64(len(wire.AppendStore(nil, 1, benchStore, benchPayload, false))))
		for b.Loop() {
			buf = wire.AppendStore(buf[:0], 7, benchStore, benchPayload, false)
		}
		sinkBytes = buf
	})
	b.Run("outOfLine", func(b *testing.B) {
		buf := make([]byte, 0, 4096)
		b.ReportAllocs()
		b.SetBytes(int64(len(wire.AppendStore(nil, 1, benchStoreOOL, nil, true))))
		for b.Loop() {
			buf = wire.AppendStore(buf[:0], 7, benchStoreOOL, nil, true)
		}
		sinkBytes = buf
	})
}

func BenchmarkParseStore(b *testing.B) {
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"inline64", wire.AppendStore(nil, 7, benchStore, benchPayload, false)},
		{"outOfLine", wire.AppendStore(nil, 7, benchStoreOOL, nil, true)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h, body := splitHeader(b, tc.frame)
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.frame)))
			var s wire.Store
			var p []byte
			var err error
			for b.Loop() {
				s, p, err = wire.ParseStore(h, body)
			}
			if err != nil {
				b.Fatal(err)
			}
			sinkStore, sinkBytes = s, p
		})
	}
}

func BenchmarkAppendMessage(b *testing.B) {
	b.Run("inline64", func(b *testing.B) {
		buf := make([]byte, 0, 4096)
		b.ReportAllocs()
		b.SetBytes(int64(len(wire.AppendMessage(nil, 1, benchMessage, benchPayload, false))))
		for b.Loop() {
			buf = wire.AppendMessage(buf[:0], 7, benchMessage, benchPayload, false)
		}
		sinkBytes = buf
	})
	b.Run("outOfLine", func(b *testing.B) {
		buf := make([]byte, 0, 4096)
		b.ReportAllocs()
		b.SetBytes(int64(len(wire.AppendMessage(nil, 1, benchMessageOOL, nil, true))))
		for b.Loop() {
			buf = wire.AppendMessage(buf[:0], 7, benchMessageOOL, nil, true)
		}
		sinkBytes = buf
	})
}

func BenchmarkParseMessage(b *testing.B) {
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"inline64", wire.AppendMessage(nil, 7, benchMessage, benchPayload, false)},
		{"outOfLine", wire.AppendMessage(nil, 7, benchMessageOOL, nil, true)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h, body := splitHeader(b, tc.frame)
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.frame)))
			var m wire.Message
			var p []byte
			var err error
			for b.Loop() {
				m, p, err = wire.ParseMessage(h, body)
			}
			if err != nil {
				b.Fatal(err)
			}
			sinkMsg, sinkBytes = m, p
		})
	}
}

func BenchmarkParseHeader(b *testing.B) {
	frame := wire.AppendStore(nil, 7, benchStore, benchPayload, false)
	b.ReportAllocs()
	var h wire.Header
	var err error
	for b.Loop() {
		h, err = wire.ParseHeader(frame)
	}
	if err != nil {
		b.Fatal(err)
	}
	sinkHeader = h
}

func BenchmarkPutHeader(b *testing.B) {
	buf := make([]byte, wire.HeaderSize)
	h := wire.Header{Length: 128, Op: wire.OpStore, Flags: wire.FlagInline, ID: 7}
	b.ReportAllocs()
	for b.Loop() {
		wire.PutHeader(buf, h)
	}
	sinkBytes = buf
}

// loopSource is a wire.MsgReader that serves a stream of whole frames from
// memory, starting over at its end, and never carries descriptors. Each
// read returns at most max bytes (0: as many as fit in the caller's
// buffer), so that a read can end in the middle of a frame.
type loopSource struct {
	stream []byte
	pos    int
	max    int
}

func (s *loopSource) ReadMsgUnix(b, _ []byte) (n, oobn, flags int, addr *net.UnixAddr, err error) {
	if s.max > 0 && len(b) > s.max {
		b = b[:s.max]
	}
	for n < len(b) {
		c := copy(b[n:], s.stream[s.pos:])
		n += c
		s.pos += c
		if s.pos == len(s.stream) {
			s.pos = 0
		}
	}
	return n, 0, 0, nil, nil
}

// inlineStores returns count inline STORE frames of 64-byte payloads, one
// after the other, and the length of each frame.
func inlineStores(count int) ([]byte, int) {
	var stream []byte
	for i := range count {
		stream = wire.AppendStore(stream, uint64(i+1), benchStore, benchPayload, false)
	}
	return stream, len(stream) / count
}

func BenchmarkReaderReadFrame(b *testing.B) {
	stream, frameLen := inlineStores(64)
	for _, tc := range []struct {
		name string
		max  int // bytes per read; 0: fill the buffer
	}{
		// Request/response: every read returns exactly one frame.
		{"inline64/oneFramePerRead", frameLen},
		// A pipelining client: 64 frames arrive per read.
		{"inline64/burst64", len(stream)},
		// A deep pipeline: every read fills the buffer, whose end then
		// holds a partial frame the Reader moves to the front.
		{"inline64/fullBuffer", 0},
	} {
		b.Run(tc.name, func(b *testing.B) {
			rd := wire.NewReader(&loopSource{stream: stream, max: tc.max})
			b.ReportAllocs()
			b.SetBytes(int64(frameLen))
			var f wire.Frame
			var err error
			for b.Loop() {
				f, err = rd.ReadFrame()
				if err != nil {
					b.Fatal(err)
				}
			}
			sinkHeader = f.Header
		})
	}
}

func BenchmarkWriteFrames(b *testing.B) {
	one, _ := inlineStores(1)
	burst, _ := inlineStores(64)
	for _, tc := range []struct {
		name string
		buf  []byte
	}{
		{"inline64/1frame", one},
		{"inline64/64frames", burst},
	} {
		b.Run(tc.name, func(b *testing.B) {
			w, r := socketPair(b)
			done := drain(b, r)
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.buf)))
			for b.Loop() {
				if err := wire.WriteFrames(w, tc.buf, nil, nil); err != nil {
					b.Fatal(err)
				}
			}
			w.CloseWrite()
			<-done
		})
	}
	b.Run("memfd/1frame", func(b *testing.B) {
		// An out-of-line MESSAGE: one frame carrying one page. The drain
		// side decodes frames and closes the descriptors it receives; its
		// allocations per frame count in B/op and allocs/op too.
		fd := memfdWith(b, benchPayload)
		frame := wire.AppendMessage(nil, 7, benchMessage, nil, true)
		fds, fdAt := []int{fd}, []int{0}
		w, r := socketPair(b)
		done := make(chan error, 1)
		rd := wire.NewReader(r)
		go func() {
			defer rd.Close()
			for {
				f, err := rd.ReadFrame()
				if err != nil {
					if errors.Is(err, io.EOF) {
						err = nil
					}
					done <- err
					return
				}
				wire.CloseFDs(f.FDs)
			}
		}()
		b.ReportAllocs()
		b.SetBytes(int64(len(frame)))
		for b.Loop() {
			if err := wire.WriteFrames(w, frame, fds, fdAt); err != nil {
				b.Fatal(err)
			}
		}
		w.CloseWrite()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	})
}

// drain reads and discards everything c receives until the peer shuts
// down its write side; the returned channel is closed then.
func drain(tb testing.TB, c *net.UnixConn) <-chan struct{} {
	done := make(chan struct{})
	buf := make([]byte, 256<<10)
	go func() {
		defer close(done)
		for {
			if _, err := c.Read(buf); err != nil {
				if !errors.Is(err, io.EOF) {
					tb.Error(err)
				}
				return
			}
		}
	}()
	return done
}
