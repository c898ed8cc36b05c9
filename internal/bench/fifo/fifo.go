// Package fifo is the first-in first-out queue the benchmark's peers
// (floor, mqueue) keep stored payloads and received descriptors in. It
// reuses its backing array, so a steady stream of push and pop does not
// allocate. It is not safe for concurrent use.
package fifo

// Queue is a first-in first-out queue. The zero value is empty and ready.
type Queue[T any] struct {
	items []T
	head  int
}

// Push adds v at the tail.
func (q *Queue[T]) Push(v T) {
	if q.head >= 64 && q.head*2 >= len(q.items) {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items = q.items[:n]
		q.head = 0
	}
	q.items = append(q.items, v)
}

// Pop removes and returns the oldest item, or false when there is none.
func (q *Queue[T]) Pop() (T, bool) {
	var zero T
	if q.head == len(q.items) {
		return zero, false
	}
	v := q.items[q.head]
	q.items[q.head] = zero
	q.head++
	if q.head == len(q.items) {
		q.items = q.items[:0]
		q.head = 0
	}
	return v, true
}

// Drain removes every item, calling f on each, oldest first.
func (q *Queue[T]) Drain(f func(T)) {
	for {
		v, ok := q.Pop()
		if !ok {
			return
		}
		f(v)
	}
}
