package redis

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// payload returns n pseudo-random bytes.
func payload(n int, seed uint64) []byte {
	var key [32]byte
	key[0] = byte(seed)
	key[1] = byte(n)
	p := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(p)
	return p
}

// llen returns the length of c's list.
func llen(t *testing.T, c *Client) int64 {
	t.Helper()
	r, err := c.do("LLEN", c.key)
	if err != nil {
		t.Fatal(err)
	}
	if r.kind != kindInteger {
		t.Fatalf("LLEN: %q reply", r.kind)
	}
	return r.n
}

func TestRoundTripSizes(t *testing.T) {
	s := startServer(t)
	sizes := []int{0, 1, 64, 4 << 10, copyMax, copyMax + 1, 1 << 20, 64 << 20}
	for _, raw := range []bool{true, false} {
		c := dialTransport(t, s, raw)
		sizes := sizes
		if raw && !testing.Short() {
			sizes = append(sizes[:len(sizes):len(sizes)], 256<<20) // the largest payload the benchmark sends
		}
		for _, n := range sizes {
			t.Run(fmt.Sprintf("raw=%v/%d", raw, n), func(t *testing.T) {
				p := payload(n, 1)
				for i := range 2 { // the second round reuses the buffers
					calls := 0
					err := c.RoundTrip(p, func(b []byte) {
						calls++
						if !bytes.Equal(b, p) {
							t.Errorf("round %d: got %d bytes, not the %d stored", i, len(b), len(p))
						}
					})
					if err != nil {
						t.Fatal(err)
					}
					if calls != 1 {
						t.Fatalf("got called %d times", calls)
					}
				}
				if l := llen(t, c); l != 0 {
					t.Errorf("list holds %d items after the round trips", l)
				}
			})
		}
	}
}

