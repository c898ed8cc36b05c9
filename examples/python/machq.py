"""A machq client in standard-library Python 3 (Linux, Python 3.9 or later).

It speaks the machq wire protocol, versions 1 to 3, as docs/PROTOCOL.md
specifies it, and was written from that document alone:

* the handshake (HELLO / WELCOME), offering versions 1 to 3 and accepting
  whichever the server chooses, with the server's limits;
* STORE, inline or as a sealed memfd passed with SCM_RIGHTS (the payload
  never travels through the socket when it is larger than the inline
  threshold);
* RETRIEVE, at once or waiting, and CANCEL of a waiting RETRIEVE;
* STAT;
* DISOWN (version 2);
* acknowledged delivery (version 3): RETRIEVE in ack mode (reserve), with
  a lease and a credit, returning a Delivery to ACK, NAK, TOUCH or TERM,
  and KICK of dead letters back into their queue;
* queue management (version 3): PEEK, PURGE, DELETE, and CONFIG of a
  queue's own max-deliveries and lease;
* consumer groups (version 3): GROUP to create or delete one, and
  reserve through a group;
* STORE with the WAIT flag (version 3): a store into a full queue waits
  for room, and can be cancelled like a waiting RETRIEVE;
* SHA-256 digests: computed for every payload stored, verified (in
  constant time) for every payload retrieved. In ack mode a message this
  client cannot verify (BLAKE3, or an unknown algorithm) is NAKed, and one
  that does not match its digest is TERMed (dead-lettered), before the
  error is raised: neither is lost.

Descriptors are matched to frames by stream position, as section 4 of the
protocol requires, and responses are matched to requests by id, so a
waiting RETRIEVE may be answered after later requests.

Example::

    import machq

    with machq.connect("/run/user/1000/machq/machq.sock") as c:
        c.store(b"hello", "jobs")
        m = c.retrieve("jobs", wait_ms=1000)
        print(m.seq, m.data)

        c.store(b"work", "jobs")
        d = c.reserve("jobs", wait_ms=1000, lease_ms=30_000)   # ack mode
        print(d.seq, d.payload, d.deliveries)
        d.ack()   # or d.nak(delay_ms=..., reason=...), d.term(reason)

        c.create_group("events", "audit")             # each group gets every message
        c.store(b"e1", "events")
        d = c.reserve("events", group="audit")
        d.ack()

A Client is not thread-safe: use one per thread.
"""

import fcntl
import hashlib
import hmac
import json
import mmap
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

__version__ = "0.1.0"   # of this client; the protocol versions are MIN_VERSION to VERSION

__all__ = [
    "Client", "Message", "Delivery", "Peeked", "connect", "socket_path",
    "MachqError", "ProtocolError", "ConnectionClosed", "ServerError", "StaleError",
    "NoGroupError", "IntegrityError", "UnverifiableError", "Unsupported",
    "DIGEST_NONE", "DIGEST_SHA256", "DIGEST_BLAKE3", "WAIT_FOREVER", "NO_LEASE",
    "OUTCOME_ACKED", "OUTCOME_REQUEUED", "OUTCOME_DEAD_LETTERED", "OUTCOME_DROPPED",
    "OUTCOME_TOUCHED", "DEAD_LIVE", "DEAD_TERMED", "DEAD_MAX_DELIVERIES",
]

# -- protocol constants (docs/PROTOCOL.md sections 3, 6, 7, 9) ---------------

MIN_VERSION = 1     # lowest version this client speaks
VERSION = 3         # highest version this client speaks
MAGIC = b"MCHQ"

# Operations.
HELLO, STORE, RETRIEVE, CANCEL, STAT = 0x01, 0x02, 0x03, 0x04, 0x05
DISOWN = 0x06                                          # version 2
ACK, NAK, TOUCH, TERM, KICK = 0x07, 0x08, 0x09, 0x0A, 0x0B   # version 3
PEEK, PURGE, DELETE, GROUP, CONFIG = 0x0C, 0x0D, 0x0E, 0x0F, 0x10   # version 3
WELCOME, STORED, MESSAGE, STATS, ERROR = 0x81, 0x82, 0x83, 0x85, 0xFF
DISOWNED = 0x86                                        # version 2
SETTLED, KICKED = 0x87, 0x8B                           # version 3
PURGED, DELETED, GROUPED, CONFIGURED = 0x8D, 0x8E, 0x8F, 0x90   # version 3

# Header flags.
FLAG_INLINE = 0x01   # STORE and MESSAGE: the payload is in the frame
FLAG_OWNED = 0x02    # STORE, RETRIEVE, GROUP, CONFIG: a named queue this creates is the sender's
FLAG_ACK = 0x04      # RETRIEVE and MESSAGE, version 3: ack mode
FLAG_WAIT = 0x08     # STORE, version 3: wait for room in a full queue

MAX_FRAME = (1 << 20) + 1024   # largest frame either side sends
MAX_INLINE = 1 << 20           # largest inline payload any server accepts
MAX_NAME = 255                 # longest queue name
MAX_DIGEST = 64                # longest digest
SCM_MAX_FD = 253               # Linux: the most descriptors one sendmsg carries
WAIT_FOREVER = 0xFFFFFFFF      # RETRIEVE wait_ms: until cancelled
NO_LEASE = 0xFFFFFFFF          # ack-mode RETRIEVE lease_ms: no lease at all
MAX_TEXT = 512                 # longest NAK or TERM text, and MESSAGE note
MAX_ACK_NAME = 251             # longest named queue read in ack mode or kicked

# SETTLED outcomes (section 6.11).
OUTCOME_ACKED, OUTCOME_REQUEUED, OUTCOME_DEAD_LETTERED, OUTCOME_DROPPED, OUTCOME_TOUCHED = range(5)
OUTCOME_NAMES = {OUTCOME_ACKED: "acked", OUTCOME_REQUEUED: "requeued",
                 OUTCOME_DEAD_LETTERED: "dead-lettered", OUTCOME_DROPPED: "dropped",
                 OUTCOME_TOUCHED: "touched"}

# GROUP actions (section 6.14).
GROUP_CREATE, GROUP_CREATE_FROM_OLDEST, GROUP_DELETE = 1, 2, 3

# Why a message is a dead letter: MESSAGE `dead` (section 6.6).
DEAD_LIVE, DEAD_TERMED, DEAD_MAX_DELIVERIES = 0, 1, 2
DEAD_NAMES = {DEAD_LIVE: "live", DEAD_TERMED: "termed",
              DEAD_MAX_DELIVERIES: "max-deliveries"}

# Digest algorithms (section 9).
DIGEST_NONE, DIGEST_SHA256, DIGEST_BLAKE3 = 0, 1, 2
_DIGEST_NAMES = {DIGEST_NONE: "none", DIGEST_SHA256: "SHA-256", DIGEST_BLAKE3: "BLAKE3"}

DEFAULT_INLINE_THRESHOLD = 64 * 1024   # what the reference client uses

