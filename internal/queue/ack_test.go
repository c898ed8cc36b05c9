package queue_test

import (
	"testing"
	"time"

	"github.com/machq/machq/internal/queue"
)

// ackWaiter takes what it is given in ack mode.
type ackWaiter struct{ got []*queue.Message }

func (w *ackWaiter) Deliver(q *queue.Queue, m *queue.Message) queue.Delivery {
	q.HoldLocked(m)
	w.got = append(w.got, m)
	return queue.Delivered
}

// seqs returns the sequence numbers in q, oldest first, emptying it.
func seqs(q *queue.Queue) []uint64 {
	var out []uint64
	for m := q.Pop(); m != nil; m = q.Pop() {
		out = append(out, m.Seq)
	}
	return out
}

func equalSeqs(t *testing.T, got []uint64, want ...uint64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("sequence %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("sequence %v, want %v", got, want)
		}
	}
}

func TestReturnKeepsTheOriginalPlace(t *testing.T) {
	c := &counter{}
	q := queue.New("jobs", c)
	for i := range 5 {
		q.Push(inline("m", 10+i), nil)
	}
	// Take 1, 2 and 3 in ack mode; return 3 first, then 1: each goes
	// back to its place among 4 and 5.
	var held []*queue.Message
	for range 3 {
		m := q.Pop()
		q.Hold(m)
		held = append(held, m)
	}
	if p, d := q.Out(); p != 3 || d != 0 {
		t.Fatalf("out %d pending %d delayed, want 3, 0", p, d)
	}
	if n, _ := q.Len(); n != 2 {
		t.Fatalf("%d in line, want 2", n)
	}
	if c.out != 3 || c.outBytes != 10+11+12 {
		t.Fatalf("counter out %d messages %d bytes", c.out, c.outBytes)
	}
	q.Return(held[2], false)
	q.Return(held[0], true)
	q.Settle(held[1])
	held[1].Release()
	if p, _ := q.Out(); p != 0 || c.out != 0 || c.outBytes != 0 {
		t.Fatalf("pending %d, counter out %d (%d bytes) after settling all", p, c.out, c.outBytes)
	}
	counts := q.Counts()
	if counts.Acked != 1 || counts.Nacked != 1 || counts.Delivered != 3 || counts.Redelivered != 0 {
		t.Fatalf("counts %+v", counts)
	}
	equalSeqs(t, seqs(q), 1, 3, 4, 5)
}

func TestReturnHandsToAWaiterAndCountsRedelivery(t *testing.T) {
	q := queue.New("jobs", &counter{})
	q.Push(inline("m", 1), nil)
	m := q.Pop()
	q.Hold(m)
	w := &ackWaiter{}
	if got := q.PopOrWait(w); got != nil {
		t.Fatalf("queue not empty")
	}
	q.Return(m, false) // the consumer left: straight to the waiter
	if len(w.got) != 1 || w.got[0] != m {
		t.Fatalf("waiter got %v", w.got)
	}
	if m.Deliveries != 2 {
		t.Fatalf("deliveries %d, want 2", m.Deliveries)
	}
	if c := q.Counts(); c.Redelivered != 1 || c.Delivered != 2 {
		t.Fatalf("counts %+v", c)
	}
	if p, _ := q.Out(); p != 1 {
		t.Fatalf("pending %d, want 1", p)
	}
}

func TestDelayBringsBackAtThePlace(t *testing.T) {
	q := queue.New("jobs", &counter{})
	q.Push(inline("a", 1), nil)
	q.Push(inline("b", 1), nil)
	m := q.Pop()
	q.Hold(m)
	q.Delay(m, 20*time.Millisecond, true)
	if p, d := q.Out(); p != 0 || d != 1 {
		t.Fatalf("pending %d delayed %d, want 0, 1", p, d)
	}
	// While it is away, the queue holds it for its limits.
	if _, ok := q.PushWithin(inline("c", 1), 2, 1<<20, nil); ok {
		t.Fatalf("a queue of 2 messages (1 in line, 1 delayed) took a third under a limit of 2")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, d := q.Out(); d == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the delayed message never came back")
		}
		time.Sleep(time.Millisecond)
	}
	equalSeqs(t, seqs(q), 1, 2)
}

func TestDrainFreesDelayed(t *testing.T) {
	c := &counter{}
	q := queue.New("jobs", c)
	q.Push(inline("a", 7), nil)
	m := q.Pop()
	q.Hold(m)
	q.Delay(m, time.Hour, true)
	if n, b := q.Drain(); n != 1 || b != 7 {
		t.Fatalf("drained %d messages, %d bytes; want 1, 7", n, b)
	}
	if p, d := q.Out(); p != 0 || d != 0 || c.out != 0 {
		t.Fatalf("after drain: pending %d delayed %d counter out %d", p, d, c.out)
	}
}

func TestAppendKeepsSeqAtTheTail(t *testing.T) {
	src := queue.New("jobs", nil)
	dlq := queue.New("jobs.dlq", nil)
	for range 3 {
		src.Push(inline("m", 1), nil)
	}
	dlq.Push(inline("direct", 1), nil) // dlq's own numbering: 1
	m1, m2 := src.Pop(), src.Pop()
	src.Hold(m2)
	src.TakeOut(m2)
	dlq.Append(m2)
	src.Hold(m1)
	src.TakeOut(m1)
	dlq.Append(m1)
	equalSeqs(t, seqs(dlq), 1, 2, 1)
	if c := src.Counts(); c.DeadLettered != 2 {
		t.Fatalf("dead lettered %d, want 2", c.DeadLettered)
	}
}

func TestPendingQueueIsNotIdle(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 0)
	q, err := r.Acquire([]byte("jobs"), 1, false)
	if err != nil {
		t.Fatal(err)
	}
	q.Push(inline("m", 1), nil)
	m := q.Pop()
	q.Hold(m)
	r.Release(q)
	if infos := r.Snapshot(); len(infos) != 1 || infos[0].Pending != 1 {
		t.Fatalf("snapshot %+v: a queue with a pending message was removed", infos)
	}
	if err := r.Disown([]byte("jobs"), 1); err == nil {
		t.Fatalf("disowned")
	}
	q.Settle(m)
	if infos := r.Snapshot(); len(infos) != 0 {
		t.Fatalf("snapshot %+v: the idle queue stayed", infos)
	}
}

// Timers due together fire in no particular order. Whichever runs first
// brings back every message due, oldest first, so a waiting consumer gets
// the earliest, never one behind it.
func TestDelayedDueTogetherComeBackInOrder(t *testing.T) {
	q := queue.New("jobs", &counter{})
	var held []*queue.Message
	for _, tag := range []string{"a", "b", "c"} {
		q.Push(inline(tag, 1), nil)
		m := q.Pop()
		q.Hold(m)
		held = append(held, m)
	}
	for _, m := range held {
		q.Delay(m, time.Hour, true)
	}
	w := &ackWaiter{}
	if m := q.PopOrWaitMode(w, true); m != nil {
		t.Fatalf("an empty queue gave message %d", m.Seq)
	}
	q.FireDelayed(held[2]) // the last message's timer runs first
	if len(w.got) != 1 || w.got[0].Seq != 1 {
		t.Fatalf("the waiter got %d messages, first %v; want message 1", len(w.got), w.got)
	}
	if _, d := q.Out(); d != 0 {
		t.Fatalf("%d messages still delayed, want every due one back", d)
	}
	equalSeqs(t, seqs(q), 2, 3)
}
