package floor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/machq/machq/internal/bench/peertest"
)

const waitLimit = peertest.WaitLimit

func startServer(t testing.TB, mech Mechanism) *peertest.Server {
	t.Helper()
	return peertest.Start(t, "floor.sock", func(ctx context.Context, ln int, connDone func(error)) error {
		return serve(ctx, ln, mech, connDone)
	})
}

func dial(t *testing.T, s *peertest.Server, mech Mechanism) *Client {
	t.Helper()
	c, err := Dial(s.Path, mech)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var mechs = []Mechanism{Copy, Memfd}

func TestMechanismString(t *testing.T) {
	if Copy.String() != "copy" || Memfd.String() != "memfd" {
		t.Errorf("String: %q, %q", Copy, Memfd)
	}
	if _, err := Dial("unused", Mechanism(7)); err == nil {
		t.Error("Dial accepted an unknown mechanism")
	}
}

func TestRoundTrip(t *testing.T) {
	sizes := []int{0, 1, 64, 4 << 10, 4<<10 + 1, readBufSize - hdrLen, readBufSize, readBufSize + 1, 1 << 20, 64 << 20}
	for _, mech := range mechs {
		t.Run(mech.String(), func(t *testing.T) {
			s := startServer(t, mech)
			c := dial(t, s, mech)
			defer c.Close()
			for _, size := range sizes {
				for i := range 3 {
					want := peertest.Payload(size, uint64(i))
					calls := 0
					if err := c.RoundTrip(want, peertest.Expect(t, want, &calls)); err != nil {
						t.Fatalf("%d bytes: %v", size, err)
					}
					if calls != 1 {
						t.Fatalf("%d bytes: got called %d times", size, calls)
					}
				}
			}
		})
	}
}

func TestRoundTrip256MiB(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("256 MiB round trips take seconds in -short mode and under the race detector")
	}
	want := peertest.Payload(256<<20, 1)
	for _, mech := range mechs {
		t.Run(mech.String(), func(t *testing.T) {
			s := startServer(t, mech)
			c := dial(t, s, mech)
			defer c.Close()
			calls := 0
			if err := c.RoundTrip(want, peertest.Expect(t, want, &calls)); err != nil {
				t.Fatal(err)
			}
			if calls != 1 {
				t.Fatalf("got called %d times", calls)
			}
		})
	}
}