# Frame layouts; all integers little-endian.
HEADER = struct.Struct("<IBBBBQ")        # length, op, flags, nfds, reserved, id
HELLO_BODY = struct.Struct("<4sHH")      # magic, min_version, max_version
WELCOME_BODY = struct.Struct("<4sHHIIQI")  # magic, version, rsv, max_inline, max_frame, max_message, pid
STORE_FIXED = struct.Struct("<QBBBB")    # size, digest_alg, digest_len, name_len, reserved
RETRIEVE_FIXED = struct.Struct("<IBBBB")  # wait_ms, name_len, 3 reserved
# Ack mode: wait_ms, name_len, group_len, 2 reserved, lease_ms, credit.
RETRIEVE_ACK_FIXED = struct.Struct("<IBBBBII")
MESSAGE_FIXED = struct.Struct("<QQBB6x")  # seq, size, digest_alg, digest_len, reserved
# Ack mode: seq, size, digest_alg, digest_len, dead, reserved, deliveries,
# token, note_len, reserved, died_after.
MESSAGE_ACK_FIXED = struct.Struct("<QQBBBxIQHxxI")
SETTLE_FIXED = struct.Struct("<QIHH")    # token, delay_ms, text_len, reserved
SETTLED_BODY = struct.Struct("<B3xI")    # outcome, reserved, lease_ms
KICK_FIXED = struct.Struct("<IBBBB")     # count, name_len, 3 reserved
KICKED_BODY = struct.Struct("<I4x")      # moved, reserved
DISOWN_FIXED = struct.Struct("<BBBB")    # name_len, 3 reserved
QUEUE_OP_FIXED = struct.Struct("<IBBBB")  # PEEK, PURGE, DELETE: index, name_len, 3 reserved
PURGED_BODY = struct.Struct("<QQ")       # PURGED, DELETED: freed, pending
GROUP_FIXED = struct.Struct("<BBBB")     # action, name_len, group_len, reserved
GROUPED_BODY = struct.Struct("<B7xQQ")   # changed, reserved, count, pending
CONFIG_FIXED = struct.Struct("<IIB7x")   # max_deliveries, lease_ms, name_len, reserved
ERROR_FIXED = struct.Struct("<HH")       # code, reserved
U64 = struct.Struct("<Q")

# Error codes (section 7).
ERROR_NAMES = {
    1: "MALFORMED", 2: "VERSION", 3: "UNKNOWN_OP", 4: "BAD_QUEUE_NAME",
    5: "TOO_LARGE", 6: "EMPTY", 7: "BAD_PAGE", 8: "CANCELLED",
    9: "SHUTTING_DOWN", 10: "LIMIT", 11: "INTERNAL", 12: "BAD_DESCRIPTOR",
    13: "BAD_REQUEST", 14: "DENIED", 15: "FORBIDDEN", 16: "IN_USE", 17: "STALE",
    18: "NO_GROUP",
}
STALE, NO_GROUP = 17, 18
# Codes after which the server closes the connection, whatever their id.
FATAL_CODES = frozenset((1, 2, 9, 14))

_NAME_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


# -- errors -------------------------------------------------------------------

class MachqError(Exception):
    """Base class of the errors this module raises."""


class ProtocolError(MachqError, ConnectionError):
    """The peer broke the protocol; the connection has been closed."""


class ConnectionClosed(MachqError, ConnectionError):
    """The connection ended: the server closed it, or close() was called.

    `error` is the ServerError the server ended the connection with, if any
    (for example SHUTTING_DOWN, or MALFORMED after a protocol violation).
    """

    def __init__(self, why: str, error: "Optional[ServerError]" = None):
        super().__init__(why if error is None else "%s: %s" % (why, error))
        self.error = error


class ServerError(MachqError):
    """The server answered a request with an ERROR frame.

    `code` is the numeric code, `name` its protocol name ("EMPTY", ...),
    `text` the server's explanation (for people; do not parse it), `rid` the
    id the ERROR carried, and `fatal` whether the connection ended with it.
    """

    def __init__(self, code: int, text: str, rid: int, fatal: bool):
        self.code, self.text, self.rid, self.fatal = code, text, rid, fatal
        self.name = ERROR_NAMES.get(code, "code %d" % code)
        super().__init__("%s: %s" % (self.name, text))


class StaleError(ServerError):
    """ERROR STALE (version 3): a settle named no delivery this connection holds.

    The delivery was settled already, or its lease ran out and the message
    went back to its queue, or it was never delivered on this connection.
    Nothing was settled: do not count the message as processed.
    """


class NoGroupError(ServerError):
    """ERROR NO_GROUP (version 3): a reserve named a consumer group that the
    queue does not have, or a queue that does not exist (section 6.5).

    A RETRIEVE never creates a group: create it with Client.create_group.
    """


class Unsupported(MachqError):
    """The operation needs a newer protocol version than the connection's.

    Raised before anything is sent: the connection stays usable.
    """


class IntegrityError(MachqError):
    """A retrieved payload failed verification against its digest.

    The message is attached as `message` (a Delivery in ack mode), so a
    caller can still inspect it. In ack mode the delivery has been settled
    before the error is raised: `outcome` is the SETTLED outcome
    (OUTCOME_DEAD_LETTERED or OUTCOME_DROPPED for a digest mismatch,
    OUTCOME_REQUEUED for a message this client cannot verify), or None if
    the settle itself failed, its error then being `settle_error` (a
    STALE lease, a closed connection: either way the server puts the
    message back in its queue).
    """

    def __init__(self, reason: str, message: "Optional[Message]" = None):
        super().__init__(reason)
        self.reason = reason   # also the text of the NAK or TERM in ack mode
        self.message = message
        self.outcome: Optional[int] = None
        self.settle_error: Optional[BaseException] = None


class UnverifiableError(IntegrityError):
    """The payload's digest uses an algorithm this client cannot compute.

    Section 9: such a payload must not be accepted. A plain retrieve has
    taken it from its queue already; a reserve (ack mode) NAKs it, so that
    it goes back to its place for a consumer that can verify it.
    """


# -- values -------------------------------------------------------------------

@dataclass
class Message:
    """A retrieved, verified message."""
    seq: int          # sequence number in its queue, assigned at STORE
    data: bytes       # the payload
    digest_alg: int   # DIGEST_NONE, DIGEST_SHA256, ...
    digest: bytes     # as the sender computed it
    inline: bool      # True: travelled in the frame; False: as a sealed memfd
    queue: str = ""   # the queue it came from; "" for the private queue


    @property
    def payload(self) -> bytes:
        """The payload (the same as `data`)."""
        return self.data


