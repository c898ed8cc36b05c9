package metrics_test

import (
	"testing"
	"time"

	"github.com/machq/machq/internal/metrics"
	"github.com/machq/machq/internal/wire"
)

// BenchmarkHandled is what a request costs the server with --metrics: two
// clock reads around it and an observation of its latency.
func BenchmarkHandled(b *testing.B) {
	m := metrics.New(metrics.Options{})
	for b.Loop() {
		start := time.Now()
		m.Handled(uint8(wire.OpStore), time.Since(start))
	}
}

// BenchmarkDelivered is what a delivery costs the server with --metrics.
func BenchmarkDelivered(b *testing.B) {
	m := metrics.New(metrics.Options{})
	for b.Loop() {
		m.Delivered(true, false)
	}
}
