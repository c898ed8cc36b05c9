package queue_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/machq/machq/internal/queue"
)

// busyWaiter answers Busy while busy is set.
type busyWaiter struct {
	busy   bool
	offers int
	got    []*queue.Message
}

func (w *busyWaiter) Deliver(_ *queue.Queue, m *queue.Message) queue.Delivery {
	w.offers++
	if w.busy {
		return queue.Busy
	}
	w.got = append(w.got, m)
	return queue.Delivered
}

// TestBusyWaiterIsParkedNotOverfilled checks that a waiter that cannot
// take a message is skipped: the message goes to the next waiter, or is
// kept, and the busy waiter is offered nothing more until it is resumed.
func TestBusyWaiterIsParkedNotOverfilled(t *testing.T) {
	q := queue.New("q", nil)
	slow, fast := &busyWaiter{busy: true}, &busyWaiter{}
	q.PopOrWait(slow)
	q.PopOrWait(fast)
	q.Push(inline("a", 1), nil)
	if len(fast.got) != 1 || fast.got[0].Digest != "a" {
		t.Fatalf("the waiter after a busy one got %v", fast.got)
	}
	for i := range 10 {
		q.Push(inline(fmt.Sprint(i), 1), nil)
	}
	if slow.offers != 1 {
		t.Errorf("a parked waiter was offered %d messages; once it is busy it must be skipped", slow.offers)
	}
	if n, _ := q.Len(); n != 10 {
		t.Fatalf("queue holds %d messages, want the 10 nobody could take", n)
	}
	if n := q.Waiting(); n != 1 {
		t.Errorf("Waiting = %d; a parked waiter still waits", n)
	}
	// Resumed, it takes the oldest message and stops waiting.
	slow.busy = false
	if !q.Resume(slow) || len(slow.got) != 1 || slow.got[0].Digest != "0" {
		t.Fatalf("Resume gave %v; want the oldest message", slow.got)
	}
	// Resuming a waiter that is not parked does nothing.
	if q.Resume(slow) || len(slow.got) != 1 {
		t.Errorf("Resume of a waiter not parked gave %v", slow.got)
	}
	// A waiter busy again when resumed stays parked, and the message
	// stays at the head.
	q2 := queue.New("q2", nil)
	busy := &busyWaiter{busy: true}
	q2.PopOrWait(busy)
	q2.Push(inline("x", 1), nil) // parks it
	q2.Push(inline("y", 1), nil)
	if q2.Resume(busy) || len(busy.got) != 0 {
		t.Fatal("a busy waiter took a message")
	}
	if n := q2.Waiting(); n != 1 {
		t.Fatalf("Waiting = %d after a busy resume, want 1", n)
	}
	if m := q2.Pop(); m == nil || m.Digest != "x" {
		t.Fatalf("the head after a busy resume is %v, want x", m)
	}
}

// TestResumeOnEmptyQueueWaitsAgain checks that a resumed waiter with
// nothing to take is back in line and receives the next message.
func TestResumeOnEmptyQueueWaitsAgain(t *testing.T) {
	q := queue.New("q", nil)
	w := &busyWaiter{busy: true}
	q.PopOrWait(w)
	q.Push(inline("a", 1), nil)
	if q.Pop() == nil {
		t.Fatal("the message a busy waiter could not take was not kept")
	}
	w.busy = false
	if q.Resume(w) {
		t.Fatalf("Resume on an empty queue delivered %v; want back in line", w.got)
	}
	q.Push(inline("b", 1), nil)
	if len(w.got) != 1 || w.got[0].Digest != "b" {
		t.Errorf("resumed waiter got %v, want b", w.got)
	}
}

// TestCancelParkedWaiter checks that CancelWait finds a parked waiter.
func TestCancelParkedWaiter(t *testing.T) {
	q := queue.New("q", nil)
	w := &busyWaiter{busy: true}
	q.PopOrWait(w)
	q.Push(inline("a", 1), nil)
	if !q.CancelWait(w) {
		t.Fatal("CancelWait did not find the parked waiter")
	}
	if q.Waiting() != 0 {
		t.Error("a cancelled parked waiter still counts")
	}
}

// TestRequeueKeepsOrder checks that a message put back goes to the head
// with its sequence number.
func TestRequeueKeepsOrder(t *testing.T) {
	c := &counter{}
	q := queue.New("q", c)
	for _, d := range []string{"a", "b", "c"} {
		q.Push(inline(d, 1), nil)
	}
	m := q.Pop()
	q.Requeue(m)
	var got []string
	var seqs []uint64
	for m := q.Pop(); m != nil; m = q.Pop() {
		got = append(got, m.Digest)
		seqs = append(seqs, m.Seq)
	}
	if fmt.Sprint(got) != "[a b c]" || seqs[0] >= seqs[1] {
		t.Errorf("after Requeue the queue gave %v %v, want a b c in order", got, seqs)
	}
	expectCounter(t, c, 0, 0)
}

