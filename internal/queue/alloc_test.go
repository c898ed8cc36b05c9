package queue_test

import (
	"crypto/sha256"
	"runtime"
	"testing"
	"unsafe"

	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/wire"
)

// TestPushPopAllocs checks that moving a message through a warmed-up queue
// allocates nothing but the caller's own Message.
func TestPushPopAllocs(t *testing.T) {
	q := queue.New("q", &counter{})
	m := &queue.Message{FD: -1, Size: 64, Inline: make([]byte, 64)}
	for range 16 { // warm up: the ring exists
		q.Push(m, nil)
		q.Pop()
	}
	var acked uint64
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"Push+Pop", func() { q.Push(m, nil); m = q.Pop() }},
		// As the server pushes: with a callback that acknowledges.
		{"Push(stored)+Pop", func() { q.Push(m, func(seq uint64) { acked = seq }); m = q.Pop() }},
		{"PopOrWait", func() { q.Push(m, nil); m = q.PopOrWait(nil) }},
	} {
		if got := testing.AllocsPerRun(1000, tc.f); got != 0 {
			t.Errorf("%s: %v allocations per message, want 0", tc.name, got)
		}
		if m == nil {
			t.Fatalf("%s lost the message", tc.name)
		}
	}
	if acked == 0 {
		t.Error("stored callback never ran")
	}

	// A consumer waiting on the empty queue gets the message handed over.
	w := &slotWaiter{}
	wait := func() {
		if q.PopOrWait(w) != nil {
			t.Fatal("PopOrWait on an empty queue returned a message")
		}
		q.Push(m, nil)
		m, w.m = w.m, nil
	}
	wait() // warm up: the waiter list exists
	if got := testing.AllocsPerRun(1000, wait); got != 0 {
		t.Errorf("PopOrWait+Push to a waiter: %v allocations per message, want 0", got)
	}
	if m == nil {
		t.Fatal("waiter lost the message")
	}

	r := queue.NewRegistry(nil, 0, 0)
	get(r, []byte("jobs"))
	name := []byte("jobs")
	if got := testing.AllocsPerRun(1000, func() { get(r, name) }); got != 0 {
		t.Errorf("Registry.Acquire and Release of an existing queue: %v allocations, want 0", got)
	}
}

// storedMessages is how many messages the bookkeeping measurement holds.
const storedMessages = 1_000_000

// maxBookkeeping is the project's budget of heap bytes per stored small
// inline message, beyond its payload.
const maxBookkeeping = 256

// inlineStore is a 64-byte inline STORE to the named queue "jobs", parsed
// from its frame as the server parses it: st and payload alias the frame.
func inlineStore(tb testing.TB, alg uint8) (wire.Store, []byte) {
	tb.Helper()
	payload := make([]byte, 64)
	st := wire.Store{Size: 64, DigestAlg: alg, Queue: []byte("jobs")}
	if alg == wire.DigestSHA256 {
		d := sha256.Sum256(payload)
		st.Digest = d[:]
	}
	frame := wire.AppendStore(nil, 1, st, payload, false)
	h, err := wire.ParseHeader(frame)
	if err != nil {
		tb.Fatal(err)
	}
	st, inline, err := wire.ParseStore(h, frame[wire.HeaderSize:])
	if err != nil {
		tb.Fatal(err)
	}
	return st, inline
}

// admitInline turns a parsed inline STORE into a queue.Message exactly as
// the server does (server/conn.go, admit): the digest becomes a string and
// the payload is copied out of the read buffer.
func admitInline(st wire.Store, inline []byte) *queue.Message {
	m := &queue.Message{Size: int64(st.Size), FD: -1, DigestAlg: st.DigestAlg, Digest: string(st.Digest)}
	m.Inline = append([]byte(nil), inline...)
	return m
}

// heapInUse returns the bytes of live heap objects after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// storeMany stores n inline messages the way the server handles STORE
// requests (look the queue up by name, admit, push with an
// acknowledgement) and returns the heap bytes per message they hold.
func storeMany(st wire.Store, inline []byte, r *queue.Registry, n int) float64 {
	before := heapInUse()
	var acked uint64
	for range n {
		get(r, st.Queue).Push(admitInline(st, inline), func(seq uint64) { acked = seq })
	}
	after := heapInUse()
	runtime.KeepAlive(r)
	_ = acked
	return float64(after-before) / float64(n)
}

// TestQueuedMessageBookkeeping checks the heap cost of a stored small
// inline message against the project's budget, and logs its breakdown.
func TestQueuedMessageBookkeeping(t *testing.T) {
	if testing.Short() {
		t.Skip("stores a million messages")
	}
	for _, tc := range []struct {
		name string
		alg  uint8
	}{
		{"sha256", wire.DigestSHA256},
		{"nodigest", wire.DigestNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, inline := inlineStore(t, tc.alg)
			r := queue.NewRegistry(&counter{}, 0, 0)
			perMsg := storeMany(st, inline, r, storedMessages)
			if n, _ := get(r, st.Queue).Len(); n != storedMessages {
				t.Fatalf("queue holds %d messages, want %d", n, storedMessages)
			}
			book := perMsg - float64(len(inline))
			t.Logf("%d messages: %.1f heap bytes per message, %.1f beyond the %d-byte payload (queue.Message struct %d bytes before size-class rounding, digest %d bytes)",
				storedMessages, perMsg, book, len(inline), unsafe.Sizeof(queue.Message{}), len(st.Digest))
			if book > maxBookkeeping {
				t.Errorf("%.1f bytes of bookkeeping per stored message, budget %d", book, maxBookkeeping)
			}
		})
	}
}
