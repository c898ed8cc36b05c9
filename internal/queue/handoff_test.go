package queue_test

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/quota"
	"github.com/machq/machq/internal/wire"
)

// fullCounter is a queue.Counter keeping every total, in line and out.
type fullCounter struct {
	mu                          sync.Mutex
	messages, pages, bytes      int64
	outMessages, outPages, outB int64
}

func (c *fullCounter) Add(messages, pages, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.messages += messages
	c.pages += pages
	c.bytes += bytes
}

func (c *fullCounter) AddOut(messages, pages, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.outMessages += messages
	c.outPages += pages
	c.outB += bytes
}

// held returns what c counts as held, in line and out of line together.
func (c *fullCounter) held() [3]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return [3]int64{c.messages + c.outMessages, c.pages + c.outPages, c.bytes + c.outB}
}

// store pushes a message holding data into q, as a page or inline,
// charged to uid's account in l as a server charges what it accepts.
func store(t *testing.T, q *queue.Queue, l *quota.Ledger, uid uint32, data string, asPage bool) uint64 {
	t.Helper()
	m := &queue.Message{FD: -1, Size: int64(len(data)), Digest: "d-" + data, DigestAlg: 2}
	if asPage {
		m.FD = newPageFD(t, []byte(data))
	} else {
		m.Inline = []byte(data)
	}
	acct := l.Account(uid)
	if err := acct.Hold(m.Size, asPage); err != nil {
		t.Fatal(err)
	}
	m.Charge = acct
	return q.Push(m, nil)
}

// acquire returns the queue called name of r, created by creator.
func acquire(t *testing.T, r *queue.Registry, name string, creator uint32, owned bool) *queue.Queue {
	t.Helper()
	q, err := r.Acquire([]byte(name), creator, owned)
	if err != nil {
		t.Fatal(err)
	}
	r.Release(q)
	return q
}

// contents returns the bytes of a saved payload.
func contents(t *testing.T, p queue.SavedPayload) []byte {
	t.Helper()
	if p.FD < 0 {
		return p.Inline
	}
	b := make([]byte, p.Size)
	if n, err := page.ReadAt(p.FD, b, 0); err != nil || int64(n) != p.Size {
		t.Fatalf("read page %d: %d bytes, %v", p.FD, n, err)
	}
	return b
}

// comparable returns sv with every payload's descriptor replaced by the
// payload's bytes, for comparing two Saved whose descriptors differ.
func comparable(t *testing.T, sv queue.Saved) queue.Saved {
	t.Helper()
	out := queue.Saved{Queues: sv.Queues}
	for _, p := range sv.Payloads {
		b := contents(t, p)
		if p.FD >= 0 {
			p.FD = 1 // a page
		}
		p.Inline = append([]byte{}, b...)
		out.Payloads = append(out.Payloads, p)
	}
	return out
}