// TestOwnedQueueSurvivesRemovals checks that no number of removals by
// others makes the registry forget an owned queue.
func TestOwnedQueueSurvivesRemovals(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 0)
	const victim = 1000
	q, err := r.Acquire([]byte("mine"), victim, true)
	if err != nil {
		t.Fatal(err)
	}
	r.Release(q)
	for i := range queue.RememberedQueues + 10 {
		get(r, []byte(fmt.Sprint("churn-", i)))
		if i%4096 == 0 {
			r.Snapshot()
		}
	}
	r.Snapshot()
	again, err := r.Acquire([]byte("mine"), 666, false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release(again)
	if o, ok := again.Owner(); !ok || o != victim {
		t.Fatalf("after %d removals the queue's owner is %d, %v; want %d", queue.RememberedQueues+10, o, ok, victim)
	}
}

// TestDisown checks that only the owner or root gives up an owned queue,
// only when it is empty, and that the name is then free.
func TestDisown(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 0)
	q, _ := r.Acquire([]byte("mine"), 1000, true)
	q.Push(inline("m", 1), nil)
	r.Release(q)
	if err := r.Disown([]byte("mine"), 666); !errors.Is(err, queue.ErrNotOwner) {
		t.Errorf("Disown by another user: %v, want ErrNotOwner", err)
	}
	if err := r.Disown([]byte("mine"), 1000); !errors.Is(err, queue.ErrInUse) {
		t.Errorf("Disown of a queue holding a message: %v, want ErrInUse", err)
	}
	q.Pop()
	if err := r.Disown([]byte("mine"), 1000); err != nil {
		t.Fatalf("Disown by the owner: %v", err)
	}
	if r.Lookup([]byte("mine")) != nil {
		t.Error("a disowned queue still exists")
	}
	if err := r.Disown([]byte("mine"), 1000); !errors.Is(err, queue.ErrNoQueue) {
		t.Errorf("Disown of nothing: %v, want ErrNoQueue", err)
	}
	other, _ := r.Acquire([]byte("mine"), 666, true)
	defer r.Release(other)
	if o, ok := other.Owner(); !ok || o != 666 {
		t.Errorf("the freed name could not be claimed: owner %d, %v", o, ok)
	}
	if seq := other.Push(inline("m", 1), nil); seq <= 1 {
		t.Errorf("numbers under a freed name restarted at %d", seq)
	}
	if err := r.Disown([]byte("open"), 0); !errors.Is(err, queue.ErrNoQueue) {
		t.Errorf("Disown of no queue by root: %v", err)
	}
}

// TestRegistryLimitPerUID checks that one creator's queues cannot take
// every name, and that its idle open queues make room when removed.
func TestRegistryLimitPerUID(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 3)
	var held []*queue.Queue
	for i := range 3 {
		q, err := r.Acquire([]byte(fmt.Sprint("a", i)), 1, true)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, q)
	}
	if _, err := r.Acquire([]byte("a3"), 1, false); !errors.Is(err, queue.ErrTooManyQueuesForUID) {
		t.Fatalf("a fourth queue of uid 1: %v, want ErrTooManyQueuesForUID", err)
	}
	q, err := r.Acquire([]byte("b0"), 2, false)
	if err != nil {
		t.Fatalf("another user's queue refused: %v", err)
	}
	r.Release(q)
	if n := r.CreatedBy()[1]; n != 3 {
		t.Errorf("CreatedBy[1] = %d, want 3", n)
	}
	for _, q := range held {
		r.Release(q)
	}
	// Owned queues count until disowned.
	if _, err := r.Acquire([]byte("a3"), 1, false); !errors.Is(err, queue.ErrTooManyQueuesForUID) {
		t.Fatalf("idle owned queues stopped counting: %v", err)
	}
	if err := r.Disown([]byte("a0"), 1); err != nil {
		t.Fatal(err)
	}
	q, err = r.Acquire([]byte("a3"), 1, false)
	if err != nil {
		t.Fatalf("after a disown: %v", err)
	}
	r.Release(q)
}

// TestSweepIsIncremental checks that removal looks at a bounded number of
// queues per hold of the lock: with many idle queues listed, a creation
// looks at one batch, not all.
func TestSweepIsIncremental(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 0)
	const n = 20 * queue.SweepBatch
	for i := range n {
		get(r, []byte(fmt.Sprint("idle-", i)))
	}
	before := r.Len()
	get(r, []byte("one-more"))
	removed := before + 1 - r.Len()
	if removed > queue.SweepBatch {
		t.Errorf("one creation removed %d idle queues; at most %d per batch", removed, queue.SweepBatch)
	}
	if removed == 0 {
		t.Errorf("creation past the sweep threshold removed nothing")
	}
	r.Snapshot()
	if l := r.Len(); l != 0 {
		t.Errorf("after a Snapshot %d idle queues remain", l)
	}
}
