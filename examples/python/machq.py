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

__all__ = [
    "Client", "Message", "Delivery", "connect", "socket_path",
    "MachqError", "ProtocolError", "ConnectionClosed", "ServerError", "StaleError",
    "IntegrityError", "UnverifiableError", "Unsupported",
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
WELCOME, STORED, MESSAGE, STATS, ERROR = 0x81, 0x82, 0x83, 0x85, 0xFF
DISOWNED = 0x86                                        # version 2
SETTLED, KICKED = 0x87, 0x8B                           # version 3

# Header flags.
FLAG_INLINE = 0x01   # STORE and MESSAGE: the payload is in the frame
FLAG_OWNED = 0x02    # STORE and RETRIEVE: a named queue this creates is the sender's
FLAG_ACK = 0x04      # RETRIEVE and MESSAGE, version 3: ack mode

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
RETRIEVE_ACK_FIXED = struct.Struct("<IBBBBII")  # wait_ms, name_len, 3 reserved, lease_ms, credit
MESSAGE_FIXED = struct.Struct("<QQBB6x")  # seq, size, digest_alg, digest_len, reserved
# Ack mode: seq, size, digest_alg, digest_len, dead, reserved, deliveries,
# token, note_len, reserved, died_after.
MESSAGE_ACK_FIXED = struct.Struct("<QQBBBxIQHxxI")
SETTLE_FIXED = struct.Struct("<QIHH")    # token, delay_ms, text_len, reserved
SETTLED_BODY = struct.Struct("<B3xI")    # outcome, reserved, lease_ms
KICK_FIXED = struct.Struct("<IBBBB")     # count, name_len, 3 reserved
KICKED_BODY = struct.Struct("<I4x")      # moved, reserved
DISOWN_FIXED = struct.Struct("<BBBB")    # name_len, 3 reserved
ERROR_FIXED = struct.Struct("<HH")       # code, reserved
U64 = struct.Struct("<Q")

# Error codes (section 7).
ERROR_NAMES = {
    1: "MALFORMED", 2: "VERSION", 3: "UNKNOWN_OP", 4: "BAD_QUEUE_NAME",
    5: "TOO_LARGE", 6: "EMPTY", 7: "BAD_PAGE", 8: "CANCELLED",
    9: "SHUTTING_DOWN", 10: "LIMIT", 11: "INTERNAL", 12: "BAD_DESCRIPTOR",
    13: "BAD_REQUEST", 14: "DENIED", 15: "FORBIDDEN", 16: "IN_USE", 17: "STALE",
}
STALE = 17
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


def retrieve_ack_body(queue: bytes, wait_ms: int = 0, lease_ms: int = 0, credit: int = 0) -> bytes:
    """Encode the body of a RETRIEVE in ack mode, sent with FLAG_ACK (section 6.5)."""
    return RETRIEVE_ACK_FIXED.pack(wait_ms, len(queue), 0, 0, 0, lease_ms, credit) + queue


def settle_body(token: int, delay_ms: int = 0, text: bytes = b"") -> bytes:
    """Encode the body of ACK, NAK, TOUCH or TERM (section 6.11)."""
    return SETTLE_FIXED.pack(token, delay_ms, len(text), 0) + text


def kick_body(queue: bytes, count: int = 0) -> bytes:
    """Encode a KICK body (section 6.12)."""
    return KICK_FIXED.pack(count, len(queue), 0, 0, 0) + queue


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


def _queue_name(queue: Union[str, bytes]) -> bytes:
    name = queue.encode("ascii") if isinstance(queue, str) else bytes(queue)
    if len(name) > MAX_NAME:
        raise ValueError("queue name is %d bytes, at most %d" % (len(name), MAX_NAME))
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
        # Queue and mode (True: ack mode) of each RETRIEVE not yet collected.
        self._queues: Dict[int, Tuple[str, bool]] = {}
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
              owned: bool = False) -> int:
        """Store `data` at the tail of `queue` ("" = this connection's private queue).

        Returns the message's sequence number. `inline` forces the form
        (default: inline up to the inline threshold). With `owned`, a named
        queue this store creates belongs to this user (section 10). Raises
        ValueError, before sending anything, for a payload larger than the
        server's max_message (or than its max_inline, when forced inline).
        """
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
        flags = FLAG_OWNED if owned else 0
        if inline:
            rid = self.send_frame(STORE, body + view, flags=flags | FLAG_INLINE)
        else:
            fd = make_page(view)
            try:
                rid = self.send_frame(STORE, body, flags=flags, fd=fd)
            finally:
                os.close(fd)   # the kernel holds its own reference
        r = self.response(rid, STORED)
        if len(r.body) != U64.size:
            self._abort("STORED body is %d bytes, want 8" % len(r.body))
        return U64.unpack(r.body)[0]

    def start_retrieve(self, queue: Union[str, bytes] = "", wait_ms: int = 0, *,
                       owned: bool = False, ack: bool = False, lease_ms: int = 0,
                       credit: int = 0) -> int:
        """Send a RETRIEVE and return its id, without waiting for the answer.

        Collect the answer with result(id); cancel a waiting one with
        cancel(id). `wait_ms`: 0 answers at once, WAIT_FOREVER waits until
        cancelled. With `ack` the RETRIEVE is in ack mode (version 3; see
        reserve() for `lease_ms` and `credit`) and result() returns a
        Delivery; on a connection below version 3 it raises Unsupported
        without sending anything.
        """
        _u32("wait_ms", wait_ms)
        name = _queue_name(queue)
        flags = FLAG_OWNED if owned else 0
        if ack:
            self._require(3, "ack mode")
            body = retrieve_ack_body(name, wait_ms, _u32("lease_ms", lease_ms), _u32("credit", credit))
            flags |= FLAG_ACK
        elif lease_ms or credit:
            raise ValueError("lease_ms and credit apply only to ack mode")
        else:
            body = retrieve_body(name, wait_ms)
        rid = self.send_frame(RETRIEVE, body, flags=flags)
        self._queues[rid] = (name.decode("ascii", "replace"), ack)
        return rid

    def result(self, rid: int) -> Message:
        """Wait for the answer to RETRIEVE `rid` and return its verified message.

        Raises ServerError (EMPTY, CANCELLED, ...) for an ERROR, and
        IntegrityError if the payload does not match its digest (its
        subclass UnverifiableError if this client cannot verify it). For a
        RETRIEVE in ack mode it returns a Delivery; a delivery that fails
        verification is settled first: NAKed if it cannot be verified,
        TERMed on a mismatch (section 9), and the error says how.
        """
        queue, ack = self._queues.pop(rid, ("", False))
        r = self.response(rid, MESSAGE)
        try:
            if bool(r.flags & FLAG_ACK) != ack:
                raise ValueError("the ACK flag is %s on the answer to a RETRIEVE %s it"
                                 % ("set" if r.flags & FLAG_ACK else "missing",
                                    "with" if ack else "without"))
            if ack:
                (seq, size, alg, dlen, dead, deliveries, token, note_len,
                 died_after) = MESSAGE_ACK_FIXED.unpack_from(r.body)
                fixed = MESSAGE_ACK_FIXED.size
                if token == 0:
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
            note = bytes(r.body[fixed + dlen:end]).decode("utf-8", "replace")
            inline = bool(r.flags & FLAG_INLINE)
            if inline and (r.fds or len(r.body) - end != size):
                raise ValueError("inline MESSAGE carries a descriptor or the wrong payload size")
            if not inline and (len(r.fds) != 1 or len(r.body) != end):
                raise ValueError("out-of-line MESSAGE without exactly one descriptor")
        except (struct.error, ValueError) as e:
            # Closing the connection also puts an ack-mode delivery back.
            _close_fds(r.fds)
            self._abort("bad MESSAGE: %s" % e)
        if ack:
            msg: Message = Delivery(seq, b"", alg, digest, inline, queue, deliveries, token,
                                    dead, died_after, note, client=self)
        else:
            msg = Message(seq, b"", alg, digest, inline, queue)
        try:
            if inline:
                msg.data = bytes(r.body[end:])
            else:
                try:
                    msg.data = read_page(r.fds[0], size)
                finally:
                    os.close(r.fds[0])   # the retriever owns the received descriptor
            verify(alg, digest, msg.data)
        except IntegrityError as e:
            e.message = msg
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

    def retrieve(self, queue: Union[str, bytes] = "", wait_ms: int = 0, *,
                 owned: bool = False) -> Message:
        """Take the oldest message of `queue`.

        Raises ServerError EMPTY when there is none (within `wait_ms`).
        """
        return self.result(self.start_retrieve(queue, wait_ms, owned=owned))

    def reserve(self, queue: Union[str, bytes] = "", wait_ms: int = 0, *, lease_ms: int = 0,
                credit: int = 0, owned: bool = False) -> Delivery:
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
        credit as well as for a message.

        Raises ServerError EMPTY when there is none (within `wait_ms`),
        Unsupported (without sending) on a connection below version 3, and
        IntegrityError / UnverifiableError as result() describes.
        """
        return self.result(self.start_retrieve(queue, wait_ms, owned=owned, ack=True,
                                               lease_ms=lease_ms, credit=credit))

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
        """Ask the server to end waiting RETRIEVE `rid`.

        CANCEL has no response. The RETRIEVE still gets exactly one answer,
        which must be collected with result(rid): ServerError CANCELLED, or
        a message that arrived first (keep it; it has left the queue).
        CANCEL gets a fresh id like any request, so that an ERROR answering
        a refused CANCEL can never look like a connection-level error.
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
        cls = StaleError if code == STALE else ServerError
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
