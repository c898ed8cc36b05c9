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
// docs/PROTOCOL.md in the source repository describes the wire protocol
// for clients in other languages.
package machq
