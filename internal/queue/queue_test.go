package queue_test

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/queue"
	"golang.org/x/sys/unix"
)

// inline returns an inline message of size bytes tagged with tag.
func inline(tag string, size int) *queue.Message {
	return &queue.Message{FD: -1, Size: int64(size), Inline: make([]byte, size), Digest: tag}
}

// counter is a queue.Counter that keeps totals.
type counter struct {
	mu       sync.Mutex
	messages int64
	pages    int64
	bytes    int64
	calls    int
	out      int64 // messages out of line (AddOut)
	outBytes int64
}

func (c *counter) AddOut(messages, pages, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out += messages
	c.outBytes += bytes
}

func (c *counter) Add(messages, pages, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.messages += messages
	c.pages += pages
	c.bytes += bytes
	c.calls++
}

func (c *counter) totals() (int64, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.messages, c.bytes
}

// expectCounter fails unless c holds exactly messages and bytes.
func expectCounter(t testing.TB, c *counter, messages, bytes int64) {
	t.Helper()
	if m, b := c.totals(); m != messages || b != bytes {
		t.Errorf("counter = %d messages, %d bytes; want %d, %d", m, b, messages, bytes)
	}
}

// expectLen fails unless q holds exactly messages and bytes.
func expectLen(t testing.TB, q *queue.Queue, messages int, bytes int64) {
	t.Helper()
	if m, b := q.Len(); m != messages || b != bytes {
		t.Errorf("Len = %d, %d; want %d, %d", m, b, messages, bytes)
	}
}

// waiter records what is delivered to it.
type waiter struct {
	accept bool
	got    []*queue.Message
	queues []*queue.Queue
}

func (w *waiter) Deliver(q *queue.Queue, m *queue.Message) queue.Delivery {
	if !w.accept {
		return queue.Gone
	}
	w.got = append(w.got, m)
	w.queues = append(w.queues, q)
	return queue.Delivered
}

// newPageFD returns a sealed memfd holding data; the test owns it until
// it hands it to a message.
func newPageFD(t testing.TB, data []byte) int {
	t.Helper()
	fd, err := page.Create("queue-test")
	if err != nil {
		t.Fatal(err)
	}
	if err := page.Write(fd, data); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	if err := page.Seal(fd); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	return fd
}

// newPipeFD returns the read end of a pipe whose write end is closed.
func newPipeFD(t testing.TB) int {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	unix.Close(p[1])
	return p[0]
}

// fdOpen reports whether fd is an open descriptor.
func fdOpen(t testing.TB, fd int) bool {
	t.Helper()
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil && err != unix.EBADF {
		t.Fatalf("F_GETFD %d: %v", fd, err)
	}
	return err == nil
}

func TestNew(t *testing.T) {
	q := queue.New("jobs", nil)
	if q.Name() != "jobs" {
		t.Errorf("Name = %q, want jobs", q.Name())
	}
	if queue.New("", nil).Name() != "" {
		t.Error("a private queue has a name")
	}
	expectLen(t, q, 0, 0)
	if q.Waiting() != 0 {
		t.Errorf("Waiting = %d, want 0", q.Waiting())
	}
	if m := q.Pop(); m != nil {
		t.Errorf("Pop on a new queue = %+v, want nil", m)
	}
	if m, b := q.Drain(); m != 0 || b != 0 {
		t.Errorf("Drain of an empty queue = %d, %d", m, b)
	}
}

func TestFIFOAndSeq(t *testing.T) {
	q := queue.New("fifo", nil)
	var total int64
	var pushed []*queue.Message
	for i := range 10 {
		m := inline(fmt.Sprint(i), i+1)
		seq := q.Push(m, nil)
		if seq != uint64(i+1) {
			t.Errorf("Push #%d returned seq %d, want %d", i, seq, i+1)
		}
		if m.Seq != seq {
			t.Errorf("Push #%d set Seq %d, returned %d", i, m.Seq, seq)
		}
		total += m.Size
		pushed = append(pushed, m)
	}
	expectLen(t, q, 10, total)
	for i := range 10 {
		m := q.Pop()
		if m != pushed[i] {
			t.Fatalf("Pop #%d = %+v, want message %d", i, m, i)
		}
		total -= m.Size
		expectLen(t, q, 9-i, total)
	}
	if m := q.Pop(); m != nil {
		t.Errorf("Pop on an emptied queue = %+v", m)
	}
	// Sequence numbers go on from where they were.
	if seq := q.Push(inline("next", 0), nil); seq != 11 {
		t.Errorf("seq after draining = %d, want 11", seq)
	}
}

