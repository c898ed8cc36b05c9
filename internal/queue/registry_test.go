package queue_test

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/machq/machq/internal/queue"
	"golang.org/x/sys/unix"
)

func TestRegistryGet(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 0)
	a := get(r, []byte("alpha"))
	if a == nil {
		t.Fatal("Get returned nil")
	}
	if a.Name() != "alpha" {
		t.Errorf("Name = %q, want alpha", a.Name())
	}
	if get(r, []byte("alpha")) != a {
		t.Error("Get returned a different queue for the same name")
	}
	b := get(r, []byte("beta"))
	if b == a {
		t.Error("Get returned the same queue for different names")
	}
	if get(r, []byte("Alpha")) == a {
		t.Error("queue names are not case-sensitive")
	}

	// The registry keeps its own copy of the name.
	name := []byte("gamma")
	g := get(r, name)
	name[0] = 'X'
	if g.Name() != "gamma" {
		t.Errorf("Name after the caller reused its buffer = %q", g.Name())
	}
	if get(r, []byte("gamma")) != g {
		t.Error("the queue is no longer found under its name after the caller reused its buffer")
	}

	// Messages live in the queue the registry hands out.
	a.Push(inline("m", 3), nil)
	if n, _ := get(r, []byte("alpha")).Len(); n != 1 {
		t.Errorf("queue from a second Get holds %d messages, want 1", n)
	}
}

func TestRegistryGetConcurrent(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 0)
	const goroutines = 16
	got := make([]*queue.Queue, goroutines)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got[i] = get(r, []byte("shared"))
			get(r, []byte(fmt.Sprint("own-", i)))
		}()
	}
	close(start)
	wg.Wait()
	for i, q := range got {
		if q != got[0] {
			t.Errorf("goroutine %d got a different queue for the same name", i)
		}
	}
	if n := r.Len(); n != goroutines+1 {
		t.Errorf("registry has %d queues, want %d", n, goroutines+1)
	}
}

func TestRegistryCounter(t *testing.T) {
	c := &counter{}
	r := queue.NewRegistry(c, 0, 0)
	get(r, []byte("a")).Push(inline("", 10), nil)
	get(r, []byte("b")).Push(inline("", 20), nil)
	get(r, []byte("b")).Push(inline("", 30), nil)
	expectCounter(t, c, 3, 60)
	get(r, []byte("b")).Pop()
	expectCounter(t, c, 2, 40)
}

func TestSnapshot(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 0)
	if s := r.Snapshot(); len(s) != 0 {
		t.Errorf("Snapshot of an empty registry = %v", s)
	}
	for _, n := range []string{"zeta", "alpha", "Mu", "beta", "alpha.2", "_x", "0"} {
		get(r, []byte(n))
	}
	get(r, []byte("beta")).Push(inline("", 5), nil)
	get(r, []byte("beta")).Push(inline("", 6), nil)
	get(r, []byte("zeta")).PopOrWait(&waiter{accept: true})
	get(r, []byte("zeta")).PopOrWait(&waiter{accept: true})
	get(r, []byte("0")).Push(inline("", 1), nil)

	want := []queue.Info{
		// Mu, _x, alpha and alpha.2 are idle: empty, unowned, with
		// nobody waiting. Snapshot removes them.
		{Name: "0", Messages: 1, Bytes: 1},
		{Name: "beta", Messages: 2, Bytes: 11},
		{Name: "zeta", Waiting: 2},
	}
	if got := r.Snapshot(); !reflect.DeepEqual(got, want) {
		t.Errorf("Snapshot =\n%+v\nwant\n%+v", got, want)
	}
}

func TestDrainAll(t *testing.T) {
	c := &counter{}
	r := queue.NewRegistry(c, 0, 0)
	pg := newPageFD(t, []byte("0123456789"))
	pipe := newPipeFD(t)
	get(r, []byte("a")).Push(&queue.Message{FD: pg, Size: 10}, nil)
	get(r, []byte("a")).Push(inline("", 7), nil)
	get(r, []byte("b")).Push(&queue.Message{FD: pipe, Size: 0}, nil)
	get(r, []byte("c")) // empty
	w := &waiter{accept: true}
	get(r, []byte("d")).PopOrWait(w)

	n, bytes := r.DrainAll()
	if n != 3 || bytes != 17 {
		t.Errorf("DrainAll = %d, %d; want 3, 17", n, bytes)
	}
	expectCounter(t, c, 0, 0)
	for _, fd := range []int{pg, pipe} {
		if fdOpen(t, fd) {
			unix.Close(fd)
			t.Errorf("DrainAll left descriptor %d open", fd)
		}
	}
	// a, b and c are idle once drained, and removed; d has a waiter.
	want := []queue.Info{{Name: "d", Waiting: 1}}
	if got := r.Snapshot(); !reflect.DeepEqual(got, want) {
		t.Errorf("Snapshot after DrainAll = %+v, want %+v", got, want)
	}
	if n, bytes := r.DrainAll(); n != 0 || bytes != 0 {
		t.Errorf("second DrainAll = %d, %d; want 0, 0", n, bytes)
	}
}

