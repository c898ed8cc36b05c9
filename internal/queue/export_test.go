package queue

import "time"

// FireDelayed makes every delayed message of q due now and runs m's timer
// function, as if m's timer fired first of several due together.
func (q *Queue) FireDelayed(m *Message) {
	q.mu.Lock()
	for o, d := range q.delayed {
		d.due = time.Now()
		q.delayed[o] = d
	}
	q.mu.Unlock()
	q.undelay(m)
}
