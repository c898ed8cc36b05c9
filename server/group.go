package server

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/machq/machq/internal/delivery"
	"github.com/machq/machq/internal/naming"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/wire"
)

// Consumer groups (protocol version 3): GROUP creates and deletes them;
// an ack-mode RETRIEVE names one to take through it.

// groupFor returns the consumer group called group of the named queue,
// and the queue, held until c.release(parent). A queue or group that does
// not exist is NO_GROUP: groups are created on purpose, never by a
// retrieve.
func (c *conn) groupFor(name, group []byte) (g, parent *queue.Queue, code wire.Code, err error) {
	if len(name) == 0 {
		return nil, nil, wire.CodeBadQueueName, errors.New("a private queue has no consumer groups; name a queue")
	}
	if err := naming.ValidQueueName(group); err != nil {
		return nil, nil, wire.CodeBadQueueName, fmt.Errorf("group name: %w", err)
	}
	parent, code, err = c.queueFor(name, 0, false)
	if err != nil {
		return nil, nil, code, err
	}
	if parent != nil {
		g = parent.Group(string(group))
	}
	if g == nil {
		c.release(parent)
		return nil, nil, wire.CodeNoGroup, fmt.Errorf("queue %s has no consumer group %s; create it first (machq group create --queue %s --group %s)", name, group, name, group)
	}
	return g, parent, 0, nil
}

// groupLimitError says which limit on consumer groups a creation by uid
// on queue passed.
func (c *conn) groupLimitError(name []byte, uid uint32) error {
	lim := &c.s.cfg.Limits
	total, byUID := c.s.named.Groups()
	switch {
	case total >= lim.MaxGroups:
		return limitError("the server holds too many consumer groups", int64(total), int64(lim.MaxGroups), "max-groups", "delete some, or raise the limit")
	case byUID[uid] >= lim.MaxGroupsPerUID:
		return limitError(fmt.Sprintf("uid %d has created too many consumer groups", uid), int64(byUID[uid]), int64(lim.MaxGroupsPerUID), "max-groups-per-uid", "delete some, or raise the limit")
	}
	return limitf("groups-per-queue", "queue %s has %d consumer groups, the most one queue may have; delete some", name, queue.MaxGroups)
}

// handleGroup serves a GROUP: creates or deletes a consumer group.
func (c *conn) handleGroup(f wire.Frame) {
	req, err := wire.ParseGroup(f.Body)
	if err != nil {
		c.sendError(f.ID, wire.CodeBadRequest, err.Error())
		return
	}
	if len(req.Queue) == 0 {
		c.sendError(f.ID, wire.CodeBadQueueName, "a private queue has no consumer groups; name a queue")
		return
	}
	if err := naming.ValidQueueName(req.Group); err != nil {
		c.sendError(f.ID, wire.CodeBadQueueName, "group name: "+err.Error())
		return
	}
	// Groups are read in ack mode, whose queues need room for .dlq.
	if _, err := delivery.DeadLetterQueue(string(req.Queue)); err != nil {
		c.sendError(f.ID, wire.CodeBadQueueName, err.Error())
		return
	}
	var res wire.Grouped
	switch req.Action {
	case wire.GroupCreate, wire.GroupCreateFromOldest:
		q, code, err := c.queueFor(req.Queue, f.Flags&wire.FlagOwned, true)
		if err != nil {
			c.fail(f.ID, code, err)
			return
		}
		uid := c.acct.UID()
		adopted, err := c.s.named.AddGroup(q, string(req.Group), uid, req.Action == wire.GroupCreateFromOldest)
		c.release(q)
		switch {
		case errors.Is(err, queue.ErrGroupExists):
		case errors.Is(err, queue.ErrTooManyGroups):
			c.fail(f.ID, wire.CodeLimit, c.groupLimitError(req.Queue, uid))
			return
		case err != nil:
			c.sendError(f.ID, wire.CodeInternal, err.Error())
			return
		default:
			res = wire.Grouped{Changed: true, Count: uint64(adopted)}
			c.log.Info("consumer group created", "queue", string(req.Queue), "group", string(req.Group), "adopted", adopted)
		}
	case wire.GroupDelete:
		q, code, err := c.queueFor(req.Queue, 0, false)
		if err != nil {
			c.fail(f.ID, code, err)
			return
		}
		if q == nil {
			break // no queue, no group: deleted already
		}
		c.release(q)
		var freed, pending int
		var waiters []queue.Waiter
		for range deleteAttempts {
			freed, pending, waiters, err = c.s.named.DeleteGroup(req.Queue, string(req.Group))
			if !errors.Is(err, queue.ErrInUse) {
				break
			}
			runtime.Gosched()
		}
		switch {
		case errors.Is(err, queue.ErrNoQueue), errors.Is(err, queue.ErrNoGroup):
		case errors.Is(err, queue.ErrInUse):
			c.sendError(f.ID, wire.CodeInUse, fmt.Sprintf("queue %s is busy with other requests; try again", req.Queue))
			return
		case err != nil:
			c.sendError(f.ID, wire.CodeInternal, err.Error())
			return
		default:
			res = wire.Grouped{Changed: true, Count: uint64(freed), Pending: uint64(pending)}
			for _, w := range waiters {
				if w, ok := w.(*waiter); ok {
					w.c.endDeleted(w, fmt.Sprintf("%s (group %s)", req.Queue, req.Group))
				}
			}
			c.log.Info("consumer group deleted", "queue", string(req.Queue), "group", string(req.Group), "freed", freed, "pending", pending)
		}
	}
	c.mu.Lock()
	c.out = wire.AppendGrouped(c.out, f.ID, res)
	c.durableMark(0) // a durable queue's group is on disk before it is confirmed
	c.signal()
	c.mu.Unlock()
}
