package machq

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/machq/machq/internal/wire"
)

// Stats describes a server at one instant.
type Stats struct {
	Clients int `json:"clients"` // connected clients
	// Messages, Bytes and Pages count every message the server holds:
	// those in private and named queues and those taken from a queue and
	// not yet written to their consumer (Unsent), which count against the
	// same limits.
	Messages int64 `json:"messages"`
	Bytes    int64 `json:"bytes"`
	Pages    int64 `json:"pages"` // messages held as pages (open descriptors)
	// Unsent is the part of the above waiting to be written to consumers
	// that have not read it yet.
	Unsent HeldStats `json:"unsent"`
	// Pending is the part of the above delivered in ack mode and not yet
	// settled, with messages NAKed and waiting out a delay.
	Pending HeldStats `json:"pending"`
	// Waiting counts the retrieves waiting for a message.
	Waiting int64 `json:"waiting"`
	// Descriptors is how many descriptors pages and connections take in
	// the server, DescriptorLimit how many they may (machqd
	// --max-descriptors).
	Descriptors     int64 `json:"descriptors"`
	DescriptorLimit int64 `json:"descriptor_limit"`
	// Goroutines is the number of goroutines of the server's process.
	Goroutines int          `json:"goroutines"`
	Queues     []QueueStats `json:"queues"` // each named queue, sorted by name
	// QueuesOmitted counts named queues the server left out of Queues
	// because its STATS frame could not hold them all.
	QueuesOmitted int `json:"queues_omitted,omitempty"`
	// Users is what each user id that is connected or has something
	// stored holds, sorted by uid.
	Users []UserStats `json:"users"`
}

// HeldStats counts messages, their payload bytes and the pages among
// them.
type HeldStats struct {
	Messages int64 `json:"messages"`
	Bytes    int64 `json:"bytes"`
	Pages    int64 `json:"pages"`
}

// UserStats is one user id's share of what a server holds: what its
// stores hold wherever the messages are, the named queues it created
// that exist, its connections and its waiting retrieves. The per-uid
// limits (machqd --max-*-per-uid) apply to these.
type UserStats struct {
	UID         uint32 `json:"uid"`
	Connections int64  `json:"connections"`
	Messages    int64  `json:"messages"`
	Bytes       int64  `json:"bytes"`
	Pages       int64  `json:"pages"`
	Queues      int    `json:"queues"`
	Waiting     int64  `json:"waiting"`
}

// QueueStats describes one named queue.
type QueueStats struct {
	Name     string `json:"name"`
	Messages int    `json:"messages"`
	Bytes    int64  `json:"bytes"`
	Waiting  int    `json:"waiting"` // consumers blocked on the queue
	// Owner is the only user id allowed to use the queue; nil: anyone.
	Owner *uint32 `json:"owner,omitempty"`
	// Pending counts messages delivered in ack mode and not yet settled;
	// Delayed, messages NAKed and waiting out their delay. Neither is in
	// Messages.
	Pending int `json:"pending"`
	Delayed int `json:"delayed"`
	// Delivered, Redelivered, Acked, Nacked and DeadLettered count
	// deliveries and settlements since the queue was created (a queue
	// removed while idle starts again from 0).
	Delivered    uint64 `json:"delivered"`
	Redelivered  uint64 `json:"redelivered"`
	Acked        uint64 `json:"acked"`
	Nacked       uint64 `json:"nacked"`
	DeadLettered uint64 `json:"dead_lettered"`
	// Blocked counts stores waiting for room (WithWaitForRoom).
	Blocked int `json:"blocked"`
	// MaxDeliveries and LeaseMillis are the queue's own settings
	// (Client.Configure); 0 when it takes the server's (a LeaseMillis of
	// 0xFFFFFFFF means no lease).
	MaxDeliveries uint32 `json:"max_deliveries,omitempty"`
	LeaseMillis   uint32 `json:"lease_ms,omitempty"`
	// Groups are the queue's consumer groups, by name.
	Groups []GroupStats `json:"groups,omitempty"`
}

// GroupStats describes one consumer group of a queue.
type GroupStats struct {
	Name     string `json:"name"`
	Messages int    `json:"messages"` // in the group's line
	Bytes    int64  `json:"bytes"`
	Waiting  int    `json:"waiting"`
	Pending  int    `json:"pending"`
	Delayed  int    `json:"delayed"`
	// Position is the sequence number of the next message the group
	// delivers, 0 when its line is empty.
	Position     uint64 `json:"position"`
	Delivered    uint64 `json:"delivered"`
	Redelivered  uint64 `json:"redelivered"`
	Acked        uint64 `json:"acked"`
	Nacked       uint64 `json:"nacked"`
	DeadLettered uint64 `json:"dead_lettered"`
}

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