// dialTransport opens a Client on s over the raw or the net transport.
func dialTransport(t testing.TB, s *Server, raw bool) *Client {
	t.Helper()
	if raw {
		return dial(t, s)
	}
	nc, err := dialNet(s.Path(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(nc)
	c.setKey(fmt.Sprintf("machq-bench-test:%d", keyCount.Add(1)))
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

func TestRoundTripFIFO(t *testing.T) {
	s := startServer(t)
	c := dial(t, s)
	for _, v := range []string{"first", "second", "third"} {
		if _, err := c.do("RPUSH", c.key, v); err != nil {
			t.Fatal(err)
		}
	}
	// Each round trip pushes one and pops the oldest.
	for i, want := range []string{"first", "second", "third", "a", "b"} {
		var got string
		if err := c.RoundTrip([]byte(string(rune('a'+i))), func(b []byte) { got = string(b) }); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("round trip %d: got %q, want %q", i, got, want)
		}
	}
	if l := llen(t, c); l != 3 {
		t.Errorf("list holds %d items, want 3", l)
	}
}

func TestPipeline(t *testing.T) {
	s := startServer(t)
	c := dial(t, s)
	type pipeCase struct{ depth, n int }
	cases := []pipeCase{
		{600, 64},
		{600, copyMax + 1}, // more iovecs than one writev takes
	}
	for _, depth := range []int{1, 8, 64} {
		for _, n := range []int{0, 64, 4 << 10, copyMax + 1, 1 << 20} {
			cases = append(cases, pipeCase{depth, n})
		}
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("depth=%d/%d", tc.depth, tc.n), func(t *testing.T) {
			p := payload(tc.n, uint64(tc.depth))
			calls := 0
			err := c.Pipeline(p, tc.depth, func(b []byte) {
				calls++
				if !bytes.Equal(b, p) {
					t.Errorf("payload %d: got %d bytes, not the %d stored", calls, len(b), len(p))
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if calls != tc.depth {
				t.Errorf("got called %d times, want %d", calls, tc.depth)
			}
			if l := llen(t, c); l != 0 {
				t.Errorf("list holds %d items", l)
			}
		})
	}
	if err := c.Pipeline([]byte("x"), 0, nil); err == nil {
		t.Error("Pipeline with depth 0 succeeded")
	}
}

func TestClientAfterServerExit(t *testing.T) {
	s := startServer(t)
	for _, n := range []int{64, 1 << 20} {
		c, err := Dial(s.Path())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.RoundTrip(payload(n, 0), nil); err != nil {
			t.Fatal(err)
		}
		defer func() {
			for i := range 3 {
				if err := c.RoundTrip(payload(n, 0), nil); err == nil {
					t.Errorf("RoundTrip %d of %d bytes after the server exited succeeded", i, n)
				}
			}
			if err := c.Pipeline(payload(n, 0), 4, nil); err == nil {
				t.Errorf("Pipeline of %d bytes after the server exited succeeded", n)
			}
		}()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestPipelineFIFO(t *testing.T) {
	s := startServer(t)
	c := dial(t, s)
	if _, err := c.do("RPUSH", c.key, "old1", "old2"); err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := c.Pipeline([]byte("new"), 3, func(b []byte) { got = append(got, string(b)) }); err != nil {
		t.Fatal(err)
	}
	if want := "old1 old2 new"; strings.Join(got, " ") != want {
		t.Errorf("popped %q, want %q", got, want)
	}
}

func TestLPOPEmpty(t *testing.T) {
	s := startServer(t)
	c := dial(t, s)
	if err := c.write(c.pop); err != nil {
		t.Fatal(err)
	}
	err := c.readPopped(func([]byte) { t.Error("got called for an empty list") })
	if !errors.Is(err, ErrEmpty) || !strings.Contains(err.Error(), "queue empty") {
		t.Fatalf("LPOP on an empty list: %v, want ErrEmpty", err)
	}
	// The connection is still in step.
	if err := c.RoundTrip([]byte("after"), nil); err != nil {
		t.Fatalf("RoundTrip after an empty LPOP: %v", err)
	}
}

func TestServerErrorReply(t *testing.T) {
	s := startServer(t)
	c := dial(t, s)
	if _, err := c.do("SET", c.key, "a string, not a list"); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"RoundTrip": func() error { return c.RoundTrip([]byte("x"), nil) },
		"Pipeline":  func() error { return c.Pipeline([]byte("x"), 4, nil) },
	} {
		err := call()
		var se *ServerError
		if !errors.As(err, &se) || !strings.HasPrefix(se.Msg, "WRONGTYPE") {
			t.Errorf("%s on a string key: %v, want a WRONGTYPE *ServerError", name, err)
		}
	}
	if _, err := c.do("NOSUCHCOMMAND"); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Errorf("unknown command: %v, want the server's message", err)
	}
	if _, err := c.do("DEL", c.key); err != nil {
		t.Fatal(err)
	}
	if err := c.RoundTrip([]byte("x"), nil); err != nil {
		t.Fatalf("RoundTrip after error replies: %v", err)
	}
}

func TestClientCloseDeletesKey(t *testing.T) {
	s := startServer(t)
	c1 := dial(t, s)
	c2, err := Dial(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if c1.key == c2.key {
		t.Fatalf("two clients share key %q", c1.key)
	}
	if _, err := c2.do("RPUSH", c2.key, "left behind"); err != nil {
		t.Fatal(err)
	}
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c2.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := c2.RoundTrip(nil, nil); err == nil {
		t.Error("RoundTrip on a closed Client succeeded")
	}
	r, err := c1.do("EXISTS", c2.key)
	if err != nil {
		t.Fatal(err)
	}
	if r.kind != kindInteger || r.n != 0 {
		t.Errorf("key %q still exists after Close", c2.key)
	}
}

// transport is what the list Client and the Stream have in common.
type roundTripper interface {
	RoundTrip(p []byte, got func([]byte)) error
	Pipeline(p []byte, depth int, got func([]byte)) error
}

// TestRoundTripAllocations: both clients' round trips and pipelines
// allocate nothing once their buffers have grown.
func TestRoundTripAllocations(t *testing.T) {
	s := startServer(t)
	for name, c := range map[string]roundTripper{"list": dial(t, s), "stream": dialStream(t, s)} {
		for _, n := range []int{64, 1 << 20} {
			p := payload(n, 3)
			got := func([]byte) {}
			if err := c.RoundTrip(p, got); err != nil { // warm up the buffers
				t.Fatal(err)
			}
			if err := c.Pipeline(p, 8, got); err != nil {
				t.Fatal(err)
			}
			var err error
			if a := testing.AllocsPerRun(20, func() { err = c.RoundTrip(p, got) }); a > 0 {
				t.Errorf("%s: RoundTrip of %d bytes: %v allocations", name, n, a)
			}
			if a := testing.AllocsPerRun(20, func() { err = c.Pipeline(p, 8, got) }); a > 0 {
				t.Errorf("%s: Pipeline of %d bytes: %v allocations", name, n, a)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
}

func BenchmarkTransport(b *testing.B) {
	s := startServer(b)
	for _, raw := range []bool{true, false} {
		name := "net"
		if raw {
			name = "raw"
		}
		b.Run(name, func(b *testing.B) {
			c := dialTransport(b, s, raw)
			p := payload(64, 0)
			for b.Loop() {
				if err := c.RoundTrip(p, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRoundTrip(b *testing.B) {
	s := startServer(b)
	c := dial(b, s)
	for _, n := range []int{64, 4 << 10, 64 << 10, 1 << 20, 16 << 20} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			p := payload(n, 0)
			b.SetBytes(int64(n))
			for b.Loop() {
				if err := c.RoundTrip(p, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPipeline(b *testing.B) {
	s := startServer(b)
	c := dial(b, s)
	const depth = 64
	for _, n := range []int{64, 4 << 10, 64 << 10} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			p := payload(n, 0)
			b.SetBytes(int64(n) * depth)
			for b.Loop() {
				if err := c.Pipeline(p, depth, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
