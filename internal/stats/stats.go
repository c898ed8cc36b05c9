// Package stats defines the STATS document (docs/PROTOCOL.md section
// 6.8): what a server reports of itself, as the server builds it and the
// client library reads it.
package stats

// Stats describes a server at one instant.
type Stats struct {
	Clients int `json:"clients"` // connected clients
	// Messages, Bytes and Pages count everything the server holds:
	// messages in private and named queues, messages pending with
	// consumers in ack mode or NAKed and delayed (Pending), and messages
	// on their way to consumers (Unsent), which count against the same
	// limits.
	Messages int64 `json:"messages"`
	Bytes    int64 `json:"bytes"`
	Pages    int64 `json:"pages"` // messages held as pages (each an open descriptor)
	// Unsent is the part of the above taken from queues and waiting to be
	// written to consumers that have not read them yet.
	Unsent Held `json:"unsent"`
	// Pending is the part of the above delivered in ack mode and not yet
	// settled, with messages NAKed and waiting out a delay: their queues
	// hold them until they are acknowledged or come back.
	Pending Held `json:"pending"`
	// Waiting counts the retrieves (and stores waiting for room) waiting.
	Waiting int64 `json:"waiting"`
	// Descriptors is how many descriptors pages and connections take in
	// the server, DescriptorLimit how many they may (--max-descriptors).
	Descriptors     int64 `json:"descriptors"`
	DescriptorLimit int64 `json:"descriptor_limit"`
	// Goroutines is the number of goroutines of the server's process: it
	// returns to its idle value once every client has left.
	Goroutines int     `json:"goroutines"`
	Queues     []Queue `json:"queues"` // each named queue, sorted by name
	// QueuesOmitted counts named queues left out of Queues because the
	// STATS frame could not hold them all.
	QueuesOmitted int `json:"queues_omitted,omitempty"`
	// Users is what each user id that is connected or has something
	// stored holds, sorted by uid.
	Users []User `json:"users"`
	// Durable describes the data directory; absent without one.
	Durable *Durable `json:"durable,omitempty"`
	// Limits are the server's limits (machqd's --max-* flags), so that
	// what it holds can be judged against them; absent from servers
	// before they reported them.
	Limits *Limits `json:"limits,omitempty"`
}

// Held counts messages, their payload bytes and the pages among them.
type Held struct {
	Messages int64 `json:"messages"`
	Bytes    int64 `json:"bytes"`
	Pages    int64 `json:"pages"`
}

// User is one user id's share of what a server holds: what its stores
// hold, wherever the messages are, the named queues it created that
// exist, its connections and its waiting requests. The per-uid limits
// (--max-*-per-uid) apply to these.
type User struct {
	UID         uint32 `json:"uid"`
	Connections int64  `json:"connections"`
	Messages    int64  `json:"messages"`
	Bytes       int64  `json:"bytes"`
	Pages       int64  `json:"pages"`
	Queues      int    `json:"queues"`
	Waiting     int64  `json:"waiting"`
	// Descriptors is what the user's pages and connections take of
	// the server's descriptors (--max-descriptors-per-uid).
	Descriptors int64 `json:"descriptors"`
}

// Counts are the deliveries and settlements of a queue or consumer
// group since it was created (they continue across a queue's removal
// while idle, as its sequence numbers do).
type Counts struct {
	Delivered    uint64 `json:"delivered"`     // messages handed to consumers, every delivery counted
	Redelivered  uint64 `json:"redelivered"`   // of those, deliveries of a message delivered before in ack mode
	Acked        uint64 `json:"acked"`         // deliveries acknowledged
	Nacked       uint64 `json:"nacked"`        // deliveries put back by NAK
	DeadLettered uint64 `json:"dead_lettered"` // messages that became dead letters (moved to NAME.dlq, or dropped from a private queue)
}

// Queue describes one named queue.
type Queue struct {
	Name     string `json:"name"`
	Messages int    `json:"messages"` // in line
	Bytes    int64  `json:"bytes"`    // of the messages in line
	Waiting  int    `json:"waiting"`  // consumers blocked on the queue
	// Owner is the only user id allowed to use the queue; nil: anyone.
	Owner *uint32 `json:"owner,omitempty"`
	// Pending counts messages delivered in ack mode and not yet settled;
	// Delayed, messages NAKed and waiting out their delay. Neither is in
	// Messages; both count against the queue's limits.
	Pending int `json:"pending"`
	Delayed int `json:"delayed"`
	Counts
	// Blocked counts stores waiting for room.
	Blocked int `json:"blocked"`
	// MaxDeliveries and LeaseMillis are the queue's own settings
	// (CONFIG), absent when it takes the server's; a LeaseMillis of
	// 0xFFFFFFFF means no lease.
	MaxDeliveries uint32 `json:"max_deliveries,omitempty"`
	LeaseMillis   uint32 `json:"lease_ms,omitempty"`
	// Groups are the queue's consumer groups, by name; absent if none.
	Groups []Group `json:"groups,omitempty"`
	// Durable: the queue is kept in the data directory.
	Durable bool `json:"durable,omitempty"`
}

