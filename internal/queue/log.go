package queue

// Log records what happens to the messages of a durable queue, in the
// order it happens: the server implements it over its write-ahead log
// (internal/durable). Its methods are called with the queue's lock held,
// before anyone else can see the change, and must not wait for the disk:
// the server holds back the answers that speak of these records until
// they are durable.
type Log interface {
	// Stored: m enters q (a store, a dead letter arriving, a dead letter
	// kicked back). The log names m by setting m.LogID.
	Stored(q *Queue, m *Message)
	// Purged: every message q holds, in line, pending or delayed, is
	// gone.
	Purged(q *Queue)
	// Dropped: q is deleted with what it holds (with its consumer
	// groups), or q is a consumer group, deleted.
	Dropped(q *Queue)
	// GroupCreated: g, a consumer group of a logged queue, was just
	// created (its first views, adopted from the oldest, are Stored
	// next).
	GroupCreated(g *Queue)
	// Left: the message the log names logID left q's own line for the
	// consumer groups of q (a group created from the oldest adopted it),
	// where it is Stored as views.
	Left(q *Queue, logID uint64)
}

// Methods of a logged queue's consumer groups log as a queue's do, each
// group in its own name (GroupName): the views of one message in several
// groups are Stored once per group, and share the payload file of a page
// (Message.LogFile).

// SetLog makes the registry give every queue it creates from now on the
// log logFor returns for its name (nil: the queue is not logged).
func (r *Registry) SetLog(logFor func(name string) Log) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logFor = logFor
}

// Described returns what a log keeps of q besides its messages: the user
// id that created it or owns it, whether it is owned, and its own
// settings (for a consumer group: the user id that created it). It is
// for a Log's methods, which run with q's lock held.
func (q *Queue) Described() (creator uint32, owned bool, p Policy) {
	creator = q.creator
	if q.owner != nil {
		creator, owned = *q.owner, true
	}
	return creator, owned, q.policy
}

// Describe calls f with what Described returns, under q's lock: a log
// that records the description from f records the changes in the order
// they happen.
func (q *Queue) Describe(f func(creator uint32, owned bool, p Policy)) {
	q.mu.Lock()
	defer q.mu.Unlock()
	f(q.Described())
}

// Logged reports whether q's messages are logged.
func (q *Queue) Logged() bool { return q.log != nil }

// Restore puts m, recovered from the log with its sequence number, its
// LogID and its delivery record, at its place in q without logging it
// again; later stores get greater sequence numbers. Messages restored in
// order of sequence number (as recovery gives them) each go to the tail
// at once, in the order given when numbers repeat.
func (q *Queue) Restore(m *Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.nextSeq = max(q.nextSeq, m.Seq+1)
	if q.n == 0 || q.items[(q.head+q.n-1)%len(q.items)].Seq <= m.Seq {
		q.append(m)
		return
	}
	q.place(m, true)
}
