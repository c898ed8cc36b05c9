package server

import (
	"fmt"
	"time"

	"github.com/machq/machq/internal/delivery"
)

// AckConfig tunes acknowledged delivery (protocol version 3). The zero
// value is ready to use: every field's zero means its default.
type AckConfig struct {
	// MaxPending bounds the messages one connection may hold pending in
	// ack mode at once; a retrieve's credit can only lower it. Default
	// DefaultMaxPending.
	MaxPending int
	// Lease is the lease of an ack-mode retrieve that asks for none of
	// its own: how long its consumer may hold the message without
	// settling or touching it before the message goes back to its queue.
	// Zero (the default): no lease; a message waits for its consumer
	// until the consumer settles it or its connection ends.
	Lease time.Duration
	// MaxDeliveries is how many times a message may be delivered in ack
	// mode before it becomes a dead letter. Default DefaultMaxDeliveries.
	MaxDeliveries int
	// NakBackoff and NakBackoffMax bound the delay of a NAK that asks for
	// none: NakBackoff after a message's first delivery, doubling with
	// each further one, at most NakBackoffMax. Defaults
	// DefaultNakBackoff and DefaultNakBackoffMax.
	NakBackoff    time.Duration
	NakBackoffMax time.Duration
}

// Acknowledged-delivery defaults; see AckConfig.
const (
	DefaultMaxPending    = 1024
	DefaultMaxDeliveries = 20
	DefaultNakBackoff    = 10 * time.Millisecond
	DefaultNakBackoffMax = 10 * time.Second
)

func (a *AckConfig) setDefaults() error {
	switch {
	case a.MaxPending < 0 || a.MaxDeliveries < 0 || a.Lease < 0 || a.NakBackoff < 0 || a.NakBackoffMax < 0:
		return fmt.Errorf("machq: AckConfig %+v has a negative field", *a)
	case a.Lease > 0 && a.Lease < time.Millisecond:
		return fmt.Errorf("machq: ack lease %s is shorter than a millisecond", a.Lease)
	}
	if a.MaxPending == 0 {
		a.MaxPending = DefaultMaxPending
	}
	if a.MaxDeliveries == 0 {
		a.MaxDeliveries = DefaultMaxDeliveries
	}
	if a.NakBackoff == 0 {
		a.NakBackoff = DefaultNakBackoff
	}
	if a.NakBackoffMax == 0 {
		a.NakBackoffMax = DefaultNakBackoffMax
	}
	a.NakBackoffMax = max(a.NakBackoffMax, a.NakBackoff)
	return nil
}

// policy is the delivery policy a set of defaults makes.
func (a *AckConfig) policy() delivery.Policy {
	return delivery.Policy{
		MaxDeliveries: uint32(min(a.MaxDeliveries, 1<<31)),
		Backoff:       a.NakBackoff,
		BackoffMax:    a.NakBackoffMax,
	}
}
