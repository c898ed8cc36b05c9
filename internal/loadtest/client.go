package loadtest

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"

	"github.com/machq/machq"
)

// ClientConfig is what one load client does.
type ClientConfig struct {
	Socket   string
	ID       int
	Messages int // stored, then retrieved, in all
	MaxSize  int // largest payload
	Seed     uint64
	// ShutdownOK makes the server stopping (the connection closed or
	// SHUTTING_DOWN) an expected end rather than a failure; anything it
	// received must still be whole and correct.
	ShutdownOK bool
}

// ClientReport is the last line a load client prints, as JSON.
type ClientReport struct {
	ID         int   `json:"id"`
	Stored     int   `json:"stored"`
	Retrieved  int   `json:"retrieved"`
	Bytes      int64 `json:"bytes"`
	Losses     int   `json:"losses"`
	Duplicates int   `json:"duplicates"`
	// Stopped says the server stopped before the client was done.
	Stopped bool `json:"stopped,omitempty"`
}

// namedQueue is the named queue a client uses besides its private one.
func namedQueue(id int) string { return "load-" + strconv.Itoa(id) }

// payloadSize draws a size: mostly small, some medium, a few up to max.
func payloadSize(r *rand.Rand, max int) int {
	p := r.IntN(1000)
	var n int
	switch {
	case p < 50:
		n = 0
	case p < 700:
		n = r.IntN(1 << 10)
	case p < 950:
		n = r.IntN(64 << 10)
	case p < 995:
		n = r.IntN(1 << 20)
	default:
		n = max
	}
	return min(n, max)
}

// fill writes the payload of message seq of client id into b: the first
// 16 bytes say whose and which it is, the rest is a pattern of both.
func fill(b []byte, id, seq int) {
	var hdr [16]byte
	binary.LittleEndian.PutUint64(hdr[:8], uint64(id))
	binary.LittleEndian.PutUint64(hdr[8:], uint64(seq))
	n := copy(b, hdr[:])
	x := byte(id*31 + seq*7)
	for i := n; i < len(b); i++ {
		b[i] = x + byte(i)
	}
}

// RunClient stores and retrieves cfg.Messages messages of mixed sizes,
// alternating between its private queue and its own named queue, a
// window of up to 8 at a time, and checks that each comes back exactly
// once, in order, with the content stored (the library checks the
// digest). It prints its report as one JSON line to out and returns an
// error if anything was lost, duplicated or changed.
func RunClient(ctx context.Context, cfg ClientConfig, out io.Writer) error {
	rep := ClientReport{ID: cfg.ID}
	c, err := machq.Dial(ctx, cfg.Socket)
	if err == nil {
		defer c.Close()
		err = exchange(ctx, c, cfg, &rep)
	}
	if err != nil && cfg.ShutdownOK && stopped(err) {
		rep.Stopped, err = true, nil
	}
	if err != nil {
		return err
	}
	if err := json.NewEncoder(out).Encode(rep); err != nil {
		return err
	}
	if rep.Losses > 0 || rep.Duplicates > 0 {
		return fmt.Errorf("client %d: %d lost, %d duplicated", cfg.ID, rep.Losses, rep.Duplicates)
	}
	return nil
}

// stopped reports an error that only says the server went away cleanly:
// not a protocol error, which would mean a half-written frame.
func stopped(err error) bool {
	return !errors.Is(err, machq.ErrProtocol) && !errors.Is(err, machq.ErrTampered) &&
		(errors.Is(err, machq.ErrClosed) || errors.Is(err, machq.ErrShuttingDown) || errors.Is(err, machq.ErrNoServer))
}

// exchange does the client's stores and retrieves, counting into rep.
func exchange(ctx context.Context, c *machq.Client, cfg ClientConfig, rep *ClientReport) error {
	r := rand.New(rand.NewPCG(cfg.Seed, uint64(cfg.ID)))
	queues := []string{"", namedQueue(cfg.ID)}
	next := map[string]int{}   // next sequence number to store, per queue
	expect := map[string]int{} // next sequence number to retrieve, per queue
	buf := make([]byte, cfg.MaxSize)
	want := make([]byte, cfg.MaxSize)
	sizes := map[string][]int{} // the size of each message stored, per queue
	for rep.Stored < cfg.Messages {
		q := queues[r.IntN(2)]
		k := min(1+r.IntN(8), cfg.Messages-rep.Stored)
		for range k {
			n := max(payloadSize(r, cfg.MaxSize), 16)
			fill(buf[:n], cfg.ID, next[q])
			if _, err := c.Send(ctx, q, buf[:n]); err != nil {
				return fmt.Errorf("client %d: store %d in %q: %w", cfg.ID, next[q], q, err)
			}
			sizes[q] = append(sizes[q], n)
			next[q]++
			rep.Stored++
			rep.Bytes += int64(n)
		}
		for range k {
			m, err := c.Retrieve(ctx, q)
			if err != nil {
				return fmt.Errorf("client %d: retrieve from %q: %w", cfg.ID, q, err)
			}
			b := m.Bytes()
			if len(b) < 16 || binary.LittleEndian.Uint64(b[:8]) != uint64(cfg.ID) {
				m.Close()
				return fmt.Errorf("client %d: retrieved someone else's message from %q", cfg.ID, q)
			}
			seq := int(binary.LittleEndian.Uint64(b[8:16]))
			switch {
			case seq > expect[q]:
				rep.Losses += seq - expect[q]
			case seq < expect[q]:
				rep.Duplicates++
			}
			if seq >= len(sizes[q]) {
				m.Close()
				return fmt.Errorf("client %d: retrieved message %d of %q, which it never stored", cfg.ID, seq, q)
			}
			n := sizes[q][seq]
			fill(want[:n], cfg.ID, seq)
			if len(b) != n || string(b) != string(want[:n]) {
				m.Close()
				return fmt.Errorf("client %d: message %d of %q changed", cfg.ID, seq, q)
			}
			m.Close()
			expect[q] = max(expect[q], seq+1)
			rep.Retrieved++
		}
	}
	return nil
}
