package queue_test

import (
	"runtime"
	"testing"

	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/wire"
)

// sinkMsg keeps benchmark results alive.
var sinkMsg *queue.Message

func BenchmarkPushPop(b *testing.B) {
	q := queue.New("bench", &counter{})
	m := &queue.Message{FD: -1, Size: 64, Inline: make([]byte, 64)}
	b.ReportAllocs()
	for b.Loop() {
		q.Push(m, nil)
		m = q.Pop()
	}
	sinkMsg = m
}

func BenchmarkPushPopParallel(b *testing.B) {
	q := queue.New("bench", &counter{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		// Each goroutine pushes before it pops, so the queue is never
		// empty when it pops; what it pops may be another's message,
		// which it pushes next: every message has one owner at a time.
		m := &queue.Message{FD: -1, Size: 64, Inline: make([]byte, 64)}
		for pb.Next() {
			q.Push(m, nil)
			if m = q.Pop(); m == nil {
				b.Error("Pop after Push returned nil")
				return
			}
		}
	})
}

// BenchmarkWaitDeliver is a consumer blocked on an empty queue: register
// as a waiter, then a push hands the message straight to it.
func BenchmarkWaitDeliver(b *testing.B) {
	q := queue.New("bench", &counter{})
	m := &queue.Message{FD: -1, Size: 64, Inline: make([]byte, 64)}
	w := &slotWaiter{}
	b.ReportAllocs()
	for b.Loop() {
		if q.PopOrWait(w) != nil {
			b.Fatal("PopOrWait on an empty queue returned a message")
		}
		q.Push(m, nil)
		m, w.m = w.m, nil
	}
	sinkMsg = m
}

func BenchmarkRegistryGet(b *testing.B) {
	r := queue.NewRegistry(&counter{}, 0, 0)
	for _, n := range []string{"alpha", "beta", "jobs", "zeta"} {
		get(r, []byte(n))
	}
	name := []byte("jobs")
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if get(r, name) == nil {
				b.Fatal("Get returned nil")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			name := []byte("jobs")
			for pb.Next() {
				if get(r, name) == nil {
					b.Error("Get returned nil")
					return
				}
			}
		})
	})
}

// slotWaiter accepts one message at a time into m.
type slotWaiter struct{ m *queue.Message }

func (w *slotWaiter) Deliver(_ *queue.Queue, m *queue.Message) queue.Delivery {
	w.m = m
	return queue.Delivered
}

// BenchmarkStoreInline stores small inline messages the way the server
// does; ns/op and allocs/op are per stored message. It always leaves at
// least a million messages queued (those past b.N untimed) and reports the
// heap they hold: B/msg in all, bookkeeping-B/msg beyond the payload.
func BenchmarkStoreInline(b *testing.B) {
	for _, tc := range []struct {
		name string
		alg  uint8
	}{
		{"sha256", wire.DigestSHA256},
		{"nodigest", wire.DigestNone},
	} {
		b.Run(tc.name, func(b *testing.B) {
			st, inline := inlineStore(b, tc.alg)
			r := queue.NewRegistry(&counter{}, 0, 0)
			var acked uint64
			before := heapInUse()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				get(r, st.Queue).Push(admitInline(st, inline), func(seq uint64) { acked = seq })
			}
			b.StopTimer()
			n := max(b.N, storedMessages)
			for range n - b.N {
				get(r, st.Queue).Push(admitInline(st, inline), func(seq uint64) { acked = seq })
			}
			after := heapInUse()
			runtime.KeepAlive(r)
			_ = acked
			perMsg := float64(after-before) / float64(n)
			b.ReportMetric(perMsg, "B/msg")
			b.ReportMetric(perMsg-float64(len(inline)), "bookkeeping-B/msg")
		})
	}
}
