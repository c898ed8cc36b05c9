// Package floor is the bare store/echo baseline that machq is measured
// against: a peer process keeps a FIFO of payloads for each connection on
// a Unix stream socket, with no machq code on either side.
//
// Two mechanisms carry the payload:
//
//   - Copy: the payload's bytes travel through the socket, and the peer
//     reads them into memory it owns.
//   - Memfd: the client writes the payload into a new memfd with pwrite,
//     seals it (F_SEAL_SEAL|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE) and
//     passes the descriptor with SCM_RIGHTS; the peer keeps the descriptor
//     without reading or mapping it and passes the same descriptor back,
//     and the client maps it read-only.
//
// # Framing
//
// Every message in either direction is a 9-byte header, an operation byte
// followed by a 64-bit little-endian length, and for Copy the length's
// worth of payload bytes after it:
//
//	'S' len payload  store (Copy): the payload follows the header
//	'P' len          store (Memfd): one memfd of len bytes rides with the
//	                 header as SCM_RIGHTS; len 0 means no descriptor
//	'R' 0            retrieve the oldest stored payload
//	'A' 0            reply to a store: stored
//	'D' len [payload] reply to a retrieve: the payload (Copy), or one
//	                 memfd of len bytes as SCM_RIGHTS (Memfd; none if len 0)
//	'E' 0            reply to a retrieve on an empty FIFO
//
// Descriptors are matched to headers by order: the n-th descriptor
// received on a connection belongs to the n-th header whose length is
// not zero. A sender may therefore batch several headers, with their
// descriptors, in one sendmsg. A peer serves one mechanism and drops a
// connection that sends the other's store, or anything malformed.
//
// The client writes a whole batch of requests before reading any reply,
// and the peer writes its replies only when it has no complete request
// left to read, so pipelined requests cost one write and few reads on
// each side. Pipeline works in windows of at most PipelineWindow requests,
// which keeps the replies the peer has not yet had read within the socket
// buffer, so neither side can block the other.
//
// Everything uses blocking system calls on raw descriptors, not the net
// package, and reuses its buffers, so that the figures are the cost of
// the kernel mechanism alone.
package floor
