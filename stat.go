package machq

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/machq/machq/internal/stats"
	"github.com/machq/machq/internal/wire"
)

// Stats describes a server at one instant: the STATS document
// (docs/PROTOCOL.md section 6.8).
type Stats = stats.Stats

// HeldStats counts messages, their payload bytes and the pages among
// them.
type HeldStats = stats.Held

// UserStats is one user id's share of what a server holds; the per-uid
// limits (machqd --max-*-per-uid) apply to these.
type UserStats = stats.User

// QueueStats describes one named queue.
type QueueStats = stats.Queue

// GroupStats describes one consumer group of a queue.
type GroupStats = stats.Group

// DurableStats describes a server's data directory (machqd --data-dir).
type DurableStats = stats.Durable

// LimitStats are a server's limits (machqd's --max-* flags), -1 for none.
type LimitStats = stats.Limits

// Stat returns the server's statistics.
func (c *Client) Stat(ctx context.Context) (*Stats, error) {
	raw, err := c.StatJSON(ctx)
	if err != nil {
		return nil, err
	}
	var s Stats
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("%w: STATS is not valid JSON: %v", ErrProtocol, err)
	}
	return &s, nil
}

// StatJSON returns the server's statistics as the JSON document it sent.
func (c *Client) StatJSON(ctx context.Context) ([]byte, error) {
	cl := &call{op: wire.OpStat, ch: make(chan result, 1)}
	id, err := c.register(ctx, cl)
	if err != nil {
		return nil, err
	}
	if err := c.enqueue(ctx, -1, func(b []byte) []byte { return wire.AppendStat(b, id) }); err != nil {
		return nil, err
	}
	r, err := c.wait(ctx, id, cl)
	return r.stats, err
}