func TestSeqIsPerQueue(t *testing.T) {
	a, b := queue.New("a", nil), queue.New("b", nil)
	a.Push(inline("", 1), nil)
	a.Push(inline("", 1), nil)
	if seq := b.Push(inline("", 1), nil); seq != 1 {
		t.Errorf("first seq of a second queue = %d, want 1", seq)
	}
	if seq := a.Push(inline("", 1), nil); seq != 3 {
		t.Errorf("third seq of the first queue = %d, want 3", seq)
	}
}

// TestRingWraparound pushes and pops in an irregular rhythm, so that the
// ring's head travels round it many times, it grows while wrapped and it
// is dropped after bursts, and compares every result with a plain slice.
func TestRingWraparound(t *testing.T) {
	c := &counter{}
	q := queue.New("ring", c)
	var model []*queue.Message
	var bytes int64
	var nextSeq uint64 = 1
	state := uint32(1)
	rnd := func(n uint32) int { // xorshift, deterministic
		state ^= state << 13
		state ^= state >> 17
		state ^= state << 5
		return int(state % n)
	}
	push := func() {
		m := inline("", rnd(100))
		if seq := q.Push(m, nil); seq != nextSeq {
			t.Fatalf("Push seq = %d, want %d", seq, nextSeq)
		}
		nextSeq++
		model = append(model, m)
		bytes += m.Size
	}
	pop := func() {
		m := q.Pop()
		if len(model) == 0 {
			if m != nil {
				t.Fatalf("Pop on an empty queue = seq %d", m.Seq)
			}
			return
		}
		if m != model[0] {
			t.Fatalf("Pop = %+v, want seq %d", m, model[0].Seq)
		}
		model = model[1:]
		bytes -= m.Size
	}
	for round := range 5000 {
		// Mostly balanced; every 500 rounds a burst big enough to pass
		// the 1024-slot shrink threshold, then a full drain.
		switch {
		case round%500 == 499:
			for range 3000 {
				push()
			}
			for len(model) > 0 {
				pop()
			}
			pop()
		default:
			for range rnd(4) {
				push()
			}
			for range rnd(4) {
				pop()
			}
		}
		if n, b := q.Len(); n != len(model) || b != bytes {
			t.Fatalf("round %d: Len = %d, %d; want %d, %d", round, n, b, len(model), bytes)
		}
	}
	for len(model) > 0 {
		pop()
	}
	expectLen(t, q, 0, 0)
	expectCounter(t, c, 0, 0)
}

func TestRingGrowsWhileWrapped(t *testing.T) {
	q := queue.New("wrap", nil)
	// Fill the first 8-slot ring, move the head to its middle, then push
	// past the capacity so that growth must unwrap the ring.
	for i := range 8 {
		q.Push(inline(fmt.Sprint(i), 1), nil)
	}
	for i := range 5 {
		if m := q.Pop(); m.Digest != fmt.Sprint(i) {
			t.Fatalf("Pop = %q, want %d", m.Digest, i)
		}
	}
	for i := 8; i < 40; i++ {
		q.Push(inline(fmt.Sprint(i), 1), nil)
	}
	for i := 5; i < 40; i++ {
		m := q.Pop()
		if m == nil || m.Digest != fmt.Sprint(i) {
			t.Fatalf("Pop = %+v, want %d", m, i)
		}
	}
	if m := q.Pop(); m != nil {
		t.Errorf("queue not empty: %+v", m)
	}
}

