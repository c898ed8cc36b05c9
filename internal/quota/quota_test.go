package quota_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/machq/machq/internal/quota"
)

func TestHoldRefusesPastEachLimit(t *testing.T) {
	l := quota.New(quota.Config{
		Total:       quota.Limits{Messages: 10, Bytes: 1000, Pages: 4, Waiting: 3},
		PerUID:      quota.Limits{Messages: 5, Bytes: 600, Pages: 3, Waiting: 2},
		Descriptors: 100,
	})
	a, b := l.Account(1), l.Account(2)
	kind := func(err error) quota.Kind {
		var e *quota.Exceeded
		if !errors.As(err, &e) {
			t.Fatalf("error %v is not an *Exceeded", err)
		}
		return e.Kind
	}
	if err := a.Hold(500, false); err != nil {
		t.Fatal(err)
	}
	if k := kind(a.Hold(101, false)); k != quota.UIDBytes {
		t.Errorf("uid byte limit: kind %d", k)
	}
	if err := b.Hold(500, false); err != nil {
		t.Fatal(err)
	}
	if k := kind(b.Hold(1, false)); k != quota.TotalBytes {
		t.Errorf("total byte limit: kind %d", k)
	}
	// A refused charge charged nothing.
	if u := l.Total(); u.Messages != 2 || u.Bytes != 1000 {
		t.Errorf("totals after refusals = %+v, want 2 messages, 1000 bytes", u)
	}
	a.Unhold(500, false)
	for range 3 {
		if err := a.Hold(0, true); err != nil {
			t.Fatal(err)
		}
	}
	if k := kind(a.Hold(0, true)); k != quota.UIDPages {
		t.Errorf("uid page limit: kind %d", k)
	}
	if err := b.Hold(0, true); err != nil {
		t.Fatal(err)
	}
	if k := kind(b.Hold(0, true)); k != quota.TotalPages {
		t.Errorf("total page limit: kind %d", k)
	}
	if used, _ := l.DescriptorsUsed(); used != 4 {
		t.Errorf("descriptors used = %d, want the 4 pages", used)
	}
	if err := a.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := a.Wait(); err != nil {
		t.Fatal(err)
	}
	if k := kind(a.Wait()); k != quota.UIDWaiting {
		t.Errorf("uid waiting limit: kind %d", k)
	}
	if err := b.Wait(); err != nil {
		t.Fatal(err)
	}
	if k := kind(b.Wait()); k != quota.TotalWaiting {
		t.Errorf("total waiting limit: kind %d", k)
	}
}

func TestDescriptorsShareOneBudget(t *testing.T) {
	l := quota.New(quota.Config{Descriptors: 10, ConnectionDescriptors: 3})
	a := l.Account(7)
	for range 3 {
		if err := a.Connect(); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Hold(1, true); err != nil {
		t.Fatalf("the tenth descriptor: %v", err)
	}
	var e *quota.Exceeded
	if err := a.Connect(); !errors.As(err, &e) || e.Kind != quota.Descriptors {
		t.Errorf("a connection past the budget: %v", err)
	}
	if err := a.Hold(1, true); !errors.As(err, &e) || e.Kind != quota.Descriptors {
		t.Errorf("a page past the budget: %v", err)
	}
	if err := a.Hold(1, false); err != nil {
		t.Errorf("an inline message takes no descriptor, refused: %v", err)
	}
	a.Disconnect()
	if err := a.Connect(); err != nil {
		t.Errorf("after a disconnect: %v", err)
	}
	if a.Connections() != 3 {
		t.Errorf("Connections = %d, want 3", a.Connections())
	}
}

// TestDescriptorsPerUID: one user's pages and connections take at most
// its share of the descriptors, and another user still gets the rest.
func TestDescriptorsPerUID(t *testing.T) {
	l := quota.New(quota.Config{Descriptors: 12, DescriptorsPerUID: 7, ConnectionDescriptors: 3})
	a, b := l.Account(7), l.Account(8)
	for range 2 {
		if err := a.Connect(); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Hold(1, true); err != nil {
		t.Fatalf("uid 7's seventh descriptor: %v", err)
	}
	var e *quota.Exceeded
	if err := a.Connect(); !errors.As(err, &e) || e.Kind != quota.UIDDescriptors || e.UID != 7 || !e.PerUID() {
		t.Errorf("a connection past uid 7's share: %v", err)
	}
	if err := a.Hold(1, true); !errors.As(err, &e) || e.Kind != quota.UIDDescriptors {
		t.Errorf("a page past uid 7's share: %v", err)
	}
	if err := b.Connect(); err != nil {
		t.Errorf("uid 8 locked out by uid 7: %v", err)
	}
	if u := a.Usage(); u.Descriptors != 7 {
		t.Errorf("uid 7's descriptors = %d, want 7", u.Descriptors)
	}
	if u := l.Total(); u.Descriptors != 10 {
		t.Errorf("total descriptors = %d, want 10", u.Descriptors)
	}
	a.Unhold(1, true)
	a.Disconnect()
	if u := a.Usage(); u.Descriptors != 3 {
		t.Errorf("after a page and a connection went, uid 7's descriptors = %d, want 3", u.Descriptors)
	}
	if used, _ := l.DescriptorsUsed(); used != 6 {
		t.Errorf("descriptors used = %d, want 6", used)
	}
}

// TestConcurrentHoldsNeverPassALimit charges from many goroutines at once:
// the limit is never passed and every charge is discharged.
func TestConcurrentHoldsNeverPassALimit(t *testing.T) {
	const limit = 50
	l := quota.New(quota.Config{Total: quota.Limits{Messages: limit}})
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := int64(0)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := l.Account(uint32(i))
			for range 2000 {
				if a.Hold(1, false) == nil {
					mu.Lock()
					peak = max(peak, l.Total().Messages)
					mu.Unlock()
					a.Unhold(1, false)
				}
			}
		}()
	}
	wg.Wait()
	if peak > limit {
		t.Errorf("%d messages held at once, limit %d", peak, limit)
	}
	if u := l.Total(); u != (quota.Usage{}) {
		t.Errorf("after every discharge the totals are %+v", u)
	}
	if len(l.Users()) != 0 {
		t.Errorf("Users lists %d users holding nothing", len(l.Users()))
	}
}
