package durable

import "context"

// The blocking operations the tests drive the store with: each appends
// and waits, as a server does in two steps (Append, then WaitCommitted
// before it answers).

// write appends ops in order and waits until they are committed, as a
// server does before it answers.
func (s *Store) write(ctx context.Context, ops ...Op) error {
	lsn, err := s.Append(ops...)
	if err != nil || len(ops) == 0 {
		return err
	}
	return s.WaitCommitted(ctx, lsn)
}

// Store records message id of queue, returning once it is committed. The
// store keeps payload and a's slices (to copy them forward): the caller
// must not change them.
func (s *Store) Store(ctx context.Context, queue string, id uint64, deliveries uint32, a Attrs, payload []byte) error {
	if err := s.Room(int64(len(payload))); err != nil {
		return err
	}
	return s.write(ctx, Op{Type: TypeStore, Queue: queue, ID: id, Deliveries: deliveries, Attrs: a, Payload: payload})
}

// StoreFile records message id of queue whose payload is the sealed page
// fd of size bytes: the page is copied by the kernel into a payload file
// of the data directory, made durable, and then the record. It returns
// once both are durable. The caller keeps fd.
func (s *Store) StoreFile(ctx context.Context, queue string, id uint64, deliveries uint32, a Attrs, fd int, size int64) error {
	name, err := s.PreparePayload(fd, size)
	if err != nil {
		return err
	}
	lsn, err := s.Append(Op{Type: TypeStore, Queue: queue, ID: id, Deliveries: deliveries, Attrs: a, File: name, Size: size})
	if err != nil {
		s.DiscardPayload(name) // no record names it
		return err
	}
	return s.WaitCommitted(ctx, lsn)
}

// Take records messages of queue gone (retrieved, acknowledged, moved),
// returning once that is committed: they never come back.
func (s *Store) Take(ctx context.Context, queue string, ids ...uint64) error {
	ops := make([]Op, len(ids))
	for i, id := range ids {
		ops[i] = Op{Type: TypeTake, Queue: queue, ID: id}
	}
	return s.write(ctx, ops...)
}

// Deliver records message id of queue handed to a consumer in ack mode.
// It does not wait: a delivery the log lost only means the message comes
// back after a restart without the redelivered mark.
func (s *Store) Deliver(queue string, id uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.appendLocked(Op{Type: TypeDeliver, Queue: queue, ID: id})
	return err
}

// Drop records queue deleted with all its messages.
func (s *Store) Drop(ctx context.Context, queue string) error {
	return s.write(ctx, Op{Type: TypeDrop, Queue: queue})
}

// Purge records every message of queue with an id below below gone.
func (s *Store) Purge(ctx context.Context, queue string, below uint64) error {
	return s.write(ctx, Op{Type: TypePurge, Queue: queue, ID: below})
}