func TestCounterTotals(t *testing.T) {
	c := &counter{}
	a, b := queue.New("a", c), queue.New("b", c)
	a.Push(inline("", 10), nil)
	a.Push(inline("", 20), nil)
	b.Push(inline("", 300), nil)
	b.Push(inline("", 0), nil)
	expectCounter(t, c, 4, 330)
	if c.calls != 4 {
		t.Errorf("counter called %d times, want 4", c.calls)
	}

	a.Pop()
	expectCounter(t, c, 3, 320)
	b.Pop()
	expectCounter(t, c, 2, 20)

	// A message handed straight to a waiter is never held.
	w := &waiter{accept: true}
	q := queue.New("direct", c)
	if q.PopOrWait(w) != nil {
		t.Fatal("PopOrWait on an empty queue returned a message")
	}
	q.Push(inline("", 4000), nil)
	expectCounter(t, c, 2, 20)

	// A refused delivery is held and counted.
	r := &waiter{accept: false}
	q.PopOrWait(r)
	q.Push(inline("", 5000), nil)
	expectCounter(t, c, 3, 5020)

	n, bytes := q.Drain()
	if n != 1 || bytes != 5000 {
		t.Errorf("Drain = %d, %d; want 1, 5000", n, bytes)
	}
	a.Drain()
	b.Drain()
	expectCounter(t, c, 0, 0)
}

func TestPopOrWaitReturnsQueued(t *testing.T) {
	q := queue.New("q", nil)
	m := inline("x", 3)
	q.Push(m, nil)
	w := &waiter{accept: true}
	if got := q.PopOrWait(w); got != m {
		t.Fatalf("PopOrWait = %+v, want the queued message", got)
	}
	if q.Waiting() != 0 {
		t.Errorf("PopOrWait registered a waiter although a message was there")
	}
	expectLen(t, q, 0, 0)
	q.Push(inline("y", 1), nil)
	if len(w.got) != 0 {
		t.Error("a waiter that was never registered received a message")
	}
}

func TestPopOrWaitDirectDelivery(t *testing.T) {
	c := &counter{}
	q := queue.New("q", c)
	q.Push(inline("old", 1), nil)
	q.Pop()

	w := &waiter{accept: true}
	if m := q.PopOrWait(w); m != nil {
		t.Fatalf("PopOrWait on an empty queue = %+v, want nil", m)
	}
	if q.Waiting() != 1 {
		t.Fatalf("Waiting = %d, want 1", q.Waiting())
	}
	m := inline("new", 7)
	seq := q.Push(m, nil)
	if seq != 2 {
		t.Errorf("Push seq = %d, want 2", seq)
	}
	if len(w.got) != 1 || w.got[0] != m {
		t.Fatalf("waiter got %v, want the pushed message", w.got)
	}
	if w.got[0].Seq != seq {
		t.Errorf("delivered Seq = %d, Push returned %d", w.got[0].Seq, seq)
	}
	if w.queues[0] != q {
		t.Error("Deliver was not given the queue")
	}
	expectLen(t, q, 0, 0)
	expectCounter(t, c, 0, 0)
	if q.Waiting() != 0 {
		t.Errorf("Waiting after delivery = %d, want 0", q.Waiting())
	}
	// The waiter is used once: the next message is stored.
	q.Push(inline("later", 1), nil)
	if len(w.got) != 1 {
		t.Errorf("waiter got %d messages, want 1", len(w.got))
	}
	expectLen(t, q, 1, 1)
}

func TestWaitersInOrder(t *testing.T) {
	q := queue.New("q", nil)
	ws := []*waiter{{accept: true}, {accept: true}, {accept: true}}
	for _, w := range ws {
		if q.PopOrWait(w) != nil {
			t.Fatal("PopOrWait on an empty queue returned a message")
		}
	}
	if q.Waiting() != 3 {
		t.Fatalf("Waiting = %d, want 3", q.Waiting())
	}
	for i := range ws {
		q.Push(inline(fmt.Sprint(i), 1), nil)
	}
	for i, w := range ws {
		if len(w.got) != 1 || w.got[0].Digest != fmt.Sprint(i) {
			t.Errorf("waiter %d got %v, want message %d", i, w.got, i)
		}
	}
	expectLen(t, q, 0, 0)
}

