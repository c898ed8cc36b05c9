package server

import (
	"errors"
	"fmt"

	"github.com/machq/machq/internal/quota"
	"github.com/machq/machq/internal/wire"
)

// unknownUID is the account of peers whose credentials could not be read
// (SO_PEERCRED never fails on a connected Unix socket; this is a guard).
const unknownUID = ^uint32(0)

// connectionDescriptors is what one connection takes from
// Limits.MaxDescriptors: its socket, and the most descriptors its reader
// may hold received but not yet claimed by a frame.
const connectionDescriptors = 1 + wire.MaxFDsInFlight

// newLedger returns the ledger enforcing lim's totals and per-uid limits.
func newLedger(lim *Limits) *quota.Ledger {
	return quota.New(quota.Config{
		Total: quota.Limits{
			Messages: lim.MaxStoredMessages,
			Bytes:    lim.MaxStoredBytes,
			Pages:    lim.MaxStoredPages,
			Waiting:  lim.MaxWaitingTotal,
		},
		PerUID: quota.Limits{
			Messages: lim.MaxStoredMessagesPerUID,
			Bytes:    lim.MaxStoredBytesPerUID,
			Pages:    lim.MaxStoredPagesPerUID,
			Waiting:  lim.MaxWaitingPerUID,
		},
		Descriptors:           lim.MaxDescriptors,
		DescriptorsPerUID:     lim.MaxDescriptorsPerUID,
		ConnectionDescriptors: connectionDescriptors,
	})
}

// refusalError turns a refused charge into a LIMIT message naming the
// limit, its flag, how full it is and what to do. size is the payload of
// the refused store, if it was one.
func refusalError(err error, size int64) error {
	var e *quota.Exceeded
	if !errors.As(err, &e) {
		return err
	}
	retrieve := "retrieve some, or raise the limit"
	switch e.Kind {
	case quota.TotalMessages:
		return limitError("the server holds too many messages", e.Have, e.Max, "max-stored-messages", retrieve)
	case quota.TotalBytes:
		return limitError(fmt.Sprintf("storing %d more bytes would pass the server's byte limit", size), e.Have, e.Max, "max-stored-bytes", retrieve)
	case quota.TotalPages:
		return limitError("the server holds too many pages (each an open descriptor)", e.Have, e.Max, "max-stored-pages", "retrieve some, send small payloads inline, or raise the limit with ulimit -n")
	case quota.TotalWaiting:
		return limitError("too many retrieves wait on the server", e.Have, e.Max, "max-waiting-total", "cancel some, or raise the limit")
	case quota.UIDMessages:
		return limitError(fmt.Sprintf("uid %d holds too many messages", e.UID), e.Have, e.Max, "max-stored-messages-per-uid", retrieve)
	case quota.UIDBytes:
		return limitError(fmt.Sprintf("storing %d more bytes would pass uid %d's byte limit", size, e.UID), e.Have, e.Max, "max-stored-bytes-per-uid", retrieve)
	case quota.UIDPages:
		return limitError(fmt.Sprintf("uid %d holds too many pages", e.UID), e.Have, e.Max, "max-stored-pages-per-uid", "retrieve some, send small payloads inline, or raise the limit")
	case quota.UIDWaiting:
		return limitError(fmt.Sprintf("too many retrieves of uid %d wait", e.UID), e.Have, e.Max, "max-waiting-per-uid", "cancel some, or raise the limit")
	case quota.UIDDescriptors:
		return limitError(fmt.Sprintf("uid %d's pages and connections take too many of the server's descriptors", e.UID), e.Have, e.Max, "max-descriptors-per-uid", "retrieve some pages, close idle connections, or raise the limit")
	case quota.Descriptors:
		return limitError("the server is near its descriptor limit: no descriptor is left for another page or connection", e.Have, e.Max, "max-descriptors", "retrieve some pages, close idle connections, or raise the descriptor limit (ulimit -n, LimitNOFILE=)")
	}
	return err
}
