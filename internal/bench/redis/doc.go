// Package redis runs a private redis-server and talks to it with a minimal
// RESP2 client, so that machq's benchmark can compare machq with Redis
// lists used as a FIFO queue on the same host, and machq's ack mode with
// Redis Streams read through a consumer group.
//
// # What is measured
//
// A Client stores a payload with RPUSH on a list of its own and takes it
// back with LPOP. RoundTrip does one of each, waiting for each reply before
// sending the next command, so it costs two request/reply exchanges over the
// Unix socket, the same shape as a machq send followed by a retrieve.
// Pipeline sends depth RPUSHes in one write, reads their depth replies, then
// sends depth LPOPs in one write and reads the depth payloads back.
//
// A Stream adds a payload to a stream of its own with XADD, takes it with
// XREADGROUP (COUNT 1) through a consumer group created once, and
// acknowledges it with XACK: three request/reply exchanges, the same shape
// as a machq send, reserve and ack. Its Pipeline sends depth of each
// command in one write per kind. XACK leaves an entry in the stream, so
// each XADD trims it (MAXLEN ~) to about the number of entries the call
// adds, keeping the stream, and Redis's memory, from growing with every
// round trip.
//
// The client is built for Redis's best case. Commands go out in a single
// write: for small payloads the command and the payload are copied into one
// reused buffer, and for large payloads the header, the caller's payload and
// the trailer go out together with writev, so the payload is never copied
// in user space on the way out. Replies are read into one reused buffer that
// grows to the largest reply seen, and the payload handed to the callback is
// a slice of that buffer, so once warmed up a round trip makes no
// allocations proportional to the payload size. The socket is a blocking
// file descriptor driven with plain read, write and writev system calls
// rather than Go's network poller, which measured faster for small round
// trips (see BenchmarkTransport).
//
// # How the server is configured
//
// Start runs redis-server in the foreground with:
//
//	--port 0                                  no TCP listener
//	--unixsocket DIR/redis.sock               the only way in
//	--unixsocketperm 700                      reachable by this user only
//	--save "" --appendonly no                 no persistence of any kind
//	--dir DIR                                 working directory
//	--daemonize no
//	--proto-max-bulk-len 512mb                payloads up to 512 MiB
//	--client-query-buffer-limit 1gb           room for such a command
//
// Its standard output and standard error, where it logs, go to DIR/redis.log.
// Everything it writes stays in DIR, which the caller owns and removes.
// The data lives in memory only, so Redis does no disk I/O while measured.
//
// StartWith with Options.AppendFsyncAlways gives the durable Redis the
// benchmark's durable runs compare machq's data directory with:
//
//	--appendonly yes --appendfsync always     every write in the append-only
//	                                          file, fsynced before the answer
//	--dir DATADIR                             where the file goes (DIR unless given)
//
// Redis appends the commands of one pass of its event loop to the file and
// syncs it (fdatasync) once before answering any of them: a group commit
// over the clients that pass served. A Client's Push stores without taking
// back, which is what a durable store costs.
package redis
