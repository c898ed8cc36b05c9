package queue_test

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/queue"
)

// takeAll pops every message of g, holding each in ack mode.
func takeAll(g *queue.Queue) []*queue.Message {
	var out []*queue.Message
	for m := g.Pop(); m != nil; m = g.Pop() {
		g.Hold(m)
		out = append(out, m)
	}
	return out
}

func TestGroupsFanOutOnePayload(t *testing.T) {
	c := &counter{}
	q := queue.New("q", c)
	for _, name := range []string{"a", "b", "c"} {
		if _, err := q.CreateGroup(name, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.CreateGroup("a", false); !errors.Is(err, queue.ErrGroupExists) {
		t.Fatalf("a second group a: %v", err)
	}
	fd := newPageFD(t, []byte("shared page"))
	q.Push(&queue.Message{FD: fd, Size: 11}, nil)
	q.Push(inline("small", 5), nil)
	if n, _ := q.Len(); n != 0 {
		t.Fatalf("the queue's own line holds %d; a queue with groups stores in the groups", n)
	}
	// Counted once, not once per group.
	if c.messages != 2 || c.pages != 1 || c.bytes != 16 {
		t.Fatalf("counter %d messages %d pages %d bytes", c.messages, c.pages, c.bytes)
	}
	var held [][]*queue.Message
	for _, name := range []string{"a", "b", "c"} {
		ms := takeAll(q.Group(name))
		if len(ms) != 2 || ms[0].Seq != 1 || ms[1].Seq != 2 || ms[0].FD != fd {
			t.Fatalf("group %s got %d messages", name, len(ms))
		}
		held = append(held, ms)
	}
	// Two groups acknowledge: the payload stays for the third.
	for _, ms := range held[:2] {
		for _, m := range ms {
			m.Release()
		}
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		t.Fatalf("the page was closed while a group still held it: %v", err)
	}
	if c.messages != 2 {
		t.Fatalf("counter %d messages while one group holds both", c.messages)
	}
	for _, m := range held[2] {
		m.Release()
	}
	if c.messages != 0 || c.pages != 0 || c.bytes != 0 {
		t.Fatalf("after every group: counter %d messages %d pages %d bytes", c.messages, c.pages, c.bytes)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
		t.Fatal("the page is still open after every group released it")
	}
}

func TestGroupFromOldestAdopts(t *testing.T) {
	q := queue.New("q", &counter{})
	q.Push(inline("before", 1), nil) // in the queue's own line
	if _, err := q.CreateGroup("late", false); err != nil {
		t.Fatal(err)
	}
	if n, _ := q.Len(); n != 1 {
		t.Fatal("creating a group from new took the queue's line")
	}
	q.Push(inline("after", 1), nil) // to "late" only
	adopted, err := q.CreateGroup("all", true)
	if err != nil || adopted != 2 {
		t.Fatalf("from oldest adopted %d, %v; want the line's message and late's", adopted, err)
	}
	got := takeAll(q.Group("all"))
	if len(got) != 2 || got[0].Seq != 1 || got[1].Seq != 2 {
		t.Fatalf("group all got %v", got)
	}
	if l := takeAll(q.Group("late")); len(l) != 1 || l[0].Seq != 2 {
		t.Fatalf("group late got %v", l)
	}
}

func TestDeleteGroupFreesItsShare(t *testing.T) {
	r := queue.NewRegistry(&counter{}, 0, 0)
	if _, err := r.CreateGroup([]byte("q"), "a", 1, false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateGroup([]byte("q"), "b", 1, false); err != nil {
		t.Fatal(err)
	}
	q := get(r, []byte("q"))
	q.Push(inline("x", 1), nil)
	q.Push(inline("y", 1), nil)
	pending := q.Group("b").Pop()
	q.Group("b").Hold(pending)
	w := &waiter{accept: true}
	q.Group("a").Pop()
	q.Group("a").Pop()
	q.Group("a").PopOrWait(w)
	freed, pend, waiters, err := r.DeleteGroup([]byte("q"), "b")
	if err != nil || freed != 1 || pend != 1 || len(waiters) != 0 {
		t.Fatalf("delete group b: %d %d %d %v", freed, pend, len(waiters), err)
	}
	if q.Group("b") != nil {
		t.Fatal("group b still exists")
	}
	if _, _, _, err := r.DeleteGroup([]byte("q"), "b"); !errors.Is(err, queue.ErrNoGroup) {
		t.Fatalf("deleting b again: %v", err)
	}
	// The queue with a group is not idle; deleting it answers a's waiter.
	if infos := r.Snapshot(); len(infos) != 1 || len(infos[0].Groups) != 1 || infos[0].Groups[0].Name != "a" {
		t.Fatalf("snapshot %+v", infos)
	}
	_, _, waiters, _, err = r.Delete([]byte("q"), 1)
	if err != nil || len(waiters) != 1 {
		t.Fatalf("delete: %d waiters, %v", len(waiters), err)
	}
}
