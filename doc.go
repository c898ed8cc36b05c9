// Package machq is the client library for machq, a local message store
// for processes on one Linux host.
//
// A machq server keeps messages in FIFO queues and gives them back in
// order. Every connection has a private queue that only it can reach and
// that the server frees the moment the connection ends; named queues are
// shared by every client, so producers and consumers in different
// processes can meet in them. Small payloads travel inside the protocol's
// frames; larger ones travel as sealed memfds passed with SCM_RIGHTS, so
// the bytes are never copied through the socket and the server never
// holds them in its own memory. Every payload carries a digest (SHA-256
// by default, or BLAKE3) computed by its sender and checked by its
// receiver.
//
// Connect with Dial, then Send, SendPage or SendFile to store, and
// Retrieve or RetrieveWait to take the oldest message:
//
//	c, err := machq.Dial(ctx, "machq") // a service name or a socket path
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	if _, err := c.Send(ctx, "jobs", []byte("hello")); err != nil {
//		return err
//	}
//	m, err := c.Retrieve(ctx, "jobs")
//	if err != nil {
//		return err
//	}
//	defer m.Close()
//	fmt.Printf("%s\n", m.Bytes())
//
// For zero-copy sends, write into a Page and pass it to SendPage; a
// retrieved out-of-line Message is a read-only mapping of the sender's
// memfd. For many small messages, SendBatch and RetrieveBatch send a
// whole batch of requests in one write and wait once.
//
// Acknowledged delivery: Reserve and ReserveWait take a message in ack
// mode and return a Delivery, which stays the queue's until its Ack; Nak
// puts it back at its place (after a delay), Term sends it to the
// queue's dead-letter queue (QUEUE.dlq), Touch renews its lease. If the
// consumer's connection ends first, the message is redelivered at once.
// ReserveBatch and AckBatch do the same for many. A named queue may have
// consumer groups (CreateGroup, DeleteGroup; AckOptions.Group), each of
// which receives every message; a large payload fanned out to several
// groups is one sealed memfd passed to each. Peek, Purge, Delete, Kick
// and Configure manage queues.
//
// DialReconnecting returns a Reconnecting client, which dials again after
// the server restarts and reports a call whose outcome it cannot know
// with ErrUnknownOutcome rather than guessing. WithWaitForRoom makes a store
// into a full queue wait for room instead of failing with ErrLimit.
//
// docs/PROTOCOL.md in the source repository describes the wire protocol
// for clients in other languages.
package machq
