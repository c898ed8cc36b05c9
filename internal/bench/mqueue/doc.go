// Package mqueue is the POSIX message queue baseline that machq is
// measured against: a client and a peer process exchange store/echo
// requests through a pair of message queues, with no machq code on either
// side.
//
// # Queues and how the peer finds them
//
// Each Client creates its own two queues, named
// "/machq-bench-PID-N-req" (client to peer) and "/machq-bench-PID-N-rsp"
// (peer to client), with mq_msgsize fitted to the payload size it was
// dialled for and mq_maxmsg to its pipeline depth. It then connects to the
// peer's control socket (a Unix stream socket, see Listen and Serve) and
// sends the common prefix "/machq-bench-PID-N" as one length byte and the
// name. The peer opens both queues, unlinks both names at once, since
// both sides now hold descriptors, and replies with one length byte and
// an error text, empty for success. A client whose handshake fails
// unlinks the names itself, so names exist only during the handshake: if
// either process dies afterwards, the queues vanish with the last
// descriptor.
//
// Nothing else travels on the control connection, but it stays open as
// each side's proof of life: when it ends (Close, a crash, or the peer
// stopping), the other side wakes whatever it has blocked in
// mq_timedsend or mq_timedreceive and frees the queues.
//
// # Messages
//
// The message priority says what a message is, so that the payload is
// the whole message and is never copied to prepend a header:
//
//	request queue:  priority 0  store; the message is the payload
//	                priority 1  retrieve; empty
//	response queue: priority 0  stored; empty
//	                priority 1  the retrieved payload
//	                priority 2  retrieve from an empty FIFO; empty
//
// Priority 3 on either queue is reserved for waking a blocked side when
// the other has gone. Since a queue delivers higher priorities first, a
// client must never have stores and retrieves queued at the same time;
// RoundTrip and Pipeline read every acknowledgement of their stores before
// they send a retrieve.
//
// # Limits
//
// mq_msgsize is capped by fs.mqueue.msgsize_max (8 KiB by default) for a
// process without CAP_SYS_RESOURCE and by HARD_MSGSIZEMAX (16 MiB) with
// it; mq_maxmsg by fs.mqueue.msg_max (10 by default) or HARD_MSGMAX
// (65536); and the bytes of all of a user's queues by RLIMIT_MSGQUEUE,
// which MaxSize raises as far as the process may. MaxSize reports the
// largest payload that fits, and Dial fails with ErrTooLarge beyond it.
// Pipeline keeps at most QueueDepth requests outstanding, so that neither
// queue can fill and block both sides; deeper pipelines interleave sends
// and receives once the window is full.
//
// All queue operations are blocking system calls without timeouts.
package mqueue
