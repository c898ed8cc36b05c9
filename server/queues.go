package server

import (
	"errors"
	"fmt"

	"github.com/machq/machq/internal/naming"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/wire"
)

// queueFor returns the queue a request names, held until c.release: the
// private queue for the empty name. Unless create is set, a named queue
// that does not exist is not created: queueFor then returns nil and no
// error. With FlagOwned in flags the request insists on a queue of its
// user's own: a queue it creates is restricted to that user, and an
// existing queue that is not theirs (open, or another user's) is refused
// with FORBIDDEN, so that an owned store can never land in a queue others
// read. A refusal comes with its code.
func (c *conn) queueFor(name []byte, flags uint8, create bool) (*queue.Queue, wire.Code, error) {
	if len(name) == 0 {
		return c.private, 0, nil
	}
	if err := naming.ValidQueueName(name); err != nil {
		return nil, wire.CodeBadQueueName, err
	}
	owned := flags&wire.FlagOwned != 0
	uid := c.acct.UID()
	var q *queue.Queue
	if create {
		var err error
		if q, err = c.s.named.Acquire(name, uid, owned); err == nil && owned {
			c.s.logMeta(q) // a durable queue's owner outlives a restart
		}
		if err != nil {
			lim := &c.s.cfg.Limits
			if errors.Is(err, queue.ErrTooManyQueuesForUID) {
				return nil, wire.CodeLimit, limitError(fmt.Sprintf("cannot create queue %s: uid %d has created too many named queues", name, uid), int64(c.s.named.CreatedBy()[uid]), int64(lim.MaxQueuesPerUID), "max-queues-per-uid", "use fewer queue names, release owned ones (machq disown), or raise the limit")
			}
			return nil, wire.CodeLimit, limitError(fmt.Sprintf("cannot create queue %s: the server holds too many named queues", name), int64(c.s.named.Len()), int64(lim.MaxQueues), "max-queues", "use fewer queue names, or raise the limit")
		}
	} else if q = c.s.named.Lookup(name); q == nil {
		return nil, 0, nil
	}
	owner, isOwned := q.Owner()
	switch {
	case isOwned && c.cred == nil:
		c.s.named.Release(q)
		return nil, wire.CodeForbidden, fmt.Errorf("queue %s belongs to uid %d and this connection's user is unknown", q.Name(), owner)
	case isOwned && uid != owner && (uid != 0 || owned):
		c.s.named.Release(q)
		return nil, wire.CodeForbidden, fmt.Errorf("queue %s belongs to uid %d; only that user (or root) may use it: choose another queue name", q.Name(), owner)
	case owned && !isOwned:
		c.s.named.Release(q)
		return nil, wire.CodeForbidden, fmt.Errorf("queue %s is open to every user, not owned by uid %d as the OWNED flag asks: choose another queue name, or use it without --owned", q.Name(), uid)
	}
	return q, 0, nil
}

// release ends the hold queueFor took on q.
func (c *conn) release(q *queue.Queue) {
	if q != nil && q != c.private && q.GroupName() == "" {
		c.s.named.Release(q)
	}
}

func queueLabel(q *queue.Queue) string {
	switch {
	case q.Name() == "":
		return "(private)"
	case q.GroupName() != "":
		return q.Name() + " (group " + q.GroupName() + ")"
	}
	return q.Name()
}

// handleDisown serves a DISOWN: the owner (or root) gives up an owned
// queue's name. A name no queue has is given up already: that succeeds.
func (c *conn) handleDisown(f wire.Frame) {
	name, err := wire.ParseDisown(f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return
	}
	if err := naming.ValidQueueName(name); err != nil {
		c.sendError(f.ID, wire.CodeBadQueueName, err.Error())
		return
	}
	uid := c.acct.UID()
	switch err := c.s.named.Disown(name, uid); {
	case err == nil, errors.Is(err, queue.ErrNoQueue):
		// No queue: nobody holds the name, which is what was asked.
	case errors.Is(err, queue.ErrNotOwner):
		c.sendError(f.ID, wire.CodeForbidden, fmt.Sprintf("queue %s is not owned by uid %d; only its owner (or root) may disown it", name, uid))
		return
	case errors.Is(err, queue.ErrInUse):
		c.sendError(f.ID, wire.CodeInUse, fmt.Sprintf("queue %s still holds messages or has retrieves waiting on it; retrieve or cancel them, then disown it", name))
		return
	default:
		c.sendError(f.ID, wire.CodeInternal, err.Error())
		return
	}
	if c.info {
		c.log.Info("queue disowned", "queue", string(name))
	}
	c.mu.Lock()
	c.out = wire.AppendDisowned(c.out, f.ID)
	c.durableMark(0) // a durable queue's DROP is on disk before the answer
	c.signal()
	c.mu.Unlock()
}