func TestRefusingWaiterSkipped(t *testing.T) {
	q := queue.New("q", nil)
	gone := &waiter{accept: false}
	live := &waiter{accept: true}
	q.PopOrWait(gone)
	q.PopOrWait(live)
	m := inline("m", 5)
	seq := q.Push(m, nil)
	if len(live.got) != 1 || live.got[0] != m {
		t.Fatalf("the live waiter got %v, want the message", live.got)
	}
	if len(gone.got) != 0 {
		t.Error("the refusing waiter got a message")
	}
	if q.Waiting() != 0 {
		t.Errorf("Waiting = %d, want 0: the refusing waiter must be dropped", q.Waiting())
	}
	expectLen(t, q, 0, 0)
	if m.Seq != seq {
		t.Errorf("Seq = %d, Push returned %d", m.Seq, seq)
	}
}

func TestRefusingWaitersKeepMessage(t *testing.T) {
	c := &counter{}
	q := queue.New("q", c)
	q.PopOrWait(&waiter{accept: false})
	q.PopOrWait(&waiter{accept: false})
	m := inline("kept", 9)
	seq := q.Push(m, nil)
	if seq != 1 {
		t.Errorf("seq = %d, want 1", seq)
	}
	if q.Waiting() != 0 {
		t.Errorf("Waiting = %d, want 0", q.Waiting())
	}
	expectLen(t, q, 1, 9)
	expectCounter(t, c, 1, 9)
	if got := q.Pop(); got != m || got.Seq != 1 {
		t.Errorf("Pop = %+v, want the kept message with seq 1", got)
	}
}

func TestCancelWait(t *testing.T) {
	q := queue.New("q", nil)
	w := &waiter{accept: true}
	if q.CancelWait(w) {
		t.Error("CancelWait of a waiter never registered = true")
	}
	q.PopOrWait(w)
	if !q.CancelWait(w) {
		t.Error("CancelWait of a registered waiter = false")
	}
	if q.Waiting() != 0 {
		t.Errorf("Waiting after CancelWait = %d", q.Waiting())
	}
	if q.CancelWait(w) {
		t.Error("second CancelWait = true")
	}
	q.Push(inline("m", 1), nil)
	if len(w.got) != 0 {
		t.Error("a cancelled waiter received a message")
	}
	expectLen(t, q, 1, 1)
	q.Pop()

	// Delivered already: CancelWait says false.
	q.PopOrWait(w)
	q.Push(inline("m2", 1), nil)
	if len(w.got) != 1 {
		t.Fatalf("waiter got %d messages, want 1", len(w.got))
	}
	if q.CancelWait(w) {
		t.Error("CancelWait after delivery = true")
	}
}

func TestCancelWaitMiddle(t *testing.T) {
	q := queue.New("q", nil)
	a, b, c := &waiter{accept: true}, &waiter{accept: true}, &waiter{accept: true}
	q.PopOrWait(a)
	q.PopOrWait(b)
	q.PopOrWait(c)
	if !q.CancelWait(b) {
		t.Fatal("CancelWait(b) = false")
	}
	if q.Waiting() != 2 {
		t.Fatalf("Waiting = %d, want 2", q.Waiting())
	}
	q.Push(inline("1", 1), nil)
	q.Push(inline("2", 1), nil)
	q.Push(inline("3", 1), nil)
	if len(a.got) != 1 || a.got[0].Digest != "1" {
		t.Errorf("a got %v, want message 1", a.got)
	}
	if len(b.got) != 0 {
		t.Errorf("cancelled b got %v", b.got)
	}
	if len(c.got) != 1 || c.got[0].Digest != "2" {
		t.Errorf("c got %v, want message 2", c.got)
	}
	expectLen(t, q, 1, 1)
}

func TestDrainReleases(t *testing.T) {
	c := &counter{}
	q := queue.New("q", c)
	pg := newPageFD(t, []byte("page payload"))
	pipe := newPipeFD(t)
	msgs := []*queue.Message{
		{FD: pg, Size: 12},
		inline("inline", 5),
		{FD: pipe, Size: 0},
	}
	for _, m := range msgs {
		q.Push(m, nil)
	}
	w := &waiter{accept: true}
	other := queue.New("other", nil)
	other.PopOrWait(w) // a waiter on another queue is not involved

	n, bytes := q.Drain()
	if n != 3 || bytes != 17 {
		t.Errorf("Drain = %d, %d; want 3, 17", n, bytes)
	}
	expectLen(t, q, 0, 0)
	expectCounter(t, c, 0, 0)
	for _, fd := range []int{pg, pipe} {
		if fdOpen(t, fd) {
			unix.Close(fd)
			t.Errorf("Drain left descriptor %d open", fd)
		}
	}
	for i, m := range msgs {
		if m.FD != -1 || m.Inline != nil {
			t.Errorf("message %d after Drain: FD %d, Inline %v; want -1, nil", i, m.FD, m.Inline)
		}
	}
	if q.Pop() != nil {
		t.Error("Pop after Drain returned a message")
	}
}