// TestRegistryConcurrent exercises Get, Snapshot and DrainAll while
// queues are used, for the race detector, and checks the totals add up.
func TestRegistryConcurrent(t *testing.T) {
	c := &counter{}
	r := queue.NewRegistry(c, 0, 0)
	const workers, each = 4, 500
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				q := get(r, []byte(fmt.Sprint("q", j%5)))
				q.Push(inline("", i+1), nil)
				if j%50 == 0 {
					r.Snapshot()
				}
			}
		}()
	}
	wg.Wait()
	var msgs int
	var bytes int64
	for _, info := range r.Snapshot() {
		msgs += info.Messages
		bytes += info.Bytes
	}
	wantBytes := int64(each * (1 + 2 + 3 + 4))
	if msgs != workers*each || bytes != wantBytes {
		t.Errorf("Snapshot totals = %d, %d; want %d, %d", msgs, bytes, workers*each, wantBytes)
	}
	expectCounter(t, c, workers*each, wantBytes)
	if n, b := r.DrainAll(); n != workers*each || b != wantBytes {
		t.Errorf("DrainAll = %d, %d; want %d, %d", n, b, workers*each, wantBytes)
	}
	expectCounter(t, c, 0, 0)
}

// get acquires the queue called name and releases it at once, as a
// request that used it would.
func get(r *queue.Registry, name []byte) *queue.Queue {
	q, err := r.Acquire(name, 0, false)
	if err != nil {
		panic(err)
	}
	r.Release(q)
	return q
}

func TestRegistryRemovesIdleQueues(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 0)
	uid := uint32(1000)

	// Lookup never creates.
	if q := r.Lookup([]byte("typo")); q != nil {
		t.Fatal("Lookup created a queue")
	}
	get(r, []byte("idle"))
	full := get(r, []byte("full"))
	full.Push(inline("x", 1), nil)
	waited := get(r, []byte("waited"))
	w := &waiter{accept: true}
	waited.PopOrWait(w)
	owned, err := r.Acquire([]byte("owned"), uid, true)
	if err != nil {
		t.Fatal(err)
	}
	r.Release(owned)
	held, err := r.Acquire([]byte("held"), 0, false)
	if err != nil {
		t.Fatal(err)
	}

	r.Snapshot()
	if q := r.Lookup([]byte("idle")); q != nil {
		t.Error("an idle queue survived a Snapshot")
	}
	for _, name := range []string{"full", "waited", "held"} {
		q := r.Lookup([]byte(name))
		if q == nil {
			t.Errorf("queue %s was removed; only idle queues nobody holds may be", name)
			continue
		}
		r.Release(q)
	}
	// A message pushed into a held queue is never lost with it.
	held.Push(inline("y", 1), nil)
	r.Release(held)
	r.Snapshot()
	if q := r.Lookup([]byte("held")); q == nil {
		t.Error("the held queue was removed with a message in it")
	} else {
		if m := q.Pop(); m == nil || m.Digest != "y" {
			t.Errorf("held queue gave %v", m)
		}
		r.Release(q)
	}
	// An idle owned queue is never removed: its name stays its owner's.
	if q := r.Lookup([]byte("owned")); q == nil {
		t.Error("an idle owned queue was removed; its owner would lose the name")
	} else {
		if o, ok := q.Owner(); !ok || o != uid {
			t.Errorf("owned queue has owner %d, %v; want %d", o, ok, uid)
		}
		r.Release(q)
	}
	// Cancelling the only waiter makes a queue idle.
	waited.CancelWait(w)
	r.Snapshot()
	if q := r.Lookup([]byte("waited")); q != nil {
		t.Error("a queue whose waiter left survived a Snapshot")
	}
}

func TestRegistrySequenceContinuesAfterRemoval(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 0)
	q := get(r, []byte("jobs"))
	var last uint64
	for range 5 {
		last = q.Push(inline("m", 1), nil)
	}
	for q.Pop() != nil {
	}
	r.Snapshot() // removes jobs
	again := get(r, []byte("jobs"))
	if again == q {
		t.Fatal("the idle queue was not removed")
	}
	if seq := again.Push(inline("m", 1), nil); seq <= last {
		t.Errorf("recreated queue numbered its first message %d; a consumer saw %d already", seq, last)
	}
}