// Durable describes the data directory of a server with durable queues.
type Durable struct {
	Dir string `json:"dir"`
	// Queues is the pattern selecting the durable named queues.
	Queues string `json:"queues"`
	// Sync is when stores are synced: SyncEveryStore or
	// SyncLossyInterval.
	Sync string `json:"sync"`
	// SyncIntervalMillis is, under SyncLossyInterval, the time between
	// two syncs of the log in milliseconds (rounded up): the longest a
	// store answered stays off the disk. 0 (absent) under
	// SyncEveryStore.
	SyncIntervalMillis int64 `json:"sync_interval_ms,omitempty"`
	// Unsynced is, under SyncLossyInterval, what was answered and is
	// not yet on disk at this instant: the most a power loss now would
	// take. Nil (absent) under SyncEveryStore.
	Unsynced *Unsynced `json:"unsynced,omitempty"`
	// Segments is the number of the log's segment files, Records the
	// records appended since the log began.
	Segments int    `json:"segments"`
	Records  uint64 `json:"records"`
	// Failed, when not empty, says why durable stores are refused until
	// the server is restarted.
	Failed string `json:"failed,omitempty"`
}

// The sync policies of Durable.Sync.
const (
	// SyncEveryStore: each store is answered once it is on disk
	// (fdatasync, shared by the stores that arrive meanwhile); nothing
	// answered is lost to a crash or a power loss.
	SyncEveryStore = "every-store"
	// SyncLossyInterval: a store is answered once written to the log
	// (write(2), in the kernel's cache), and the log is synced every
	// Durable.SyncIntervalMillis: a crash of the server loses nothing,
	// a power loss (or a crash of the kernel) may lose what was
	// answered since the last sync.
	SyncLossyInterval = "lossy-interval"
)

// Unsynced is what the log has answered and not yet synced: records
// (stores, takes, acknowledgements, ...) and their bytes in the log.
type Unsynced struct {
	Records uint64 `json:"records"`
	Bytes   int64  `json:"bytes"`
}

// Group describes one consumer group of a queue: its own line, waiters,
// pending deliveries and counts.
type Group struct {
	Name     string `json:"name"`
	Messages int    `json:"messages"` // in the group's line
	Bytes    int64  `json:"bytes"`
	Waiting  int    `json:"waiting"`
	Pending  int    `json:"pending"`
	Delayed  int    `json:"delayed"`
	// Position is the sequence number of the next message the group
	// delivers, 0 when its line is empty.
	Position uint64 `json:"position"`
	Counts
}

// Limits are a server's limits, each named after the machqd flag that sets
// it (--max-stored-bytes is MaxStoredBytes, "max_stored_bytes"); -1 means
// no limit. The descriptor limit is Stats.DescriptorLimit; the largest
// message and inline payload are in WELCOME.
type Limits struct {
	MaxConnections          int64 `json:"max_connections"`
	MaxConnectionsPerUID    int64 `json:"max_connections_per_uid"`
	MaxStoredMessages       int64 `json:"max_stored_messages"`
	MaxStoredBytes          int64 `json:"max_stored_bytes"`
	MaxStoredPages          int64 `json:"max_stored_pages"`
	MaxStoredMessagesPerUID int64 `json:"max_stored_messages_per_uid"`
	MaxStoredBytesPerUID    int64 `json:"max_stored_bytes_per_uid"`
	MaxStoredPagesPerUID    int64 `json:"max_stored_pages_per_uid"`
	MaxQueueMessages        int64 `json:"max_queue_messages"`
	MaxQueueBytes           int64 `json:"max_queue_bytes"`
	MaxPrivateMessages      int64 `json:"max_private_messages"`
	MaxPrivateBytes         int64 `json:"max_private_bytes"`
	MaxQueues               int64 `json:"max_queues"`
	MaxQueuesPerUID         int64 `json:"max_queues_per_uid"`
	MaxWaiting              int64 `json:"max_waiting"`
	MaxWaitingTotal         int64 `json:"max_waiting_total"`
	MaxWaitingPerUID        int64 `json:"max_waiting_per_uid"`
	MaxGroups               int64 `json:"max_groups"`
	MaxGroupsPerUID         int64 `json:"max_groups_per_uid"`
	MaxPending              int64 `json:"max_pending"`
	MaxDescriptorsPerUID    int64 `json:"max_descriptors_per_uid"`
}
