package machq_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/machq/machq"
)

// benchServer runs a server in-process for benchmarks.
func benchServer(b *testing.B) string { return inProcessServer(b) }

// BenchmarkRoundTrip measures one store and one retrieve of a payload,
// from a []byte in the sender to bytes readable by the receiver, inline
// and out of line at each size: the measurement behind
// DefaultInlineThreshold.
func BenchmarkRoundTrip(b *testing.B) {
	path := benchServer(b)
	ctx := context.Background()
	for _, size := range []int{64, 4 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20} {
		for _, mode := range []struct {
			name   string
			inline int
		}{{"inline", 1 << 20}, {"memfd", 0}} {
			b.Run(fmt.Sprintf("%s/%d", mode.name, size), func(b *testing.B) {
				c, err := machq.Dial(ctx, path, machq.WithInlineThreshold(mode.inline), machq.WithDigest(machq.DigestNone))
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				data := make([]byte, size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := c.Send(ctx, "bench", data); err != nil {
						b.Fatal(err)
					}
					m, err := c.Retrieve(ctx, "bench")
					if err != nil {
						b.Fatal(err)
					}
					_ = m.Bytes()
					m.Close()
				}
			})
		}
	}
}

// BenchmarkBatch measures pipelined small messages: a SendBatch of 16
// 64-byte payloads and a RetrieveBatch of 16, per operation.
func BenchmarkBatch(b *testing.B) {
	path := benchServer(b)
	ctx := context.Background()
	c, err := machq.Dial(ctx, path, machq.WithDigest(machq.DigestNone))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	batch := make([][]byte, 16)
	for i := range batch {
		batch[i] = make([]byte, 64)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := c.SendBatch(ctx, "", batch); err != nil {
			b.Fatal(err)
		}
		msgs, err := c.RetrieveBatch(ctx, "", len(batch))
		if err != nil || len(msgs) != len(batch) {
			b.Fatalf("%d messages, %v", len(msgs), err)
		}
		for _, m := range msgs {
			m.Close()
		}
	}
}
