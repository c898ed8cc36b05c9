package fifo

import "testing"

func TestQueueOrderAndReuse(t *testing.T) {
	var q Queue[int]
	if _, ok := q.Pop(); ok {
		t.Fatal("Pop of an empty queue succeeded")
	}
	next, want := 0, 0
	// Interleave so that the head moves far enough to compact.
	for round := range 50 {
		for range 10 + round%7 {
			q.Push(next)
			next++
		}
		for range 8 {
			v, ok := q.Pop()
			if !ok || v != want {
				t.Fatalf("Pop = %d, %v; want %d", v, ok, want)
			}
			want++
		}
	}
	var rest []int
	q.Drain(func(v int) { rest = append(rest, v) })
	for i, v := range rest {
		if v != want+i {
			t.Fatalf("Drain gave %v, want from %d on", rest, want)
		}
	}
	if want+len(rest) != next {
		t.Fatalf("Drain gave %d items, want %d", len(rest), next-want)
	}
	if len(q.items) > 256 {
		t.Errorf("backing array grew to %d for at most %d items held", len(q.items), next-want)
	}
	q.Push(1)
	if allocs := testing.AllocsPerRun(1000, func() { q.Push(2); q.Pop() }); allocs != 0 {
		t.Errorf("steady push and pop: %v allocations, want 0", allocs)
	}
}
