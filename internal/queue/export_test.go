package queue

import (
	"container/heap"
	"time"
)

// FireDelayed makes every delayed message of q due now and runs m's timer
// function, as if m's timer fired first of several due together.
func (q *Queue) FireDelayed(m *Message) {
	q.mu.Lock()
	for _, d := range q.delayed {
		d.due = time.Now()
	}
	heap.Init(&q.dueOrder)
	q.mu.Unlock()
	q.undelay(m)
}
