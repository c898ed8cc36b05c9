package delivery

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/machq/machq/internal/queue"
)

func entry(token uint64, lease time.Duration) *Entry {
	return &Entry{Token: token, Msg: &queue.Message{FD: -1}, Lease: lease}
}

func TestUnsentCannotBeSettled(t *testing.T) {
	var s Set
	s.Add(entry(1, 0))
	if _, err := s.Settle(1); !errors.Is(err, ErrUnsent) {
		t.Fatalf("settle of an unsent delivery: %v, want ErrUnsent", err)
	}
	if _, err := s.Touch(1); !errors.Is(err, ErrUnsent) {
		t.Fatalf("touch of an unsent delivery: %v, want ErrUnsent", err)
	}
	s.Sending(1, 7, func(*Entry) { t.Error("a delivery without a lease expired") })
	e, err := s.Settle(1)
	if err != nil || e.Token != 1 || e.Batch != 7 {
		t.Fatalf("settle once sending: %+v, %v", e, err)
	}
	if _, err := s.Settle(1); !errors.Is(err, ErrUnknown) {
		t.Fatalf("settle twice: %v, want ErrUnknown", err)
	}
	if s.Len() != 0 {
		t.Fatalf("%d held after settling", s.Len())
	}
}

func TestLeaseExpiresUnlessTouched(t *testing.T) {
	var s Set
	var expired atomic.Pointer[Entry]
	fired := make(chan struct{}, 2)
	expire := func(e *Entry) { expired.Store(e); fired <- struct{}{} }
	s.Add(entry(1, 40*time.Millisecond))
	s.Sending(1, 1, expire)
	// A touch restarts the lease; the timer that had been set finds the
	// delivery renewed (Expire says no).
	if d, err := s.Touch(1); err != nil || d != 40*time.Millisecond {
		t.Fatalf("touch: %s %v", d, err)
	}
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatal("the lease never ran out")
	}
	e := expired.Load()
	if !s.Expire(e) {
		t.Fatal("an expired lease was not taken back")
	}
	if _, err := s.Settle(1); !errors.Is(err, ErrUnknown) {
		t.Fatalf("a late settle after the lease: %v, want ErrUnknown", err)
	}
	if s.Expire(e) {
		t.Fatal("expired twice")
	}
}

func TestRenewedLeaseIsNotExpired(t *testing.T) {
	var s Set
	s.Add(entry(1, time.Hour))
	var got *Entry
	s.Sending(1, 1, func(e *Entry) { got = e })
	e, _ := s.Settle(1)
	// A timer that fires for an entry settled meanwhile finds it gone.
	if s.Expire(e) {
		t.Fatal("a settled delivery expired")
	}
	s.Add(entry(2, time.Hour))
	s.Sending(2, 2, func(*Entry) {})
	e2 := s.byToken[2]
	if s.Expire(e2) {
		t.Fatal("a delivery whose lease has not run out expired")
	}
	s.Renew(e2)
	if len(s.TakeAll()) != 1 || s.Len() != 0 || got != nil {
		t.Fatal("TakeAll")
	}
}

func TestPolicy(t *testing.T) {
	p := Policy{MaxDeliveries: 3, Backoff: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond}
	for deliveries, want := range map[uint32]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 40 * time.Millisecond, 4: 50 * time.Millisecond, 40: 50 * time.Millisecond} {
		if got := p.NakDelay(deliveries, 0); got != want {
			t.Errorf("NakDelay after %d deliveries: %s, want %s", deliveries, got, want)
		}
	}
	if got := p.NakDelay(5, time.Hour); got != time.Hour {
		t.Errorf("an asked-for delay: %s", got)
	}
	if p.Exhausted(&queue.Message{Deliveries: 2}) || !p.Exhausted(&queue.Message{Deliveries: 3}) {
		t.Error("Exhausted")
	}
}

func TestDeadLetterQueueName(t *testing.T) {
	if n, err := DeadLetterQueue("jobs"); err != nil || n != "jobs.dlq" {
		t.Fatalf("%q %v", n, err)
	}
	if _, err := DeadLetterQueue(strings.Repeat("q", MaxAckQueueName)); err != nil {
		t.Fatalf("a name of %d bytes: %v", MaxAckQueueName, err)
	}
	if _, err := DeadLetterQueue(strings.Repeat("q", MaxAckQueueName+1)); err == nil {
		t.Fatal("a name with no room for .dlq was accepted")
	}
}