// dupPayloads replaces the descriptors of sv's pages with duplicates, as
// a successor receives them: the original registry keeps its own.
func dupPayloads(t *testing.T, sv *queue.Saved) []int {
	t.Helper()
	ps := append([]queue.SavedPayload(nil), sv.Payloads...)
	var fds []int
	for i, p := range ps {
		if p.FD < 0 {
			continue
		}
		fd, err := unix.FcntlInt(uintptr(p.FD), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		ps[i].FD = fd
		fds = append(fds, fd)
	}
	sv.Payloads = ps
	return fds
}

// popAll takes every message of q plainly.
func popAll(q *queue.Queue) []*queue.Message {
	var ms []*queue.Message
	for m := q.Pop(); m != nil; m = q.Pop() {
		ms = append(ms, m)
	}
	return ms
}

func savedSeqs(ms []queue.SavedMessage) []uint64 {
	var s []uint64
	for _, m := range ms {
		s = append(s, m.Seq)
	}
	return s
}

// usage returns what uid holds in l: messages, bytes, pages.
func usage(l *quota.Ledger, uid uint32) [3]int64 {
	u := l.Account(uid).Usage()
	return [3]int64{u.Messages, u.Bytes, u.Pages}
}

func TestSaveLoad(t *testing.T) {
	c1 := &fullCounter{}
	l1 := quota.New(quota.Config{})
	r1 := queue.NewRegistry(c1, 0, 0)

	// mixed: inline and page messages; 1 NAKed back in place, 2 NAKed
	// with a long delay, 5 taken, so its next number is past its line.
	mixed := acquire(t, r1, "mixed", 10, false)
	store(t, mixed, l1, 100, "inline one", false)
	store(t, mixed, l1, 100, "page two", true)
	store(t, mixed, l1, 101, "inline three", false)
	store(t, mixed, l1, 101, "page four", true)
	first, second := mixed.Pop(), mixed.Pop()
	mixed.Hold(first)
	mixed.Hold(second)
	first.Note = "not yet"
	mixed.Return(first, true)
	second.Note = "later"
	mixed.Delay(second, time.Hour, true)
	store(t, mixed, l1, 100, "taken", false)
	if taken := popAll(mixed); len(taken) != 4 || taken[3].Seq != 5 {
		t.Fatalf("took %d messages", len(taken))
	} else {
		// Put 1, 3 and 4 back at their places; 5 is gone.
		for i := 2; i >= 0; i-- {
			mixed.Requeue(taken[i])
		}
		taken[3].Release()
	}
	if n, _ := mixed.Len(); n != 3 {
		t.Fatalf("mixed holds %d in line", n)
	}
	if _, delayed := mixed.Out(); delayed != 1 {
		t.Fatalf("mixed has %d delayed", delayed)
	}

	// owned: a policy and an owner.
	owned := acquire(t, r1, "owned", 20, true)
	owned.SetPolicy(queue.Policy{MaxDeliveries: 3, LeaseMillis: 1500})
	store(t, owned, l1, 20, "owned page", true)

	// fan: two groups holding views of one payload each; a has acked 1,
	// taken 2 plainly and dead-lettered 3 into fan.dlq, while b still
	// holds views of every one.
	if _, err := r1.CreateGroup([]byte("fan"), "a", 31, false); err != nil {
		t.Fatal(err)
	}
	if _, err := r1.CreateGroup([]byte("fan"), "b", 32, false); err != nil {
		t.Fatal(err)
	}
	fan := acquire(t, r1, "fan", 30, false)
	store(t, fan, l1, 40, "fan page one", true)
	store(t, fan, l1, 40, "fan inline two", false)
	store(t, fan, l1, 41, "fan page three", true)
	store(t, fan, l1, 41, "fan inline four", false)
	ga, gb := fan.Group("a"), fan.Group("b")
	m := ga.Pop()
	ga.Hold(m)
	ga.Settle(m)
	m.Release()
	ga.Pop().Release()
	dead := ga.Pop()
	ga.Hold(dead)
	ga.Return(dead, true)
	if dead = ga.Pop(); dead.Seq != 3 {
		t.Fatalf("group a took %d after a NAK of 3", dead.Seq)
	}
	ga.Hold(dead) // its second delivery
	ga.TakeOut(dead)
	dead.Dead, dead.Note, dead.Group = wire.DeadTerm, "bad input", "a"
	dead.DiedAfter, dead.Deliveries = dead.Deliveries, 0
	dlq := acquire(t, r1, "fan.dlq", 30, false)
	dlq.Append(dead)
	b1, b2 := gb.Pop(), gb.Pop()
	for _, m := range []*queue.Message{b2, b1} {
		gb.Hold(m)
		m.Note = "nak"
		gb.Return(m, true)
	}
	// An empty queue is saved too.
	acquire(t, r1, "empty", 50, true)

	before := c1.held()
	var uids = []uint32{20, 40, 41, 100, 101}
	accounts := make(map[uint32][3]int64)
	for _, uid := range uids {
		accounts[uid] = usage(l1, uid)
	}

	sv := r1.Save(func(*queue.Queue) bool { return true })

	// What Save described.
	var names []string
	for _, q := range sv.Queues {
		names = append(names, q.Name)
	}
	if want := []string{"empty", "fan", "fan.dlq", "mixed", "owned"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("saved queues %q, want %q", names, want)
	}
	qs := make(map[string]queue.SavedQueue)
	for _, q := range sv.Queues {
		qs[q.Name] = q
	}
	if got := savedSeqs(qs["mixed"].Messages); !reflect.DeepEqual(got, []uint64{1, 2, 3, 4}) {
		t.Fatalf("mixed saved %v, want 1 2 3 4 (the delayed one in its place)", got)
	}
	if d := qs["mixed"].Messages[1]; d.Note != "later" || d.Deliveries != 1 {
		t.Errorf("the delayed message saved as %+v", d)
	}
	if qs["mixed"].NextSeq != 6 {
		t.Errorf("mixed NextSeq %d, want 6", qs["mixed"].NextSeq)
	}
	if o := qs["owned"]; !o.Owned || o.Creator != 20 || o.Policy != (queue.Policy{MaxDeliveries: 3, LeaseMillis: 1500}) {
		t.Errorf("owned saved as %+v", o)
	}
	f := qs["fan"]
	if len(f.Messages) != 0 || len(f.Groups) != 2 || f.Groups[0].Name != "a" || f.Groups[1].Name != "b" || f.Groups[0].Creator != 31 || f.Groups[1].Creator != 32 {
		t.Fatalf("fan saved as %+v", f)
	}
	if got := savedSeqs(f.Groups[0].Views); !reflect.DeepEqual(got, []uint64{4}) {
		t.Errorf("group a saved %v", got)
	}
	if got := savedSeqs(f.Groups[1].Views); !reflect.DeepEqual(got, []uint64{1, 2, 3, 4}) {
		t.Errorf("group b saved %v", got)
	}
	if f.Groups[0].Views[0].Payload != f.Groups[1].Views[3].Payload {
		t.Error("the views of message 4 were saved with two payloads")
	}
	d := qs["fan.dlq"].Messages
	if len(d) != 1 || d[0].Payload != f.Groups[1].Views[2].Payload {
		t.Fatalf("the dead letter saved as %+v, not sharing b's view's payload", d)
	}
	if want := (queue.SavedMessage{Payload: d[0].Payload, Seq: 3, Dead: wire.DeadTerm, Note: "bad input", Group: "a", DiedAfter: 2}); d[0] != want {
		t.Errorf("the dead letter saved as %+v, want %+v", d[0], want)
	}
	// 4 of mixed, 1 of owned, 4 of fan (each once).
	if len(sv.Payloads) != 9 {
		t.Errorf("%d payloads saved, want 9", len(sv.Payloads))
	}

	// Load into a fresh registry, charging a fresh ledger.
	c2 := &fullCounter{}
	l2 := quota.New(quota.Config{})
	r2 := queue.NewRegistry(c2, 0, 0)
	loadFDs := dupPayloads(t, &sv)
	if err := r2.Load(sv, l2.Account); err != nil {
		t.Fatal(err)
	}
	if got := c2.held(); got != before {
		t.Errorf("loaded counter %v, original %v (messages, pages, bytes)", got, before)
	}
	for _, uid := range uids {
		if got := usage(l2, uid); got != accounts[uid] {
			t.Errorf("uid %d: loaded account %v, original %v (messages, bytes, pages)", uid, got, accounts[uid])
		}
	}

	// The loaded registry saves the same description: the same queues,
	// lines, sequence numbers, fields, owners, policies, and payloads
	// shared by the same messages.
	sv2 := r2.Save(func(*queue.Queue) bool { return true })
	for i, p := range sv2.Payloads {
		if p.FD >= 0 && sv.Payloads[i].FD != p.FD {
			t.Errorf("payload %d: loaded page %d, given %d", i, p.FD, sv.Payloads[i].FD)
		}
	}
	orig := r1.Save(func(*queue.Queue) bool { return true })
	// A dead-letter queue numbers its own stores apart from the numbers
	// its dead letters keep from their queue; loaded, as recovered from
	// a log, its next number passes theirs.
	if q := &orig.Queues[2]; q.Name != "fan.dlq" || q.NextSeq != 1 {
		t.Fatalf("original %s NextSeq %d", q.Name, q.NextSeq)
	} else {
		q.NextSeq = 4
	}
	if a, b := comparable(t, orig), comparable(t, sv2); !reflect.DeepEqual(a, b) {
		t.Errorf("loaded registry saves\n%+v\nthe original\n%+v", b, a)
	}

	// The views of one payload share one descriptor.
	lfan := r2.Lookup([]byte("fan"))
	lb := popAll(lfan.Group("b"))
	la := popAll(lfan.Group("a"))
	ldlq := popAll(r2.Lookup([]byte("fan.dlq")))
	if len(la) != 1 || len(lb) != 4 || len(ldlq) != 1 {
		t.Fatalf("loaded a %d, b %d, dead letters %d", len(la), len(lb), len(ldlq))
	}
	if la[0].FD != -1 || string(la[0].Inline) != "fan inline four" || &la[0].Inline[0] != &lb[3].Inline[0] {
		t.Error("the inline views of message 4 do not share their bytes")
	}
	if lb[2].FD < 0 || ldlq[0].FD != lb[2].FD {
		t.Errorf("the dead letter's page %d, b's view's %d: not one descriptor", ldlq[0].FD, lb[2].FD)
	}
	if lb[0].Deliveries != 1 || lb[0].Note != "nak" || lb[1].Deliveries != 1 || lb[2].Note != "" || lb[2].Deliveries != 0 {
		t.Errorf("b's views loaded as %+v, %+v", lb[0], lb[2])
	}
	if dl := ldlq[0]; dl.Dead != wire.DeadTerm || dl.Note != "bad input" || dl.Group != "a" || dl.DiedAfter != 2 || dl.Deliveries != 0 || dl.Seq != 3 {
		t.Errorf("the dead letter loaded as %+v", dl)
	}
	pageThree := lb[2].FD
	// b releasing its view keeps the page for the dead letter.
	lb[2].Release()
	if !fdOpen(t, pageThree) {
		t.Fatal("the page was closed while the dead letter holds it")
	}
	ldlq[0].Release()
	if fdOpen(t, pageThree) {
		t.Fatal("the page is open after its last view was released")
	}
	for _, m := range append(append(la, lb[:2]...), lb[3]) {
		m.Release()
	}

	// New stores get the next sequence numbers.
	if seq := store(t, r2.Lookup([]byte("mixed")), l2, 100, "new", false); seq != 6 {
		t.Errorf("a new message in mixed got %d, want 6", seq)
	}
	if seq := store(t, lfan, l2, 100, "new", false); seq != 5 {
		t.Errorf("a new message in fan got %d, want 5", seq)
	}
	if got := popAll(lfan.Group("a")); len(got) != 1 || got[0].Seq != 5 {
		t.Errorf("group a after loading got %d new messages", len(got))
	} else {
		got[0].Release()
	}
	lo := r2.Lookup([]byte("owned"))
	if uid, ok := lo.Owner(); !ok || uid != 20 || lo.Policy() != (queue.Policy{MaxDeliveries: 3, LeaseMillis: 1500}) {
		t.Errorf("owned loaded with owner %d %v, policy %+v", uid, ok, lo.Policy())
	}

	// Everything freed: nothing counted or charged, every page closed.
	r1.DrainAll()
	r2.DrainAll()
	for _, q := range []*queue.Queue{mixed, fan} {
		if p, d := q.Out(); p != 0 || d != 0 {
			t.Errorf("%s still has %d pending, %d delayed", q.Name(), p, d)
		}
	}
	for _, c := range []*fullCounter{c1, c2} {
		if got := c.held(); got != [3]int64{} {
			t.Errorf("counter after draining: %v", got)
		}
	}
	for _, l := range []*quota.Ledger{l1, l2} {
		if u := l.Total(); u.Messages != 0 || u.Bytes != 0 || u.Pages != 0 {
			t.Errorf("ledger after draining: %+v", u)
		}
	}
	for _, fd := range loadFDs {
		if fdOpen(t, fd) {
			t.Errorf("page %d still open after draining", fd)
		}
	}
}

// TestLoadPayloadBytes checks that every payload loads with its bytes.
func TestLoadPayloadBytes(t *testing.T) {
	r1 := queue.NewRegistry(nil, 0, 0)
	l := quota.New(quota.Config{})
	q := acquire(t, r1, "q", 1, false)
	want := []string{"a", strings.Repeat("p", 70000), "", "page"}
	for i, s := range want {
		store(t, q, l, 1, s, i%2 == 1)
	}
	sv := r1.Save(func(*queue.Queue) bool { return true })
	dupPayloads(t, &sv)
	r2 := queue.NewRegistry(nil, 0, 0)
	if err := r2.Load(sv, l.Account); err != nil {
		t.Fatal(err)
	}
	for i, m := range popAll(r2.Lookup([]byte("q"))) {
		b := m.Inline
		if m.FD >= 0 {
			b = contents(t, queue.SavedPayload{FD: m.FD, Size: m.Size})
		}
		if !bytes.Equal(b, []byte(want[i])) || m.Digest != "d-"+want[i] || m.DigestAlg != 2 {
			t.Errorf("message %d: %d bytes, digest %q", i, len(b), m.Digest)
		}
		m.Release()
	}
	r1.DrainAll()
}

// TestLoadDeadLettersOfOneMessage loads a dead-letter queue holding the
// dead letters of one message from two groups: two views of one
// payload in a queue's own line.
func TestLoadDeadLettersOfOneMessage(t *testing.T) {
	c := &fullCounter{}
	l := quota.New(quota.Config{})
	fd := newPageFD(t, []byte("twice dead"))
	sv := queue.Saved{
		Payloads: []queue.SavedPayload{{FD: fd, Size: 10, Charged: true, UID: 7}},
		Queues: []queue.SavedQueue{{Name: "q.dlq", NextSeq: 1, Messages: []queue.SavedMessage{
			{Payload: 0, Seq: 4, Dead: wire.DeadTerm, Group: "a"},
			{Payload: 0, Seq: 4, Dead: wire.DeadMaxDeliveries, Group: "b"},
		}}},
	}
	r := queue.NewRegistry(c, 0, 0)
	if err := r.Load(sv, l.Account); err != nil {
		t.Fatal(err)
	}
	// One message's bytes and page, one more message for the second view.
	if got, want := usage(l, 7), [3]int64{2, 10, 1}; got != want {
		t.Errorf("account %v, want %v", got, want)
	}
	if got, want := c.held(), [3]int64{1, 1, 10}; got != want {
		t.Errorf("counter %v, want %v", got, want)
	}
	ms := popAll(r.Lookup([]byte("q.dlq")))
	if len(ms) != 2 || ms[0].FD != fd || ms[1].FD != fd || ms[0].Group != "a" || ms[1].Group != "b" {
		t.Fatalf("loaded %+v", ms)
	}
	ms[0].Release()
	if !fdOpen(t, fd) {
		t.Fatal("the page was closed with a view left")
	}
	ms[1].Release()
	if fdOpen(t, fd) {
		t.Fatal("the page is open after both views were released")
	}
	if got := usage(l, 7); got != [3]int64{} {
		t.Errorf("account after release %v", got)
	}
	if got := c.held(); got != [3]int64{} {
		t.Errorf("counter after release %v", got)
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		// bad makes the second queue's message, naming payload 1, wrong.
		bad  func(sv *queue.Saved)
		max  int // the registry's queue limit
		want string
	}{
		{"payload out of range", func(sv *queue.Saved) { sv.Queues[1].Messages[0].Payload = 3 }, 0, "names payload 3 of 3"},
		{"negative payload", func(sv *queue.Saved) { sv.Queues[1].Messages[0].Payload = -1 }, 0, "names payload -1"},
		{"inline size", func(sv *queue.Saved) { sv.Queues[1].Messages[0].Payload = 2 }, 0, "2 inline bytes for a size of 5"},
		{"group view out of range", func(sv *queue.Saved) {
			sv.Queues[1].Messages = nil
			sv.Queues[1].Groups = []queue.SavedGroup{{Name: "g", Views: []queue.SavedMessage{{Payload: 9, Seq: 2}}}}
		}, 0, "group g"},
		{"too many queues", func(*queue.Saved) {}, 1, queue.ErrTooManyQueues.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &fullCounter{}
			l := quota.New(quota.Config{})
			loaded := newPageFD(t, []byte("loaded"))
			notLoaded := newPageFD(t, []byte("not loaded"))
			sv := queue.Saved{
				Payloads: []queue.SavedPayload{
					{FD: loaded, Size: 6, Charged: true, UID: 1},
					{FD: notLoaded, Size: 10, Charged: true, UID: 1},
					{FD: -1, Inline: []byte("ab"), Size: 5},
				},
				Queues: []queue.SavedQueue{
					{Name: "a", NextSeq: 2, Messages: []queue.SavedMessage{{Payload: 0, Seq: 1}}},
					{Name: "b", NextSeq: 2, Messages: []queue.SavedMessage{{Payload: 1, Seq: 1}}},
				},
			}
			tc.bad(&sv)
			r := queue.NewRegistry(c, tc.max, 0)
			err := r.Load(sv, l.Account)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "queue b") {
				t.Fatalf("Load: %v, want an error about queue b saying %q", err, tc.want)
			}
			if tc.max > 0 && !errors.Is(err, queue.ErrTooManyQueues) {
				t.Errorf("Load: %v does not wrap ErrTooManyQueues", err)
			}
			if fdOpen(t, notLoaded) {
				unix.Close(notLoaded)
				t.Error("the page of the queue not loaded is still open")
			}
			// The queue loaded stays, with its page.
			if !fdOpen(t, loaded) {
				t.Fatal("the page of the queue loaded was closed")
			}
			a := r.Lookup([]byte("a"))
			if a == nil {
				t.Fatal("queue a, loaded before the error, is gone")
			}
			if n, _ := a.Len(); n != 1 {
				t.Errorf("queue a holds %d", n)
			}
			if got := usage(l, 1); got != [3]int64{1, 6, 1} {
				t.Errorf("charged %v, want what queue a holds", got)
			}
			r.DrainAll()
			if fdOpen(t, loaded) {
				t.Error("the loaded page is open after draining")
			}
			if got := c.held(); got != [3]int64{} {
				t.Errorf("counter after draining %v", got)
			}
		})
	}
}

