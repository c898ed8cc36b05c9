package server

import (
	"strings"
	"time"

	"github.com/machq/machq/internal/wire"
)

// Observer is told what the server does as it happens; machqd's --metrics
// counts it (internal/metrics). Its methods are called on the request
// path, some with locks held: each must be quick, must not block and must
// not call back into the Server. What the server holds at an instant
// (queues, users, pages, descriptors) is not reported here: Stats gives
// it.
type Observer interface {
	// Handled reports a request handled: its operation code
	// (docs/PROTOCOL.md section 6) and the time from its frame read
	// whole to its answer queued, or to the request parked to wait (the
	// wait itself is not counted, nor the sync a durable change waits
	// for: Synced reports those).
	Handled(op uint8, took time.Duration)
	// Failed reports an ERROR sent, by its code's name (section 7);
	// limit is the limit a LIMIT error names (the machqd flag that
	// sets it, such as "max-stored-bytes"), "" if none.
	Failed(code, limit string)
	// Delivered reports a message handed to a consumer: in ack mode or
	// not, and whether it was delivered before.
	Delivered(ack, redelivery bool)
	// DeadLettered reports a message that became a dead letter, and why:
	// "max-deliveries" or "term".
	DeadLettered(reason string)
	// Synced reports a sync of the durable queues' log: how long it took
	// and how many records it made durable.
	Synced(took time.Duration, records int)
}

// failed tells the observer, if any, of an ERROR sent.
func (s *Server) failed(code wire.Code, msg string) {
	if s.obs == nil {
		return
	}
	limit := ""
	if code == wire.CodeLimit {
		limit = limitNamed(msg)
	}
	s.obs.Failed(code.String(), limit)
}

// limitNamed returns the limit a LIMIT error's message names, one of a
// fixed set whatever the message holds (a queue's name is the client's
// choice). Every limit of a flag is named by it: "(machqd --max-waiting)",
// "(machqd --max-pending caps it)"; the last such mention counts, since a
// queue name may come before it but only fixed advice after. The others
// are the data directory's reserve of free space, the descriptors of the
// process, and the pages one connection may have on their way.
func limitNamed(msg string) string {
	const flag = "(machqd --"
	if i := strings.LastIndex(msg, flag); i >= 0 {
		name := msg[i+len(flag):]
		if end := strings.IndexFunc(name, func(r rune) bool { return (r < 'a' || r > 'z') && r != '-' }); end >= 0 {
			name = name[:end]
		}
		if limitFlags[name] {
			return name
		}
	}
	switch {
	case strings.Contains(msg, "kept in reserve"):
		return "disk-space"
	case strings.Contains(msg, "descriptor"):
		return "max-descriptors"
	case strings.Contains(msg, "the most one queue may have"):
		return "groups-per-queue"
	}
	return "connection-outbox"
}

// limitFlags are the machqd flags of limits a LIMIT error may name.
var limitFlags = map[string]bool{
	"max-connections": true, "max-connections-per-uid": true,
	"max-stored-messages": true, "max-stored-bytes": true, "max-stored-pages": true,
	"max-stored-messages-per-uid": true, "max-stored-bytes-per-uid": true, "max-stored-pages-per-uid": true,
	"max-queue-messages": true, "max-queue-bytes": true,
	"max-private-messages": true, "max-private-bytes": true,
	"max-queues": true, "max-queues-per-uid": true,
	"max-groups": true, "max-groups-per-uid": true,
	"max-waiting": true, "max-waiting-total": true, "max-waiting-per-uid": true,
	"max-descriptors": true, "max-pending": true,
}

// deadLettered tells the observer, if any, of a dead letter.
func (s *Server) deadLettered(why uint8) {
	if s.obs == nil {
		return
	}
	reason := "max-deliveries"
	if why == wire.DeadTerm {
		reason = "term"
	}
	s.obs.DeadLettered(reason)
}
