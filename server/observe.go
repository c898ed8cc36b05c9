package server

import (
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

// failed tells the observer, if any, of an ERROR sent; limit is the
// limit a LIMIT is for (limitOf), "other" if it names none.
func (s *Server) failed(code wire.Code, limit string) {
	if s.obs == nil {
		return
	}
	switch {
	case code != wire.CodeLimit:
		limit = ""
	case limit == "":
		limit = "other"
	}
	s.obs.Failed(code.String(), limit)
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