// TestSaveLoadRemembersRemovedQueues: a queue removed while idle comes
// back after a handoff as it would have before (its sequence numbers go
// on, its settings stay), and a queue created anew starts above every
// number given before.
func TestSaveLoadRemembersRemovedQueues(t *testing.T) {
	l := quota.New(quota.Config{})
	r1 := queue.NewRegistry(nil, 0, 0)
	q := acquire(t, r1, "idle", 7, false)
	q.SetPolicy(queue.Policy{MaxDeliveries: 3})
	for range 5 {
		store(t, q, l, 7, "x", false)
	}
	for _, m := range popAll(q) {
		m.Release()
	}
	r1.Snapshot() // sweeps the idle queue, remembering it
	if r1.Lookup([]byte("idle")) != nil {
		t.Fatal("the idle queue was not removed")
	}
	sv := r1.Save(func(*queue.Queue) bool { return true })
	if len(sv.Removed) != 1 || sv.Removed[0].NextSeq != 6 || sv.NextStart < 1 {
		t.Fatalf("saved removed queues %+v, next start %d", sv.Removed, sv.NextStart)
	}
	r2 := queue.NewRegistry(nil, 0, 0)
	if err := r2.Load(sv, l.Account); err != nil {
		t.Fatal(err)
	}
	back := acquire(t, r2, "idle", 7, false)
	if seq := store(t, back, l, 7, "y", false); seq != 6 {
		t.Errorf("the remembered queue's next message got seq %d, want 6", seq)
	}
	if p := back.Policy(); p.MaxDeliveries != 3 {
		t.Errorf("the remembered queue's settings %+v, want max deliveries 3", p)
	}
}