@dataclass
class Delivery(Message):
    """A message taken in ack mode (reserve): it stays pending with its
    connection until settled with ack(), nak() or term(), until its lease
    runs out, or until the connection ends (then it goes back to its place
    in its queue).

    Settle a delivery once; a settle after its lease ran out raises
    StaleError. `outcome` records how this client settled it (None while
    pending).
    """
    deliveries: int = 0   # deliveries of the message in ack mode in this queue, this one included
    token: int = 0        # names this delivery in ACK, NAK, TOUCH and TERM
    dead: int = DEAD_LIVE   # DEAD_LIVE, or why a dead letter is one: DEAD_TERMED, DEAD_MAX_DELIVERIES
    died_after: int = 0   # a dead letter's deliveries in its queue when it became one
    note: str = ""        # a TERM's reason, or the last NAK's text; "" if none
    outcome: Optional[int] = None   # OUTCOME_* once settled by this client
    group: str = ""       # the consumer group it came through; "" for the queue itself
    client: "Optional[Client]" = field(default=None, repr=False, compare=False)

    @property
    def redelivered(self) -> bool:
        """Whether the message was delivered before in ack mode and not acknowledged."""
        return self.deliveries > 1

    @property
    def dead_reason(self) -> str:
        """Why the message is a dead letter: "live", "termed", "max-deliveries" or "dead N"."""
        return DEAD_NAMES.get(self.dead, "dead %d" % self.dead)

    def ack(self) -> int:
        """Acknowledge: the message is done and freed. Returns the SETTLED outcome."""
        self.outcome = self._client().ack(self.token)
        return self.outcome

    def nak(self, delay_ms: int = 0, reason: str = "") -> int:
        """Give the message back: it returns to its place in its queue after
        `delay_ms` (0: the server's growing backoff), with `reason` as its note.

        Returns the outcome: OUTCOME_REQUEUED, or OUTCOME_DEAD_LETTERED /
        OUTCOME_DROPPED if this was its last allowed delivery.
        """
        self.outcome = self._client().nak(self.token, delay_ms, reason)
        return self.outcome

    def touch(self) -> int:
        """Restart the lease from now; returns the lease in ms (0: the delivery has none)."""
        return self._client().touch(self.token)

    def term(self, reason: str = "") -> int:
        """Make the message a dead letter at once, with `reason` as its note.

        Returns OUTCOME_DEAD_LETTERED (moved to QUEUE.dlq) or, for the
        private queue, OUTCOME_DROPPED.
        """
        self.outcome = self._client().term(self.token, reason)
        return self.outcome

    def _client(self) -> "Client":
        if self.client is None:
            raise MachqError("this delivery belongs to no client")
        return self.client


@dataclass
class Peeked(Message):
    """A message looked at with peek() (version 3): a copy of what is at
    `index` in its queue's line, which stays there.

    A peek is not a delivery: there is nothing to settle. A page comes as
    a new descriptor of the same sealed memfd, read and closed by peek().
    """
    deliveries: int = 0   # deliveries of the message in ack mode in its queue so far
    dead: int = DEAD_LIVE   # DEAD_LIVE, or why a dead letter is one (in a .dlq queue)
    died_after: int = 0   # a dead letter's deliveries in its queue when it became one
    note: str = ""        # a TERM's reason, or the last NAK's text; "" if none
    index: int = 0        # its position in line when peeked, 0 = the oldest

    @property
    def redelivered(self) -> bool:
        """Whether the message was delivered before in ack mode and not acknowledged."""
        return self.deliveries > 0

    @property
    def dead_reason(self) -> str:
        """Why the message is a dead letter: "live", "termed", "max-deliveries" or "dead N"."""
        return DEAD_NAMES.get(self.dead, "dead %d" % self.dead)


@dataclass
class _Response:
    op: int
    flags: int
    body: bytes
    fds: List[int]


# -- helpers ------------------------------------------------------------------

def socket_path(target: str = "") -> str:
    """Resolve a target to a socket path (section 1).

    A target containing "/" is a path; anything else is a service name
    ("" means "machq") whose socket lives in the runtime directory.
    """
    if "/" in target:
        return target
    name = target or "machq"
    raw = name.encode("ascii", "replace")
    if name in (".", "..") or not 1 <= len(raw) <= MAX_NAME or not set(raw) <= _NAME_BYTES:
        raise ValueError("bad service name %r: use 1 to 255 characters from "
                         "[A-Za-z0-9._-], not . or .." % name)
    env = os.environ.get
    if env("MACHQ_RUNTIME_DIR"):
        rdir = env("MACHQ_RUNTIME_DIR")
    elif env("XDG_RUNTIME_DIR"):
        rdir = os.path.join(env("XDG_RUNTIME_DIR"), "machq")
    elif os.geteuid() == 0:
        rdir = "/run/machq"
    else:
        rdir = os.path.join(env("TMPDIR") or "/tmp", "machq-%d" % os.geteuid())
    return os.path.join(rdir, name + ".sock")


def frame(op: int, rid: int, body: bytes = b"", flags: int = 0, nfds: int = 0) -> bytes:
    """Encode one frame: the 16-byte header and `body`."""
    return HEADER.pack(HEADER.size + len(body), op, flags, nfds, 0, rid) + bytes(body)


def store_body(size: int, digest_alg: int, digest: bytes, queue: bytes) -> bytes:
    """Encode a STORE body without its payload (section 6.3)."""
    return STORE_FIXED.pack(size, digest_alg, len(digest), len(queue), 0) + digest + queue


def retrieve_body(queue: bytes, wait_ms: int = 0) -> bytes:
    """Encode a RETRIEVE body (section 6.5)."""
    return RETRIEVE_FIXED.pack(wait_ms, len(queue), 0, 0, 0) + queue


def retrieve_ack_body(queue: bytes, wait_ms: int = 0, lease_ms: int = 0, credit: int = 0,
                      group: bytes = b"") -> bytes:
    """Encode the body of a RETRIEVE in ack mode, sent with FLAG_ACK (section 6.5).

    A non-empty `group` takes through the queue's consumer group of that name.
    """
    return RETRIEVE_ACK_FIXED.pack(wait_ms, len(queue), len(group), 0, 0, lease_ms, credit) \
        + queue + group


def settle_body(token: int, delay_ms: int = 0, text: bytes = b"") -> bytes:
    """Encode the body of ACK, NAK, TOUCH or TERM (section 6.11)."""
    return SETTLE_FIXED.pack(token, delay_ms, len(text), 0) + text


def kick_body(queue: bytes, count: int = 0) -> bytes:
    """Encode a KICK body (section 6.12)."""
    return KICK_FIXED.pack(count, len(queue), 0, 0, 0) + queue


def queue_op_body(queue: bytes, index: int = 0) -> bytes:
    """Encode the body of PEEK, PURGE or DELETE (section 6.13)."""
    return QUEUE_OP_FIXED.pack(index, len(queue), 0, 0, 0) + queue


def group_body(action: int, queue: bytes, group: bytes) -> bytes:
    """Encode a GROUP body (section 6.14)."""
    return GROUP_FIXED.pack(action, len(queue), len(group), 0) + queue + group


def config_body(queue: bytes, max_deliveries: int = 0, lease_ms: int = 0) -> bytes:
    """Encode a CONFIG body (section 6.15)."""
    return CONFIG_FIXED.pack(max_deliveries, lease_ms, len(queue)) + queue