func TestRegistryLimit(t *testing.T) {
	const limit = 3
	r := queue.NewRegistry(nil, limit, 0)
	for i := range limit {
		q := get(r, []byte(fmt.Sprint("q", i)))
		q.Push(inline("m", 1), nil)
	}
	if _, err := r.Acquire([]byte("one-more"), 0, false); !errors.Is(err, queue.ErrTooManyQueues) {
		t.Fatalf("Acquire past the limit: %v, want ErrTooManyQueues", err)
	}
	// An existing queue is still served at the limit.
	if q := get(r, []byte("q0")); q == nil {
		t.Fatal("existing queue refused at the limit")
	}
	// Idle queues do not count: emptying one makes room.
	get(r, []byte("q1")).Pop()
	q, err := r.Acquire([]byte("one-more"), 0, false)
	if err != nil {
		t.Fatalf("Acquire after a queue went idle: %v", err)
	}
	r.Release(q)
	if n := r.Len(); n != limit {
		t.Errorf("registry holds %d queues, want %d", n, limit)
	}
}

// TestRegistryRemovalLosesNothing pushes and pops through many queues
// while others are swept, for the race detector, and checks every message
// pushed is popped exactly once.
func TestRegistryRemovalLosesNothing(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 0)
	const workers, rounds = 8, 2000
	var wg sync.WaitGroup
	var pushed, popped [workers]int
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range rounds {
				name := []byte(fmt.Sprint("w", i, "-", j%7))
				q, err := r.Acquire(name, 0, false)
				if err != nil {
					t.Error(err)
					return
				}
				q.Push(inline("m", 1), nil)
				pushed[i]++
				r.Release(q)
				if j%2 == 1 {
					if q := r.Lookup(name); q != nil {
						for q.Pop() != nil {
							popped[i]++
						}
						r.Release(q)
					}
				}
				if j%100 == 0 {
					r.Snapshot()
				}
			}
		}()
	}
	wg.Wait()
	for i := range workers {
		for k := range 7 {
			if q := r.Lookup([]byte(fmt.Sprint("w", i, "-", k))); q != nil {
				for q.Pop() != nil {
					popped[i]++
				}
				r.Release(q)
			}
		}
		if pushed[i] != popped[i] {
			t.Errorf("worker %d pushed %d messages and popped %d", i, pushed[i], popped[i])
		}
	}
}

func TestRegistryRemembersRemovedQueues(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 0)
	mallory := uint32(666)

	// An open queue, idle and removed, cannot be claimed as an owned one.
	q := get(r, []byte("jobs"))
	seq := q.Push(inline("m", 1), nil)
	q.Pop()
	r.Snapshot()
	claimed, err := r.Acquire([]byte("jobs"), mallory, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, owned := claimed.Owner(); owned {
		t.Error("a removed open queue was claimed as an owned one")
	}
	if next := claimed.Push(inline("m", 1), nil); next != seq+1 {
		t.Errorf("recreated queue numbered %d after %d; want %d", next, seq, seq+1)
	}
	claimed.Pop()
	r.Release(claimed)
	r.Snapshot()

	// Past RememberedQueues later removals, the oldest is forgotten: the
	// name is new again, though its numbers still go up.
	for i := range queue.RememberedQueues {
		get(r, []byte(fmt.Sprint("other-", i)))
	}
	r.Snapshot()
	again, err := r.Acquire([]byte("jobs"), mallory, true)
	if err != nil {
		t.Fatal(err)
	}
	if o, owned := again.Owner(); !owned || o != mallory {
		t.Errorf("a forgotten name was not new: owner %d, %v", o, owned)
	}
	if next := again.Push(inline("m", 1), nil); next <= seq+1 {
		t.Errorf("a forgotten queue's name numbered %d, not above %d", next, seq+1)
	}
	r.Release(again)
	// The most recent removals are still remembered.
	last := []byte(fmt.Sprint("other-", queue.RememberedQueues-1))
	if q, err := r.Acquire(last, mallory, true); err != nil {
		t.Fatal(err)
	} else if _, owned := q.Owner(); owned {
		t.Error("a recently removed open queue was claimed")
	}
}

func TestRegistryLimitSweepsOnlyWhenSomethingWentIdle(t *testing.T) {
	r := queue.NewRegistry(nil, 2, 0)
	a, b := get(r, []byte("a")), get(r, []byte("b"))
	a.Push(inline("m", 1), nil)
	b.Push(inline("m", 1), nil)
	if _, err := r.Acquire([]byte("c"), 0, false); !errors.Is(err, queue.ErrTooManyQueues) {
		t.Fatalf("at the limit: %v", err)
	}
	// A waiter that comes and goes on an empty queue also makes it idle.
	q := get(r, []byte("a"))
	q.Pop()
	if _, err := r.Acquire([]byte("c"), 0, false); err != nil {
		t.Fatalf("after a queue went idle: %v", err)
	}
}