func TestFIFOOrder(t *testing.T) {
	sizes := []int{5, 0, 1 << 20, 64, readBufSize + 3, 1}
	for _, mech := range mechs {
		t.Run(mech.String(), func(t *testing.T) {
			s := startServer(t, mech)
			c := dial(t, s, mech)
			defer c.Close()
			var stored [][]byte
			for i, size := range sizes {
				p := peertest.Payload(size, uint64(100+i))
				if err := c.sendStores(p, 1); err != nil {
					t.Fatal(err)
				}
				if err := c.readAcks(1); err != nil {
					t.Fatal(err)
				}
				stored = append(stored, p)
			}
			// The first half one by one, the rest in one batch.
			half := len(stored) / 2
			var got [][]byte
			collect := func(b []byte) { got = append(got, bytes.Clone(b)) }
			for range half {
				if err := c.sendRetrieves(1); err != nil {
					t.Fatal(err)
				}
				if err := c.readData(1, collect); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.sendRetrieves(len(stored) - half); err != nil {
				t.Fatal(err)
			}
			if err := c.readData(len(stored)-half, collect); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(stored) {
				t.Fatalf("retrieved %d payloads, stored %d", len(got), len(stored))
			}
			for i := range stored {
				if !bytes.Equal(got[i], stored[i]) {
					t.Errorf("retrieve %d: got %d bytes, want the %d stored %d-th", i, len(got[i]), len(stored[i]), i)
				}
			}
			// The FIFO is now empty.
			if err := c.sendRetrieves(1); err != nil {
				t.Fatal(err)
			}
			if err := c.readData(1, collect); err == nil {
				t.Error("retrieve from an empty FIFO succeeded")
			}
		})
	}
}

func TestPipeline(t *testing.T) {
	for _, mech := range mechs {
		t.Run(mech.String(), func(t *testing.T) {
			s := startServer(t, mech)
			c := dial(t, s, mech)
			defer c.Close()
			for _, size := range []int{0, 1, 64, 4 << 10, 1 << 20} {
				for _, depth := range []int{1, 8, PipelineWindow + 5} {
					if size == 1<<20 && depth > 8 {
						continue
					}
					want := peertest.Payload(size, uint64(depth))
					calls := 0
					if err := c.Pipeline(want, depth, peertest.Expect(t, want, &calls)); err != nil {
						t.Fatalf("%d bytes, depth %d: %v", size, depth, err)
					}
					if calls != depth {
						t.Fatalf("%d bytes, depth %d: got called %d times", size, depth, calls)
					}
				}
			}
			// Nothing is left behind.
			if err := c.sendRetrieves(1); err != nil {
				t.Fatal(err)
			}
			if err := c.readData(1, func([]byte) {}); err == nil {
				t.Error("FIFO not empty after pipelines")
			}
		})
	}
}

func TestPageRoundTrip(t *testing.T) {
	s := startServer(t, Memfd)
	c := dial(t, s, Memfd)
	defer c.Close()
	for _, size := range []int{0, 1, 4 << 10, 1 << 20, 8<<20 + 5} {
		want := peertest.Payload(size, 7)
		filled, calls := 0, 0
		ph, err := c.PageRoundTrip(size, func(b []byte) {
			filled++
			if len(b) != size {
				t.Errorf("fill got %d bytes, want %d", len(b), size)
			}
			copy(b, want)
		}, peertest.Expect(t, want, &calls))
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		if filled != 1 || calls != 1 {
			t.Fatalf("%d bytes: fill called %d times, got %d times", size, filled, calls)
		}
		for i, d := range []time.Duration{ph.Create, ph.Fill, ph.Seal, ph.Send, ph.Store, ph.Retrieve, ph.Map, ph.Read} {
			if d < 0 {
				t.Errorf("%d bytes: phase %d is negative: %v", size, i, d)
			}
		}
		if ph.Total() <= 0 || ph.Store <= 0 || ph.Retrieve <= 0 {
			t.Errorf("%d bytes: implausible phases %+v", size, ph)
		}
	}
	// Interleaved with ordinary round trips on the same connection.
	want := peertest.Payload(100, 9)
	calls := 0
	if err := c.RoundTrip(want, peertest.Expect(t, want, &calls)); err != nil || calls != 1 {
		t.Fatalf("RoundTrip after PageRoundTrip: %v, %d calls", err, calls)
	}

	cc := dial(t, startServer(t, Copy), Copy)
	defer cc.Close()
	if _, err := cc.PageRoundTrip(10, func([]byte) {}, func([]byte) {}); err == nil {
		t.Error("PageRoundTrip on a Copy client succeeded")
	}
}

// TestFdsReturnToBaseline checks that neither the client nor the peer
// keeps a descriptor after a connection ends, including memfds still
// stored in the peer's FIFO, and that Serve closes its listener.
func TestFdsReturnToBaseline(t *testing.T) {
	for _, mech := range mechs {
		t.Run(mech.String(), func(t *testing.T) {
			before := peertest.CountFDs(t)
			s := startServer(t, mech)
			base := peertest.CountFDs(t)
			if base != before+1 {
				t.Fatalf("listening took %d descriptors, want 1", base-before)
			}
			for round := range 2 {
				c := dial(t, s, mech)
				p := peertest.Payload(1<<20, 3)
				calls := 0
				if err := c.RoundTrip(p, peertest.Expect(t, p, &calls)); err != nil {
					t.Fatal(err)
				}
				if err := c.Pipeline(p, 8, peertest.Expect(t, p, &calls)); err != nil {
					t.Fatal(err)
				}
				if mech == Memfd {
					if _, err := c.PageRoundTrip(4096, func([]byte) {}, func([]byte) {}); err != nil {
						t.Fatal(err)
					}
				}
				// Leave payloads stored in the peer.
				for range 4 {
					if err := c.sendStores(p, 1); err != nil {
						t.Fatal(err)
					}
					if err := c.readAcks(1); err != nil {
						t.Fatal(err)
					}
				}
				if n := peertest.CountFDs(t); mech == Memfd && n < base+1+4 {
					t.Fatalf("round %d: %d descriptors with 4 memfds stored, want at least %d", round, n, base+5)
				}
				s.CloseClient(t, c, base, round)
			}
			s.Stop(t)
			if n := peertest.CountFDs(t); n != before {
				t.Errorf("%d descriptors after Serve returned, want %d", n, before)
			}
		})
	}
}

// TestServeStopsOnCancel checks that cancelling Serve ends open
// connections, frees what they stored and closes the listener.
func TestServeStopsOnCancel(t *testing.T) {
	for _, mech := range mechs {
		t.Run(mech.String(), func(t *testing.T) {
			before := peertest.CountFDs(t)
			s := startServer(t, mech)
			c := dial(t, s, mech)
			defer c.Close()
			p := peertest.Payload(64<<10, 4)
			if err := c.sendStores(p, 3); err != nil {
				t.Fatal(err)
			}
			if err := c.readAcks(3); err != nil {
				t.Fatal(err)
			}
			s.Stop(t)
			if err := s.ConnEnded(t); err != nil {
				t.Errorf("connection ended with %v", err)
			}
			if err := c.RoundTrip(p, func([]byte) {}); err == nil {
				t.Error("RoundTrip succeeded after the peer stopped")
			}
			c.Close()
			if n := peertest.CountFDs(t); n != before {
				t.Errorf("%d descriptors after everything closed, want %d", n, before)
			}
			if _, err := Dial(s.Path, mech); err == nil {
				t.Error("Dial succeeded after Serve returned")
			}
		})
	}
}

// TestServeCancelledBeforeStart checks that Serve with a done context
// returns at once.
func TestServeCancelledBeforeStart(t *testing.T) {
	ln, err := Listen(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, Copy) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Serve did not return")
	}
}

func TestMechanismMismatch(t *testing.T) {
	for _, mech := range mechs {
		other := Copy
		if mech == Copy {
			other = Memfd
		}
		t.Run(fmt.Sprintf("%s client, %s peer", other, mech), func(t *testing.T) {
			s := startServer(t, mech)
			c := dial(t, s, other)
			defer c.Close()
			if err := c.RoundTrip([]byte("hello"), func([]byte) {}); err == nil {
				t.Error("RoundTrip to a peer of the other mechanism succeeded")
			}
			if err := s.ConnEnded(t); !errors.Is(err, errProtocol) {
				t.Errorf("peer ended the connection with %v, want a protocol error", err)
			}
		})
	}
}

func TestListenExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "taken")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if fd, err := Listen(path); err == nil {
		t.Errorf("Listen on an existing file returned %d", fd)
	}
}

func BenchmarkRoundTrip(b *testing.B) {
	for _, mech := range mechs {
		for _, size := range []int{64, 4 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("%s/%d", mech, size), func(b *testing.B) {
				s := startServer(b, mech)
				c, err := Dial(s.Path, mech)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				p := peertest.Payload(size, 1)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					if err := c.RoundTrip(p, func([]byte) {}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