def make_page(data) -> int:
    """Return a new memfd holding `data`, sealed as section 8.2 requires.

    The caller owns the descriptor and must close it (after sending it).
    """
    fd = os.memfd_create("machq", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view, off = memoryview(data).cast("B"), 0
        while off < len(view):
            # pwrite leaves the file offset at 0: the retriever shares it.
            off += os.pwrite(fd, view[off:], off)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        return fd
    except BaseException:
        os.close(fd)
        raise


_REQUIRED_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK


def read_page(fd: int, size: int) -> bytes:
    """Return the contents of a received page (section 8.3).

    The descriptor shares the sender's file offset, so it is mapped rather
    than read. Its size and seals are checked first.
    """
    st_size = os.fstat(fd).st_size
    if st_size != size:
        raise IntegrityError("page holds %d bytes, the message declares %d" % (st_size, size))
    if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _REQUIRED_SEALS != _REQUIRED_SEALS:
        raise IntegrityError("page is not sealed against write, grow and shrink")
    if size == 0:
        return b""   # an empty file cannot be mapped
    with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
        return bytes(m)


def digest_of(alg: int, data) -> bytes:
    """Compute the digest of `data` under algorithm `alg` (section 9)."""
    if alg == DIGEST_NONE:
        return b""
    if alg == DIGEST_SHA256:
        return hashlib.sha256(data).digest()
    raise ValueError("digest algorithm %d is not supported by this client" % alg)


def verify(alg: int, digest: bytes, data) -> None:
    """Raise IntegrityError unless `digest` is the digest of `data` under `alg`.

    An algorithm this client does not know is a failure too: section 9 forbids
    accepting a payload that cannot be verified.
    """
    if alg == DIGEST_NONE:
        return
    if alg != DIGEST_SHA256:
        name = _DIGEST_NAMES.get(alg, "algorithm %d" % alg)
        raise UnverifiableError("cannot verify a %s digest: this client knows only SHA-256" % name)
    if not hmac.compare_digest(hashlib.sha256(data).digest(), digest):
        raise IntegrityError("payload does not match its SHA-256 digest")


def _close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _u32(what: str, value: int) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError("%s must be 0 to 0xFFFFFFFF" % what)
    return value


def _u64(what: str, value: int) -> int:
    if not 0 <= value <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError("%s must be 0 to 2**64-1" % what)
    return value


def _text(what: str, text: Union[str, bytes]) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if len(raw) > MAX_TEXT:
        raise ValueError("%s is %d bytes, at most %d" % (what, len(raw), MAX_TEXT))
    return raw


def _queue_name(queue: Union[str, bytes], what: str = "queue name") -> bytes:
    name = queue.encode("ascii") if isinstance(queue, str) else bytes(queue)
    if len(name) > MAX_NAME:
        raise ValueError("%s is %d bytes, at most %d" % (what, len(name), MAX_NAME))
    return name


# -- the client ---------------------------------------------------------------

class Client:
    """One connection to a machq server.

    Create it with Client.connect() (or the module's connect()). Responses
    are matched to requests by id; a response that arrives while another is
    awaited is kept until asked for, with any descriptor it carries.
    """

    def __init__(self, sock: socket.socket, *, inline_threshold: int = DEFAULT_INLINE_THRESHOLD,
                 digest_alg: int = DIGEST_SHA256):
        """Wrap a connected socket; connect() is the usual way to make one."""
        if digest_alg not in (DIGEST_NONE, DIGEST_SHA256):
            raise ValueError("digest algorithm %d is not supported by this client" % digest_alg)
        self.sock = sock
        self.digest_alg = digest_alg
        self.closed = False
        self._wanted_threshold = inline_threshold
        self.inline_threshold = inline_threshold
        # Server limits, filled in by the handshake.
        self.version = 0
        self.max_inline = 0
        self.max_frame = MAX_FRAME
        self.max_message = 0
        self.server_pid = 0
        # Receiving: bytes not yet decoded, and the stream position of _rbuf[0].
        self._rbuf = bytearray()
        self._rpos = 0
        # Descriptor batches not yet claimed: [start, end, fds] per recvmsg
        # that returned descriptors, [start, end) being the stream positions
        # of the bytes that came with them (section 4).
        self._batches: List[list] = []
        self._responses: Dict[int, _Response] = {}   # arrived, not yet collected
        # Queue, mode (True: ack mode) and group of each RETRIEVE not yet collected.
        self._queues: Dict[int, Tuple[str, bool, str]] = {}
        # The fatal ERROR the server sent, if any. The server closes the
        # connection after it, so no request may be sent any more, but the
        # responses that follow it (CANCELLED for each waiting RETRIEVE) are
        # still read until end of file.
        self._fatal: Optional[ServerError] = None
        self._why = "connection closed"
        self._next_id = 1

    @classmethod
    def connect(cls, target: str = "", *, inline_threshold: int = DEFAULT_INLINE_THRESHOLD,
                digest_alg: int = DIGEST_SHA256, timeout: Optional[float] = None,
                versions: Tuple[int, int] = (MIN_VERSION, VERSION),
                server_uids: Tuple[int, ...] = ()) -> "Client":
        """Connect to the server at `target` (a socket path or service name) and shake hands.

        Payloads up to `inline_threshold` bytes (capped by the server's
        max_inline) travel inline, larger ones as sealed memfds. `timeout`
        bounds each socket operation, in seconds: a receive that times out
        raises socket.timeout and leaves the connection usable (the answer
        can still be collected later), but a send that times out may have
        sent part of a frame, so the connection is then closed.
        `versions` is the (min, max) range offered in HELLO (default 1 to
        3); the server chooses one, found in `version` afterwards. Raises
        ServerError (VERSION, DENIED, LIMIT, ...) if the server refuses.
        Before sending anything it checks the server's credentials
        (SO_PEERCRED, PROTOCOL.md section 1): a server run by a user other
        than root, this process's, or one in `server_uids` raises
        PermissionError.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(socket_path(target))
            _check_server(sock, server_uids)
        except BaseException:
            sock.close()
            raise
        c = cls(sock, inline_threshold=inline_threshold, digest_alg=digest_alg)
        try:
            c._handshake(*versions)
        except BaseException:
            c.close()
            raise
        return c

    # -- requests ---------------------------------------------------------

    def store(self, data, queue: Union[str, bytes] = "", *, inline: Optional[bool] = None,
              owned: bool = False, wait: bool = False) -> int:
        """Store `data` at the tail of `queue` ("" = this connection's private queue).

        Returns the message's sequence number. `inline` forces the form
        (default: inline up to the inline threshold). With `owned`, a named
        queue this store creates belongs to this user (section 10). Raises
        ValueError, before sending anything, for a payload larger than the
        server's max_message (or than its max_inline, when forced inline).

        With `wait` (version 3) a store into a queue that is full by its
        own limits (--max-queue-messages, --max-queue-bytes, the private
        queue's; with consumer groups, any group's) waits for room instead
        of failing with ServerError LIMIT, for as long as it takes (on a
        connection with a `timeout`, a wait that outlasts it raises
        socket.timeout): use start_store() and cancel() to be able to give
        up. The server's totals and quotas still fail at once with LIMIT.
        """
        return self.store_result(self.start_store(data, queue, inline=inline, owned=owned,
                                                  wait=wait))

    def start_store(self, data, queue: Union[str, bytes] = "", *, inline: Optional[bool] = None,
                    owned: bool = False, wait: bool = False) -> int:
        """Send a STORE and return its id, without waiting for the answer.

        Collect the answer with store_result(id). A store sent with `wait`
        (version 3; Unsupported, without sending, below it) that waits for
        room can be cancelled with cancel(id): store_result() then raises
        ServerError CANCELLED, and nothing was stored (unless STORED came
        first: then the message is stored and store_result() returns its
        sequence number). See store() for the other arguments.
        """
        if wait:
            self._require(3, "a waiting STORE")
        view = memoryview(data).cast("B")
        size = len(view)
        if inline is None:
            inline = size <= self.inline_threshold
        if inline and size > self.max_inline:
            raise ValueError("a payload of %d bytes cannot travel inline: the server's "
                             "max_inline is %d" % (size, self.max_inline))
        if size > self.max_message:
            raise ValueError("a payload of %d bytes exceeds the server's max_message of %d"
                             % (size, self.max_message))
        body = store_body(size, self.digest_alg, digest_of(self.digest_alg, view), _queue_name(queue))
        flags = (FLAG_OWNED if owned else 0) | (FLAG_WAIT if wait else 0)
        if inline:
            return self.send_frame(STORE, body + view, flags=flags | FLAG_INLINE)
        fd = make_page(view)
        try:
            return self.send_frame(STORE, body, flags=flags, fd=fd)
        finally:
            os.close(fd)   # the kernel holds its own reference

    def store_result(self, rid: int) -> int:
        """Wait for the answer to STORE `rid` and return the message's sequence number.

        Raises ServerError (LIMIT, CANCELLED for a cancelled waiting store,
        SHUTTING_DOWN, ...) for an ERROR.
        """
        r = self.response(rid, STORED)
        if len(r.body) != U64.size:
            self._abort("STORED body is %d bytes, want 8" % len(r.body))
        return U64.unpack(r.body)[0]

    def start_retrieve(self, queue: Union[str, bytes] = "", wait_ms: int = 0, *,
                       owned: bool = False, ack: bool = False, lease_ms: int = 0,
                       credit: int = 0, group: Union[str, bytes] = "") -> int:
        """Send a RETRIEVE and return its id, without waiting for the answer.

        Collect the answer with result(id); cancel a waiting one with
        cancel(id). `wait_ms`: 0 answers at once, WAIT_FOREVER waits until
        cancelled. With `ack` the RETRIEVE is in ack mode (version 3; see
        reserve() for `lease_ms`, `credit` and `group`) and result()
        returns a Delivery; on a connection below version 3 it raises
        Unsupported without sending anything.
        """
        _u32("wait_ms", wait_ms)
        name = _queue_name(queue)
        gname = _queue_name(group, "group name")
        flags = FLAG_OWNED if owned else 0
        if ack:
            self._require(3, "ack mode")
            body = retrieve_ack_body(name, wait_ms, _u32("lease_ms", lease_ms),
                                     _u32("credit", credit), gname)
            flags |= FLAG_ACK
        elif lease_ms or credit or gname:
            raise ValueError("lease_ms, credit and group apply only to ack mode")
        else:
            body = retrieve_body(name, wait_ms)
        rid = self.send_frame(RETRIEVE, body, flags=flags)
        self._queues[rid] = (name.decode("ascii", "replace"), ack, gname.decode("ascii", "replace"))
        return rid

    def result(self, rid: int) -> Message:
        """Wait for the answer to RETRIEVE `rid` and return its verified message.

        Raises ServerError (EMPTY, CANCELLED, NoGroupError, ...) for an
        ERROR, and IntegrityError if the payload does not match its digest
        (its subclass UnverifiableError if this client cannot verify it).
        For a RETRIEVE in ack mode it returns a Delivery; a delivery that
        fails verification is settled first: NAKed if it cannot be
        verified, TERMed on a mismatch (section 9), and the error says how.
        """
        queue, ack, group = self._queues.pop(rid, ("", False, ""))
        r = self.response(rid, MESSAGE)
        seq, size, alg, digest, inline, extra, end = self._decode_message(r, ack, False)
        if ack:
            deliveries, token, dead, died_after, note = extra
            msg: Message = Delivery(seq, b"", alg, digest, inline, queue, deliveries, token,
                                    dead, died_after, note, group=group, client=self)
        else:
            msg = Message(seq, b"", alg, digest, inline, queue)
        try:
            self._load(msg, r, end, size)
        except IntegrityError as e:
            if isinstance(msg, Delivery):
                self._refuse(msg, e)
            raise
        except OSError as e:
            # The page could not be read: that is no verdict on the message.
            if isinstance(msg, Delivery) and not self.closed:
                try:
                    msg.nak(reason="cannot read the page: %s" % (e.strerror or e))
                except (MachqError, OSError):
                    pass   # the connection's end puts it back too
            raise
        return msg

    def _decode_message(self, r: _Response, ack: bool, peek: bool):
        """Check and decode a MESSAGE's fixed part, digest and note (section 6.6).

        Returns (seq, size, digest_alg, digest, inline, extra, end): `extra`
        is (deliveries, token, dead, died_after, note) for the ack-mode
        layout, else None; `end` is where the payload starts. A MESSAGE that
        breaks the protocol closes the connection (which also puts an
        ack-mode delivery back) and raises ProtocolError.
        """
        try:
            if bool(r.flags & FLAG_ACK) != ack:
                raise ValueError("the ACK flag is %s on the answer to a %s"
                                 % ("set" if r.flags & FLAG_ACK else "missing",
                                    "PEEK" if peek else "RETRIEVE %s it" % ("with" if ack else "without")))
            extra = None
            if ack:
                (seq, size, alg, dlen, dead, deliveries, token, note_len,
                 died_after) = MESSAGE_ACK_FIXED.unpack_from(r.body)
                fixed = MESSAGE_ACK_FIXED.size
                if peek and token != 0:
                    raise ValueError("token %d on the answer to a PEEK, want 0" % token)
                if not peek and token == 0:
                    raise ValueError("token 0")
                if note_len > MAX_TEXT:
                    raise ValueError("note of %d bytes" % note_len)
            else:
                seq, size, alg, dlen = MESSAGE_FIXED.unpack_from(r.body)
                fixed, note_len = MESSAGE_FIXED.size, 0
            if dlen > MAX_DIGEST:
                raise ValueError("digest of %d bytes" % dlen)
            end = fixed + dlen + note_len
            if len(r.body) < end:
                raise ValueError("digest and note do not fit")
            digest = bytes(r.body[fixed:fixed + dlen])
            if ack:
                note = bytes(r.body[fixed + dlen:end]).decode("utf-8", "replace")
                extra = (deliveries, token, dead, died_after, note)
            inline = bool(r.flags & FLAG_INLINE)
            if inline and (r.fds or len(r.body) - end != size):
                raise ValueError("inline MESSAGE carries a descriptor or the wrong payload size")
            if not inline and (len(r.fds) != 1 or len(r.body) != end):
                raise ValueError("out-of-line MESSAGE without exactly one descriptor")
        except (struct.error, ValueError) as e:
            _close_fds(r.fds)
            self._abort("bad MESSAGE: %s" % e)
        return seq, size, alg, digest, inline, extra, end

    @staticmethod
    def _load(msg: Message, r: _Response, end: int, size: int) -> None:
        """Fill in msg.data from a decoded MESSAGE, close its descriptor,
        and verify the payload; an IntegrityError carries `msg`."""
        try:
            if msg.inline:
                msg.data = bytes(r.body[end:])
            else:
                try:
                    msg.data = read_page(r.fds[0], size)
                finally:
                    os.close(r.fds[0])   # the receiver owns the received descriptor
            verify(msg.digest_alg, msg.digest, msg.data)
        except IntegrityError as e:
            e.message = msg
            raise

    def retrieve(self, queue: Union[str, bytes] = "", wait_ms: int = 0, *,
                 owned: bool = False) -> Message:
        """Take the oldest message of `queue`.

        Raises ServerError EMPTY when there is none (within `wait_ms`).
        """
        return self.result(self.start_retrieve(queue, wait_ms, owned=owned))

    def reserve(self, queue: Union[str, bytes] = "", wait_ms: int = 0, *, lease_ms: int = 0,
                credit: int = 0, owned: bool = False, group: Union[str, bytes] = "") -> Delivery:
        """Take the oldest message of `queue` in ack mode (version 3).

        The message stays pending with this connection until the returned
        Delivery is settled (ack, nak, term), its lease runs out, or the
        connection ends; then it goes back to its place in its queue.
        `lease_ms`: 0 = the server's default lease (none unless machqd has
        --ack-lease), NO_LEASE = none, else milliseconds without a settle or
        touch after which the server takes the message back. `credit`: the
        most unsettled deliveries this connection may hold for this request
        to be served (0 = the server's maximum); over it, a request without
        a wait fails with ServerError LIMIT and a waiting one waits for
        credit as well as for a message. `group`: take through the named
        queue's consumer group of that name (section 10.2), which must
        exist (create_group); each group receives every message stored
        into the queue, and the consumers of one group share its messages.

        Raises ServerError EMPTY when there is none (within `wait_ms`),
        NoGroupError for a group the queue does not have (or a queue that
        does not exist), CANCELLED if the group or the queue is deleted
        while the request waits, Unsupported (without sending) on a
        connection below version 3, and IntegrityError /
        UnverifiableError as result() describes.
        """
        return self.result(self.start_retrieve(queue, wait_ms, owned=owned, ack=True,
                                               lease_ms=lease_ms, credit=credit, group=group))

    def ack(self, token: int) -> int:
        """ACK the delivery named `token`; returns the SETTLED outcome (section 6.11).

        Raises StaleError if this connection holds no such delivery.
        """
        return self.settle(ACK, token)[0]

    def nak(self, token: int, delay_ms: int = 0, reason: Union[str, bytes] = "") -> int:
        """NAK the delivery named `token`: back to its place after `delay_ms`
        (0: the server's backoff), with `reason` as its note. Returns the outcome."""
        return self.settle(NAK, token, delay_ms, reason)[0]

    def touch(self, token: int) -> int:
        """TOUCH the delivery named `token`; returns the lease now running, in ms (0: none)."""
        return self.settle(TOUCH, token)[1]

    def term(self, token: int, reason: Union[str, bytes] = "") -> int:
        """TERM the delivery named `token`: a dead letter at once. Returns the outcome."""
        return self.settle(TERM, token, 0, reason)[0]

    def settle(self, op: int, token: int, delay_ms: int = 0,
               text: Union[str, bytes] = "") -> Tuple[int, int]:
        """Send ACK, NAK, TOUCH or TERM and return SETTLED's (outcome, lease_ms).

        An outcome this client does not know is success of an unknown kind
        (section 6.11). Raises Unsupported, without sending, on a connection
        below version 3, and ValueError for a delay or text the operation
        does not take.
        """
        if op not in (ACK, NAK, TOUCH, TERM):
            raise ValueError("op 0x%02x is not ACK, NAK, TOUCH or TERM" % op)
        self._require(3, "acknowledged delivery")
        raw = _text("the text", text)
        if delay_ms and op != NAK:
            raise ValueError("only NAK takes a delay")
        if raw and op not in (NAK, TERM):
            raise ValueError("only NAK and TERM take a text")
        body = settle_body(_u64("token", token), _u32("delay_ms", delay_ms), raw)
        r = self.response(self.send_frame(op, body), SETTLED)
        if len(r.body) != SETTLED_BODY.size:
            self._abort("SETTLED body is %d bytes, want 8" % len(r.body))
        outcome, lease_ms = SETTLED_BODY.unpack(r.body)
        return outcome, lease_ms

    def kick(self, queue: Union[str, bytes], count: int = 0) -> int:
        """Move up to `count` dead letters (0 = all) from QUEUE.dlq back to `queue`.

        `queue` is the queue they came from, not the .dlq name. Each goes
        back to its place by seq, as a live message. Returns how many moved.
        Raises Unsupported, without sending, below version 3.
        """
        self._require(3, "KICK")
        body = kick_body(_queue_name(queue), _u32("count", count))
        r = self.response(self.send_frame(KICK, body), KICKED)
        if len(r.body) != KICKED_BODY.size:
            self._abort("KICKED body is %d bytes, want 8" % len(r.body))
        return KICKED_BODY.unpack(r.body)[0]

    def peek(self, queue: Union[str, bytes] = "", index: int = 0) -> Peeked:
        """Look at the message at `index` in `queue`'s line (0 = the oldest)
        without taking it (version 3, section 6.13).

        Returns a verified Peeked message, with its deliveries so far, and
        for a dead letter (in a .dlq queue) why it is one, after how many
        deliveries, and its note. Messages pending with consumers, or NAKed
        and waiting out a delay, are not in line. Raises ServerError EMPTY
        for a queue that does not exist or holds no more than `index`
        messages in line; IntegrityError / UnverifiableError (carrying the
        message) if the payload fails verification: nothing is settled, the
        message stays in its queue. Unsupported, without sending, below
        version 3.
        """
        self._require(3, "PEEK")
        name = _queue_name(queue)
        r = self.response(self.send_frame(PEEK, queue_op_body(name, _u32("index", index))), MESSAGE)
        seq, size, alg, digest, inline, extra, end = self._decode_message(r, True, True)
        deliveries, _, dead, died_after, note = extra
        msg = Peeked(seq, b"", alg, digest, inline, name.decode("ascii", "replace"),
                     deliveries, dead, died_after, note, index)
        self._load(msg, r, end, size)
        return msg

    def purge(self, queue: Union[str, bytes] = "") -> Tuple[int, int]:
        """Free every message of `queue` (version 3, section 6.13).

        Those in line and those NAKed and waiting out a delay are freed at
        once; those pending with consumers are freed when they come back
        unacknowledged (a NAK of one answers OUTCOME_DROPPED). Waiting
        RETRIEVEs go on waiting. Returns (freed, pending): the messages
        freed at once, and those pending then. Unsupported, without sending,
        below version 3.
        """
        return self._queue_op(PURGE, PURGED, "PURGE", queue)

    def delete(self, queue: Union[str, bytes]) -> Tuple[int, int]:
        """Remove named queue `queue` with everything it holds, its consumer
        groups included (version 3, section 6.13).

        What it holds is freed as purge() frees it; each RETRIEVE waiting on
        it (or on one of its groups), and each STORE waiting for room in it,
        is answered with ServerError CANCELLED. Its dead-letter queue is
        left alone. Returns (freed, pending) as purge() does. The private
        queue cannot be deleted (ServerError BAD_QUEUE_NAME). Unsupported,
        without sending, below version 3.
        """
        return self._queue_op(DELETE, DELETED, "DELETE", queue)

    def _queue_op(self, op: int, want: int, what: str, queue: Union[str, bytes]) -> Tuple[int, int]:
        self._require(3, what)
        r = self.response(self.send_frame(op, queue_op_body(_queue_name(queue))), want)
        if len(r.body) != PURGED_BODY.size:
            self._abort("%sD body is %d bytes, want %d" % (what, len(r.body), PURGED_BODY.size))
        return PURGED_BODY.unpack(r.body)

    def create_group(self, queue: Union[str, bytes], group: Union[str, bytes],
                     from_oldest: bool = False, *, owned: bool = False) -> Tuple[bool, int]:
        """Create consumer group `group` of named queue `queue` (version 3,
        sections 6.14, 10.2).

        From then on every message stored into the queue goes to each of
        its groups, read with reserve(queue, group=...). A new group
        receives the messages stored from now on; with `from_oldest` it
        also takes every message the queue still holds. The queue is
        created if need be (with `owned`, as this user's). Returns
        (changed, adopted): whether the group was created (False: it
        existed already), and how many messages it took with `from_oldest`.
        Unsupported, without sending, below version 3.
        """
        action = GROUP_CREATE_FROM_OLDEST if from_oldest else GROUP_CREATE
        changed, count, _ = self._group(action, queue, group, FLAG_OWNED if owned else 0)
        return changed, count

    def delete_group(self, queue: Union[str, bytes], group: Union[str, bytes]) -> Tuple[bool, int, int]:
        """Delete consumer group `group` of `queue` (version 3, section 6.14).

        The messages in its line that no other group holds are freed, those
        pending with its consumers are freed when they come back
        unacknowledged, and each RETRIEVE waiting on the group is answered
        with ServerError CANCELLED. Returns (changed, freed, pending):
        whether the group existed, the messages in its line freed at once,
        and those then pending with its consumers. Unsupported, without
        sending, below version 3.
        """
        return self._group(GROUP_DELETE, queue, group, 0)

    def _group(self, action: int, queue, group, flags: int) -> Tuple[bool, int, int]:
        self._require(3, "GROUP")
        body = group_body(action, _queue_name(queue), _queue_name(group, "group name"))
        r = self.response(self.send_frame(GROUP, body, flags=flags), GROUPED)
        if len(r.body) != GROUPED_BODY.size:
            self._abort("GROUPED body is %d bytes, want %d" % (len(r.body), GROUPED_BODY.size))
        changed, count, pending = GROUPED_BODY.unpack(r.body)
        return bool(changed), count, pending

    def configure(self, queue: Union[str, bytes], max_deliveries: int = 0, lease_ms: int = 0, *,
                  owned: bool = False) -> None:
        """Set named queue `queue`'s own acknowledged-delivery settings,
        shared by its consumer groups (version 3, section 6.15).

        `max_deliveries`: deliveries in ack mode before a message becomes a
        dead letter (0 = the server's --max-deliveries). `lease_ms`: the
        lease of a reserve of the queue that asks for none (0 = the
        server's --ack-lease, NO_LEASE = none). The settings replace any set
        before, and STATS shows them. The queue is created if need be (with
        `owned`, as this user's). Unsupported, without sending, below
        version 3.
        """
        self._require(3, "CONFIG")
        body = config_body(_queue_name(queue), _u32("max_deliveries", max_deliveries),
                           _u32("lease_ms", lease_ms))
        r = self.response(self.send_frame(CONFIG, body, flags=FLAG_OWNED if owned else 0),
                          CONFIGURED)
        if r.body:
            self._abort("CONFIGURED body is %d bytes, want 0" % len(r.body))

    def disown(self, queue: Union[str, bytes]) -> None:
        """Give up the name of an owned named queue (version 2, section 6.10).

        Raises ServerError FORBIDDEN if it is not this user's, IN_USE if it
        holds messages or has waiting RETRIEVEs; Unsupported, without
        sending, on a version-1 connection.
        """
        self._require(2, "DISOWN")
        name = _queue_name(queue)
        r = self.response(self.send_frame(DISOWN, DISOWN_FIXED.pack(len(name), 0, 0, 0) + name),
                          DISOWNED)
        if r.body:
            self._abort("DISOWNED body is %d bytes, want 0" % len(r.body))

    def cancel(self, rid: int) -> None:
        """Ask the server to end waiting RETRIEVE `rid`, or STORE `rid`
        waiting for room (start_store with `wait`).

        CANCEL has no response. The request still gets exactly one answer,
        which must be collected: with result(rid) for a RETRIEVE,
        ServerError CANCELLED, or a message that arrived first (keep it; it
        has left the queue); with store_result(rid) for a STORE,
        ServerError CANCELLED (nothing stored), or the sequence number if it
        was stored first. CANCEL gets a fresh id like any request, so that
        an ERROR answering a refused CANCEL can never look like a
        connection-level error.
        """
        self.send_frame(CANCEL, U64.pack(rid))

    def stats(self) -> dict:
        """Return the server's statistics: the STATS JSON document as a dict."""
        r = self.response(self.send_frame(STAT), STATS)
        return json.loads(r.body.decode("utf-8"))

    def close(self) -> None:
        """Close the connection and every received descriptor not yet handed out."""
        self._end()
        for r in self._responses.values():
            _close_fds(r.fds)
        self._responses, self._queues = {}, {}

    def _end(self) -> None:
        """Close the socket; responses already received stay collectable."""
        if not self.closed:
            self.closed = True
            self.sock.close()
        for batch in self._batches:
            _close_fds(batch[2])
        self._batches = []

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- frames -------------------------------------------------------------
    #
    # send_frame and response are the layer the requests above are built
    # on. They are public for tests and for operations this module lacks.

    def send_frame(self, op: int, body=b"", *, flags: int = 0, fd: Optional[int] = None,
                   rid: Optional[int] = None) -> int:
        """Send one frame and return its id (a fresh one unless `rid` is given).

        With `fd`, the frame declares one descriptor and the descriptor is
        attached to the sendmsg that carries the frame's first byte
        (section 4). The caller keeps ownership of `fd`.
        """
        if self.closed or self._fatal is not None:
            raise self._closed_error()
        if rid is None:
            rid, self._next_id = self._next_id, self._next_id + 1
        data = frame(op, rid, body, flags, 0 if fd is None else 1)
        if len(data) > self.max_frame:
            raise ValueError("frame of %d bytes exceeds the maximum of %d" % (len(data), self.max_frame))
        try:
            if fd is None:
                self.sock.sendall(data)
            else:
                sent = socket.send_fds(self.sock, [data], [fd])
                if sent < len(data):   # the rest goes without ancillary data
                    self.sock.sendall(memoryview(data)[sent:])
        except (BrokenPipeError, ConnectionResetError):
            # The server has closed. Read what it sent first: it may say why.
            self._drain()
            raise self._closed_error() from None
        except OSError:
            self.close()   # a partial frame may have been sent: the stream is lost
            raise
        return rid

    def response(self, rid: int, want_op: int) -> _Response:
        """Wait for the response to request `rid`; it must be a `want_op` frame.

        An ERROR is raised as ServerError. The returned descriptors belong
        to the caller.
        """
        while rid not in self._responses:
            if self.closed:
                raise self._closed_error()
            self._receive()
        r = self._responses.pop(rid)
        if r.op == ERROR:
            _close_fds(r.fds)
            raise self._error(r.body, rid)
        if r.op != want_op:
            _close_fds(r.fds)
            self._abort("request %d was answered with op 0x%02x, want 0x%02x" % (rid, r.op, want_op))
        return r

    # -- internals ------------------------------------------------------------

    def _handshake(self, lowest: int, highest: int) -> None:
        try:
            self.send_frame(HELLO, HELLO_BODY.pack(MAGIC, lowest, highest), rid=0)
            # A server refusing the connection (DENIED, LIMIT) may answer
            # before HELLO arrives and close: then sending HELLO can fail,
            # and the ERROR already read says why.
        except ConnectionClosed as e:
            if e.error is not None:
                raise e.error from None
            raise
        r = self.response(0, WELCOME)   # an ERROR here ends the connection
        try:
            magic, version, _, max_inline, max_frame, max_message, pid = WELCOME_BODY.unpack_from(r.body)
        except struct.error:
            self._abort("WELCOME body is %d bytes, want at least 28" % len(r.body))
        if magic != MAGIC or not lowest <= version <= highest:
            self._abort("bad WELCOME: magic %r, version %d" % (magic, version))
        self.version, self.max_inline, self.max_message, self.server_pid = \
            version, min(max_inline, MAX_INLINE), max_message, pid
        self.max_frame = min(max_frame, MAX_FRAME)
        self.inline_threshold = min(self._wanted_threshold, self.max_inline)

    def _require(self, version: int, what: str) -> None:
        """Refuse, before sending, what the connection's version lacks."""
        if self.closed or self._fatal is not None:
            raise self._closed_error()
        if self.version < version:
            raise Unsupported("%s needs protocol version %d; the server chose version %d for "
                              "this connection" % (what, version, self.version))

    def _refuse(self, d: Delivery, e: IntegrityError) -> None:
        """Settle a delivery that failed verification, so that it is not lost.

        One this client cannot verify is NAKed (back to its place, for a
        consumer that can: section 9); one that does not match its digest is
        TERMed, and waits in the dead-letter queue. What happened is
        recorded on the error.
        """
        try:
            if isinstance(e, UnverifiableError):
                e.outcome = d.nak(reason=e.reason)
            else:
                e.outcome = d.term(reason=e.reason)
        except (MachqError, OSError) as settle_error:
            e.settle_error = settle_error
            return
        e.args = ("%s (%s)" % (e.reason, OUTCOME_NAMES.get(e.outcome, "outcome %d" % e.outcome)),)

    @staticmethod
    def _error(body: bytes, rid: int) -> ServerError:
        """Decode an ERROR body into a ServerError."""
        code = ERROR_FIXED.unpack_from(body)[0]
        text = bytes(body[ERROR_FIXED.size:]).decode("utf-8", "replace")
        # Fatal: a fatal code, and any ERROR with id 0. This client uses id
        # 0 only for HELLO, so an ERROR with id 0 is either the answer to
        # HELLO (VERSION, MALFORMED, or DENIED / LIMIT in place of WELCOME)
        # or a connection-level error (section 7): the server closes.
        cls = {STALE: StaleError, NO_GROUP: NoGroupError}.get(code, ServerError)
        return cls(code, text, rid, code in FATAL_CODES or rid == 0)

    def _receive(self) -> None:
        """Read the next frame and file it under its id."""
        op, flags, rid, body, fds = self._read_frame()
        if op == ERROR:
            if fds or len(body) < ERROR_FIXED.size:
                _close_fds(fds)
                self._abort("malformed ERROR frame")
            err = self._error(body, rid)
            if err.fatal and self._fatal is None:
                # The connection is ending: remember why, so that requests
                # still pending can say so when the server closes.
                self._fatal = err
        if rid in self._responses:
            _close_fds(fds)
            self._abort("two responses with id %d" % rid)
        self._responses[rid] = _Response(op, flags, body, fds)

    def _read_frame(self):
        """Return (op, flags, id, body, fds) of the next frame.

        Descriptors are matched to frames by stream position (section 4):
        a frame declaring nfds = 1 takes the batch of descriptors that came
        with the bytes among which it starts.
        """
        while True:
            if len(self._rbuf) >= HEADER.size:
                length, op, flags, nfds, rsv, rid = HEADER.unpack_from(self._rbuf)
                if not HEADER.size <= length <= MAX_FRAME or rsv or nfds > 1:
                    self._abort("malformed frame header (length %d, reserved %d, nfds %d)"
                                % (length, rsv, nfds))
                if len(self._rbuf) >= length:
                    fds = self._claim(nfds)
                    body = bytes(self._rbuf[HEADER.size:length])
                    del self._rbuf[:length]
                    self._rpos += length
                    return op, flags, rid, body, fds
            self._check_stray()
            self._recv()

    def _recv(self) -> None:
        """One recvmsg: append the bytes, record the descriptors as a batch."""
        try:
            data, fds, mflags, _ = socket.recv_fds(
                self.sock, 1 << 20, SCM_MAX_FD, socket.MSG_CMSG_CLOEXEC)
        except ConnectionResetError:
            # The server closed with some of our bytes unread. Everything it
            # sent before closing has been read already: same as end of file.
            data, fds, mflags = b"", [], 0
        except socket.timeout:
            raise   # nothing was read: the stream is intact
        except OSError:
            self.close()
            raise
        start = self._rpos + len(self._rbuf)
        if fds:
            self._batches.append([start, start + len(data), list(fds)])
        if mflags & socket.MSG_CTRUNC:
            self._abort("descriptors were lost (MSG_CTRUNC)")
        if fds and not data:
            self._abort("descriptors arrived without data")
        if not data:
            if self._rbuf:
                self._abort("the server closed the connection in the middle of a frame")
            self._why = "the server closed the connection"
            self._end()
            raise self._closed_error()
        self._rbuf += data

    def _claim(self, nfds: int) -> List[int]:
        """Hand the frame starting at _rpos the descriptors it declares, or fail."""
        self._check_stray()
        if nfds == 0:
            return []
        if not self._batches or self._batches[0][0] > self._rpos:
            self._abort("a frame declared a descriptor that did not come with it")
        batch = self._batches[0]
        if len(batch[2]) != nfds:
            self._abort("a frame declared %d descriptor(s), its sendmsg carried %d"
                        % (nfds, len(batch[2])))
        self._batches.pop(0)
        return batch[2]

    def _check_stray(self) -> None:
        if self._batches and self._batches[0][1] <= self._rpos:
            self._abort("descriptors arrived that no frame declared")

    def _drain(self) -> None:
        """After a failed send: read whatever the server sent before it closed."""
        try:
            while not self.closed:
                self._receive()
        except (MachqError, OSError):
            pass

    def _closed_error(self) -> ConnectionClosed:
        if self._fatal is not None:
            return ConnectionClosed("the server ended the connection", self._fatal)
        return ConnectionClosed(self._why)

    def _abort(self, why: str):
        self.close()
        raise ProtocolError(why)


def _check_server(sock: socket.socket, server_uids: Tuple[int, ...]) -> None:
    """Refuse a server run by an untrusted user (PROTOCOL.md section 1)."""
    cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", cred)
    if uid not in (0, os.geteuid()) and uid not in server_uids:
        raise PermissionError(
            f"machq: the server runs as uid {uid} (pid {pid}), not as you or root; "
            f"nothing was sent (pass server_uids=({uid},) if you trust it)")


def connect(target: str = "", **kwargs) -> Client:
    """Connect to a machq server; see Client.connect."""
    return Client.connect(target, **kwargs)
