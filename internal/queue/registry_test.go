package queue_test

import (
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/machq/machq/internal/queue"
	"golang.org/x/sys/unix"
)

func TestRegistryGet(t *testing.T) {
	r := queue.NewRegistry(nil)
	a := r.Get([]byte("alpha"))
	if a == nil {
		t.Fatal("Get returned nil")
	}
	if a.Name() != "alpha" {
		t.Errorf("Name = %q, want alpha", a.Name())
	}
	if r.Get([]byte("alpha")) != a {
		t.Error("Get returned a different queue for the same name")
	}
	b := r.Get([]byte("beta"))
	if b == a {
		t.Error("Get returned the same queue for different names")
	}
	if r.Get([]byte("Alpha")) == a {
		t.Error("queue names are not case-sensitive")
	}

	// The registry keeps its own copy of the name.
	name := []byte("gamma")
	g := r.Get(name)
	name[0] = 'X'
	if g.Name() != "gamma" {
		t.Errorf("Name after the caller reused its buffer = %q", g.Name())
	}
	if r.Get([]byte("gamma")) != g {
		t.Error("the queue is no longer found under its name after the caller reused its buffer")
	}

	// Messages live in the queue the registry hands out.
	a.Push(inline("m", 3), nil)
	if n, _ := r.Get([]byte("alpha")).Len(); n != 1 {
		t.Errorf("queue from a second Get holds %d messages, want 1", n)
	}
}

func TestRegistryGetConcurrent(t *testing.T) {
	r := queue.NewRegistry(nil)
	const goroutines = 16
	got := make([]*queue.Queue, goroutines)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got[i] = r.Get([]byte("shared"))
			r.Get([]byte(fmt.Sprint("own-", i)))
		}()
	}
	close(start)
	wg.Wait()
	for i, q := range got {
		if q != got[0] {
			t.Errorf("goroutine %d got a different queue for the same name", i)
		}
	}
	if n := len(r.Snapshot()); n != goroutines+1 {
		t.Errorf("Snapshot has %d queues, want %d", n, goroutines+1)
	}
}

func TestRegistryCounter(t *testing.T) {
	c := &counter{}
	r := queue.NewRegistry(c)
	r.Get([]byte("a")).Push(inline("", 10), nil)
	r.Get([]byte("b")).Push(inline("", 20), nil)
	r.Get([]byte("b")).Push(inline("", 30), nil)
	expectCounter(t, c, 3, 60)
	r.Get([]byte("b")).Pop()
	expectCounter(t, c, 2, 40)
}

func TestSnapshot(t *testing.T) {
	r := queue.NewRegistry(nil)
	if s := r.Snapshot(); len(s) != 0 {
		t.Errorf("Snapshot of an empty registry = %v", s)
	}
	for _, n := range []string{"zeta", "alpha", "Mu", "beta", "alpha.2", "_x", "0"} {
		r.Get([]byte(n))
	}
	r.Get([]byte("beta")).Push(inline("", 5), nil)
	r.Get([]byte("beta")).Push(inline("", 6), nil)
	r.Get([]byte("zeta")).PopOrWait(&waiter{accept: true})
	r.Get([]byte("zeta")).PopOrWait(&waiter{accept: true})
	r.Get([]byte("0")).Push(inline("", 1), nil)

	want := []queue.Info{
		{Name: "0", Messages: 1, Bytes: 1},
		{Name: "Mu"},
		{Name: "_x"},
		{Name: "alpha"},
		{Name: "alpha.2"},
		{Name: "beta", Messages: 2, Bytes: 11},
		{Name: "zeta", Waiting: 2},
	}
	if got := r.Snapshot(); !reflect.DeepEqual(got, want) {
		t.Errorf("Snapshot =\n%+v\nwant\n%+v", got, want)
	}
}

func TestDrainAll(t *testing.T) {
	c := &counter{}
	r := queue.NewRegistry(c)
	pg := newPageFD(t, []byte("0123456789"))
	pipe := newPipeFD(t)
	r.Get([]byte("a")).Push(&queue.Message{FD: pg, Size: 10}, nil)
	r.Get([]byte("a")).Push(inline("", 7), nil)
	r.Get([]byte("b")).Push(&queue.Message{FD: pipe, Size: 0}, nil)
	r.Get([]byte("c")) // empty
	w := &waiter{accept: true}
	r.Get([]byte("d")).PopOrWait(w)

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
	want := []queue.Info{{Name: "a"}, {Name: "b"}, {Name: "c"}, {Name: "d", Waiting: 1}}
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
	r := queue.NewRegistry(c)
	const workers, each = 4, 500
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				q := r.Get([]byte(fmt.Sprint("q", j%5)))
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
