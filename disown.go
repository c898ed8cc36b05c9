package machq

import (
	"context"
	"fmt"

	"github.com/machq/machq/internal/wire"
)

// Disown gives up the name of an owned queue, which otherwise stays its
// owner's until the server restarts (WithOwnedQueues). The queue must be
// empty with no retrieve waiting on it: else a *ServerError of code
// CodeInUse (errors.Is ErrInUse). It is then removed, and the name is
// free for anyone to create again, open or owned. Only the owner, or
// root, may disown a queue: else CodeForbidden (errors.Is ErrDenied). A
// name no queue holds is disowned already: Disown returns nil.
//
// A server of protocol version 1 does not know DISOWN: Disown then fails
// with ErrProtocol without sending anything.
func (c *Client) Disown(ctx context.Context, queue string) error {
	if err := ValidQueueName(queue); err != nil {
		return err
	}
	if c.welcome.Version < 2 {
		return fmt.Errorf("%w: the server speaks protocol version %d, which has no DISOWN; upgrade machqd", ErrProtocol, c.welcome.Version)
	}
	cl := &call{op: wire.OpDisown, ch: make(chan result, 1)}
	id, err := c.register(ctx, cl)
	if err != nil {
		return err
	}
	if err := c.enqueue(ctx, -1, func(b []byte) []byte { return wire.AppendDisown(b, id, []byte(queue)) }); err != nil {
		return err
	}
	_, err = c.wait(ctx, id, cl)
	return err
}