func TestDrainKeepsWaiters(t *testing.T) {
	q := queue.New("q", nil)
	w := &waiter{accept: true}
	q.PopOrWait(w)
	if n, _ := q.Drain(); n != 0 {
		t.Errorf("Drain = %d messages, want 0", n)
	}
	if q.Waiting() != 1 {
		t.Fatalf("Waiting after Drain = %d, want 1", q.Waiting())
	}
	q.Push(inline("m", 1), nil)
	if len(w.got) != 1 {
		t.Errorf("waiter got %d messages after Drain, want 1", len(w.got))
	}
}

func TestReleaseIdempotent(t *testing.T) {
	fd := newPageFD(t, []byte("x"))
	m := &queue.Message{FD: fd, Size: 1}
	m.Release()
	if m.FD != -1 {
		t.Errorf("FD after Release = %d, want -1", m.FD)
	}
	if fdOpen(t, fd) {
		unix.Close(fd)
		t.Fatal("Release left the descriptor open")
	}
	// The number is likely reused at once; a second Release must not
	// close the new descriptor.
	fd2 := newPageFD(t, []byte("y"))
	defer unix.Close(fd2)
	m.Release()
	if !fdOpen(t, fd2) {
		t.Errorf("second Release closed descriptor %d (the message had %d)", fd2, fd)
	}

	in := inline("i", 4)
	in.Release()
	in.Release()
	if in.Inline != nil || in.FD != -1 {
		t.Errorf("inline message after Release: FD %d, Inline %v", in.FD, in.Inline)
	}
}

// chanWaiter hands its message to a goroutine through a channel. Each
// consumer registers it at most once at a time, so Deliver never blocks.
type chanWaiter struct{ ch chan *queue.Message }

func (w *chanWaiter) Deliver(_ *queue.Queue, m *queue.Message) queue.Delivery {
	select {
	case w.ch <- m:
		return queue.Delivered
	default:
		return queue.Gone
	}
}

// TestConcurrent runs producers and consumers on one queue and checks
// that every message is received exactly once, that each consumer sees
// sequence numbers rising, and that each producer's messages keep their
// order.
func TestConcurrent(t *testing.T) {
	const producers, consumers, perProducer = 6, 5, 3000
	const total = producers * perProducer
	c := &counter{}
	q := queue.New("busy", c)

	type rec struct {
		producer, index int
		seq             uint64
	}
	var received atomic.Int64
	done := make(chan struct{})
	results := make([][]rec, consumers)

	var wg sync.WaitGroup
	for ci := range consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &chanWaiter{ch: make(chan *queue.Message, 1)}
			for {
				m := q.PopOrWait(w)
				if m == nil {
					select {
					case m = <-w.ch:
					case <-done:
						if q.CancelWait(w) {
							return
						}
						m = <-w.ch // delivered meanwhile
					}
				}
				var p, i int
				if _, err := fmt.Sscanf(m.Digest, "%d/%d", &p, &i); err != nil {
					t.Errorf("bad message %q: %v", m.Digest, err)
					return
				}
				results[ci] = append(results[ci], rec{p, i, m.Seq})
				m.Release()
				if received.Add(1) == total {
					close(done)
				}
			}
		}()
	}
	var pwg sync.WaitGroup
	for p := range producers {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			last := uint64(0)
			for i := range perProducer {
				seq := q.Push(inline(fmt.Sprintf("%d/%d", p, i), i%7), nil)
				if seq <= last {
					t.Errorf("producer %d: seq %d after %d", p, seq, last)
				}
				last = seq
				if i%100 == 0 {
					q.Len()
					q.Waiting()
				}
			}
		}()
	}
	pwg.Wait()
	wg.Wait()

	seen := make(map[[2]int]bool, total)
	seqs := make(map[uint64]bool, total)
	lastIndex := make(map[int]int) // producer -> index, in seq order
	var all []rec
	for ci, rs := range results {
		for k, r := range rs {
			if k > 0 && r.seq <= rs[k-1].seq {
				t.Errorf("consumer %d got seq %d after %d", ci, r.seq, rs[k-1].seq)
			}
			key := [2]int{r.producer, r.index}
			if seen[key] {
				t.Errorf("message %d/%d received twice", r.producer, r.index)
			}
			seen[key] = true
			if seqs[r.seq] {
				t.Errorf("seq %d received twice", r.seq)
			}
			seqs[r.seq] = true
			all = append(all, r)
		}
	}
	if len(seen) != total {
		t.Errorf("received %d distinct messages, want %d", len(seen), total)
	}
	for s := uint64(1); s <= total; s++ {
		if !seqs[s] {
			t.Errorf("seq %d never received", s)
			break
		}
	}
	slices.SortFunc(all, func(a, b rec) int { return int(a.seq) - int(b.seq) })
	for p := range producers {
		lastIndex[p] = -1
	}
	for _, r := range all {
		if r.index != lastIndex[r.producer]+1 {
			t.Errorf("producer %d: message %d follows %d in seq order", r.producer, r.index, lastIndex[r.producer])
			break
		}
		lastIndex[r.producer] = r.index
	}
	expectLen(t, q, 0, 0)
	expectCounter(t, c, 0, 0)
	if q.Waiting() != 0 {
		t.Errorf("Waiting = %d after every consumer left", q.Waiting())
	}
}

