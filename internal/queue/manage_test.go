package queue_test

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/queue"
)

func TestDeleteChecksOwnerAndHolds(t *testing.T) {
	r := queue.NewRegistry(nil, 0, 0)
	q, _ := r.Acquire([]byte("mine"), 1000, true)
	q.Push(inline("m", 3), nil)
	if _, _, _, _, err := r.Delete([]byte("mine"), 1000); !errors.Is(err, queue.ErrInUse) {
		t.Fatalf("delete of a held queue: %v, want ErrInUse", err)
	}
	r.Release(q)
	if _, _, _, _, err := r.Delete([]byte("mine"), 666); !errors.Is(err, queue.ErrNotOwner) {
		t.Fatalf("delete by another user: %v, want ErrNotOwner", err)
	}
	w := &waiter{accept: true}
	freed, pending, waiters, _, err := r.Delete([]byte("mine"), 1000)
	if err != nil || freed != 1 || pending != 0 || len(waiters) != 0 {
		t.Fatalf("delete by the owner: %d %d %v %v", freed, pending, waiters, err)
	}
	if _, _, _, _, err := r.Delete([]byte("mine"), 1000); !errors.Is(err, queue.ErrNoQueue) {
		t.Fatalf("delete of nothing: %v", err)
	}
	// Waiters come back to the caller; a pending message that comes back
	// is freed.
	q2 := get(r, []byte("open"))
	q2.Push(inline("p", 1), nil)
	m := q2.Pop()
	q2.Hold(m)
	q2.PopOrWait(w)
	freed, pending, waiters, _, err = r.Delete([]byte("open"), 5)
	if err != nil || freed != 0 || pending != 1 || len(waiters) != 1 {
		t.Fatalf("delete of an open queue: %d %d %d %v", freed, pending, len(waiters), err)
	}
	if !q2.Discards(m) {
		t.Fatal("a pending message of a deleted queue is not discarded")
	}
	q2.Return(m, false)
	if n, _ := q2.Len(); n != 0 || len(w.got) != 0 {
		t.Fatalf("a message came back into a deleted queue: %d in line, waiter got %d", n, len(w.got))
	}
}

func TestPeekDuplicatesThePage(t *testing.T) {
	q := queue.New("q", nil)
	fd := newPageFD(t, []byte("page"))
	q.Push(&queue.Message{FD: fd, Size: 4}, nil)
	p, ok, err := q.Peek(0)
	if err != nil || !ok || p.FD < 0 || p.FD == fd {
		t.Fatalf("peek: %+v %v %v", p, ok, err)
	}
	if _, ok, _ := q.Peek(1); ok {
		t.Fatal("peeked past the end")
	}
	m := q.Pop()
	m.Release() // the message's own descriptor closed: the copy stays
	buf := make([]byte, 4)
	if n, err := unix.Pread(p.FD, buf, 0); err != nil || string(buf[:n]) != "page" {
		t.Fatalf("the peeked copy after the message was freed: %q %v", buf[:n], err)
	}
	unix.Close(p.FD)
}