func TestPushAcknowledgesBeforeDelivering(t *testing.T) {
	q := queue.New("", nil)
	var events []string
	w := &recordingWaiter{deliver: func(m *queue.Message) { events = append(events, fmt.Sprintf("delivered %d", m.Seq)) }}
	if m := q.PopOrWait(w); m != nil {
		t.Fatal("empty queue returned a message")
	}
	q.Push(&queue.Message{FD: -1, Size: 1}, func(seq uint64) { events = append(events, fmt.Sprintf("stored %d", seq)) })
	if want := []string{"stored 1", "delivered 1"}; fmt.Sprint(events) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", events, want)
	}
}

type recordingWaiter struct{ deliver func(*queue.Message) }

func (r *recordingWaiter) Deliver(_ *queue.Queue, m *queue.Message) queue.Delivery {
	r.deliver(m)
	return queue.Delivered
}

// TestCounterCountsPages checks that the counter learns how many of the
// messages held are pages, the descriptors a server must budget for.
func TestCounterCountsPages(t *testing.T) {
	var c counter
	q := queue.New("q", &c)
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC) // any descriptor stands for a page
	if err != nil {
		t.Fatal(err)
	}
	q.Push(&queue.Message{Size: 10, FD: -1}, nil)
	q.Push(&queue.Message{Size: 4096, FD: fd}, nil)
	if c.messages != 2 || c.pages != 1 || c.bytes != 4106 {
		t.Fatalf("after an inline message and a page: %d messages, %d pages, %d bytes", c.messages, c.pages, c.bytes)
	}
	q.Pop().Release()
	if c.pages != 1 {
		t.Fatalf("after popping the inline message: %d pages, want 1", c.pages)
	}
	q.Drain()
	if c.messages != 0 || c.pages != 0 || c.bytes != 0 {
		t.Fatalf("after Drain: %d messages, %d pages, %d bytes", c.messages, c.pages, c.bytes)
	}
}

func TestPages(t *testing.T) {
	q := queue.New("", nil)
	if n := q.Pages(); n != 0 {
		t.Fatalf("empty queue: %d pages", n)
	}
	q.Push(inline("a", 1), nil)
	q.Push(&queue.Message{FD: newPageFD(t, []byte("p")), Size: 1}, nil)
	q.Push(inline("b", 1), nil)
	q.Pop() // the ring's head moves: Pages must follow it
	q.Push(&queue.Message{FD: newPageFD(t, []byte("q")), Size: 1}, nil)
	if n := q.Pages(); n != 2 {
		t.Errorf("Pages = %d, want 2", n)
	}
	q.Drain()
}
