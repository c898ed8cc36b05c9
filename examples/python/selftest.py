"""Self-test of machq.py against a running machq server.

    python3 selftest.py SOCKET_PATH
    python3 selftest.py --max-queue-messages N SOCKET_PATH

It tests whichever module machq Python imports: the machq.py beside it
(a script's directory comes first on sys.path), or, copied where no
machq.py lies beside it, the installed package. The first line it prints
names the module's file. test_machq.py runs it under unittest, taking
the socket from the environment.

Prints one line per check ("ok" or "FAIL", the check, details) and exits
with status 1 if any check failed (2 on a usage error). Each check states
what docs/PROTOCOL.md says should happen; a failure means the client, the
document or the server is wrong.

The first form expects a server without per-queue limits. The second runs
only the checks of STORE's WAIT flag (waiting for room in a full queue),
against a server started with --max-queue-messages N.

The test uses the connection's private queue and named queues called
selftest-PID-* (with their dead-letter queues selftest-PID-*.dlq), and
briefly the queues "." and "..". It expects a server speaking version 3
(acknowledged delivery), and assumes nothing of its --max-deliveries or
--nak-backoff; a default lease (--ack-lease) must leave the checks time to
settle what they take. It should be the server's only client while it
runs: the consumer-group checks compare the server's totals (STATS
messages and bytes) before and after.

Nothing waits a fixed time for the server: a NAKed message's delay (the
server's backoff, 10 ms by default) or a lease running out is awaited by
polling STAT, or by a waiting RETRIEVE with a deadline.
"""

import json
import os
import socket
import struct
import sys
import time

import machq
from machq import (CANCEL, DEAD_LIVE, DEAD_MAX_DELIVERIES, DEAD_TERMED, DIGEST_BLAKE3,
                   DIGEST_SHA256, FLAG_INLINE, HEADER, HELLO, HELLO_BODY, MAGIC, NO_LEASE,
                   OUTCOME_ACKED, OUTCOME_DEAD_LETTERED, OUTCOME_DROPPED, OUTCOME_REQUEUED,
                   RETRIEVE, STAT, STATS, STORE, STORED, WAIT_FOREVER, ConnectionClosed,
                   IntegrityError, ServerError, StaleError, Unsupported, UnverifiableError)

INLINE_THRESHOLD = 4096   # so that 4096 B travels inline and 4097 B as a page
TIMEOUT = 60.0            # seconds any one socket operation may take
SIZES = (0, 1, 4095, 4096, 4097, 1 << 20, 16 << 20)
DEADLINE = 10.0           # seconds to wait for the server to do what it must do
WAIT_MS = int(DEADLINE * 1000)   # the same, as a RETRIEVE's wait_ms


class SelfTest:
    def __init__(self, path):
        self.path = path
        self.failures = 0
        self.prefix = "selftest-%d" % os.getpid()
        self.c = None

    # -- reporting --------------------------------------------------------

    def check(self, name, fn, *args):
        """Run one check: fn returns a detail string or raises."""
        try:
            detail = fn(*args)
        except Exception as e:   # report every failure and go on
            self.failures += 1
            print("FAIL  %s: %s: %s" % (name, type(e).__name__, e), flush=True)
            return False
        print("ok    %s%s" % (name, ": " + detail if detail else ""), flush=True)
        return True

    @staticmethod
    def expect_error(name, fn, *args, **kwargs):
        """Call fn, which must raise ServerError `name`; describe the error."""
        try:
            fn(*args, **kwargs)
        except ServerError as e:
            if e.name != name:
                raise AssertionError("got %s, want %s" % (e, name)) from e
            return "%s, id %d: %s" % (e.name, e.rid, e.text)
        raise AssertionError("no error, want " + name)

    def connect(self, **kw):
        kw.setdefault("timeout", TIMEOUT)
        return machq.connect(self.path, **kw)

    def queue(self, suffix):
        return "%s-%s" % (self.prefix, suffix)

    def qstat(self, name, c=None):
        """STATS of named queue `name`: all zeros if it is not listed (an
        empty queue nobody waits on is removed, section 10)."""
        for q in (c or self.c).stats()["queues"]:
            if q["name"] == name:
                return q
        return {"name": name, "messages": 0, "bytes": 0, "waiting": 0, "pending": 0, "delayed": 0,
                "blocked": 0}

    def gstat(self, name, group, c=None):
        """STATS of consumer group `group` of queue `name`, or None."""
        for g in self.qstat(name, c).get("groups", []):
            if g["name"] == group:
                return g
        return None

    def held(self):
        """The server's top-level (messages, bytes): every message it holds."""
        s = self.c.stats()
        return s["messages"], s["bytes"]
    def await_queue(self, name, what, **want):
        """Poll STAT until queue `name` shows the counts in `want` (for
        example messages=1, delayed=0); fail after DEADLINE seconds."""
        deadline = time.monotonic() + DEADLINE
        while True:
            q = self.qstat(name)
            if all(q.get(k) == v for k, v in want.items()):
                return q
            if time.monotonic() > deadline:
                raise AssertionError("after %gs queue %s shows %r, want %s (%s)"
                                     % (DEADLINE, name, q, want, what))
            time.sleep(0.002)   # between two STATs; the condition is what ends the wait

    def store_raw(self, queue, data, digest_alg, digest):
        """Store `data` inline with any digest: the server never verifies
        digests (sections 6.3, 9), so a message under an algorithm this
        client cannot compute (BLAKE3), or a wrong digest, can be crafted."""
        body = machq.store_body(len(data), digest_alg, digest, queue.encode())
        return machq.U64.unpack(self.c.response(
            self.c.send_frame(STORE, body + data, flags=FLAG_INLINE), STORED).body)[0]

    # -- checks -------------------------------------------------------------

    def handshake(self):
        self.c = self.connect(inline_threshold=INLINE_THRESHOLD)
        c = self.c
        assert c.version == 3, "the server chose version %d of 1 to 3" % c.version
        assert c.max_frame == machq.MAX_FRAME, c.max_frame
        return "version %d, max_inline %d, max_frame %d, max_message %d, server pid %d" % (
            c.version, c.max_inline, c.max_frame, c.max_message, c.server_pid)

    def round_trip(self, size, queue, inline=None):
        data = os.urandom(size)
        seq = self.c.store(data, queue, inline=inline)
        m = self.c.retrieve(queue)
        assert m.data == data, "payload differs"
        assert m.seq == seq, "seq %d, STORED said %d" % (m.seq, seq)
        want_inline = size <= INLINE_THRESHOLD if inline is None else inline
        assert m.inline == want_inline, "travelled %s" % ("inline" if m.inline else "as a page")
        assert m.digest_alg == DIGEST_SHA256
        return "seq %d, %s" % (seq, "inline" if m.inline else "sealed memfd")

    def waiting_retrieve_times_out(self):
        t0 = time.monotonic()
        r = self.expect_error("EMPTY", self.c.retrieve, self.queue("timeout"), 200)
        took = time.monotonic() - t0
        assert took >= 0.19, "answered after %.0f ms, before the 200 ms wait" % (took * 1000)
        return "%s after %.0f ms" % (r, took * 1000)

    def waiting_retrieve_served(self):
        q = self.queue("served")
        rid = self.c.start_retrieve(q, 10_000)
        # STATS is answered after the RETRIEVE is handled: it waits by now.
        waiting = {x["name"]: x["waiting"] for x in self.c.stats()["queues"]}
        assert waiting.get(q) == 1, "STATS shows %r waiting on %s" % (waiting.get(q), q)
        with self.connect() as other:
            seq = other.store(b"late", q)
        m = self.c.result(rid)
        assert m.data == b"late" and m.seq == seq and m.queue == q, m
        return "seq %d handed to the waiting RETRIEVE %d" % (seq, rid)

    def cancel(self):
        q = self.queue("cancel")
        rid = self.c.start_retrieve(q, WAIT_FOREVER)
        waiting = {x["name"]: x["waiting"] for x in self.c.stats()["queues"]}
        assert waiting.get(q) == 1, "STATS shows %r waiting on %s" % (waiting.get(q), q)
        self.c.cancel(rid)
        r = self.expect_error("CANCELLED", self.c.result, rid)
        self.c.stats()   # the connection stays open
        return r

    def malformed_cancel(self):
        # Section 6.7: BAD_REQUEST under the CANCEL's own id; not fatal.
        rid = self.c.send_frame(CANCEL, b"\x01\x02")
        r = self.expect_error("BAD_REQUEST", self.c.response, rid, STATS)
        self.c.stats()
        return r

    def stats(self):
        q = self.queue("stats")
        self.c.store(b"abc", q)
        s = self.c.stats()
        for k in ("clients", "messages", "bytes", "pages", "goroutines"):
            assert isinstance(s[k], int), "%s is %r" % (k, s.get(k))
        names = [x["name"] for x in s["queues"]]
        assert names == sorted(names), "queues not sorted by name"
        assert q in names, "%s not listed" % q
        x = s["queues"][names.index(q)]
        assert (x["messages"], x["bytes"], x["waiting"]) == (1, 3, 0), x
        self.c.retrieve(q)
        return "clients %d, messages %d, bytes %d, pages %d, %d named queue(s)" % (
            s["clients"], s["messages"], s["bytes"], s["pages"], len(names))

    def stat_with_body(self):
        # Section 6.8: the body is ignored (reserved for future use).
        rid = self.c.send_frame(STAT, b"reserved for future use")
        r = self.c.response(rid, STATS)
        assert isinstance(json.loads(r.body), dict)
        return "answered with STATS"

    def descriptor_on_stat_and_retrieve(self):
        # Section 4: closed by the server, the request served as if it had none.
        fd = os.memfd_create("stray")
        try:
            self.c.response(self.c.send_frame(STAT, fd=fd), STATS)
            rid = self.c.send_frame(RETRIEVE, machq.retrieve_body(b""), fd=fd)
            r = self.expect_error("EMPTY", self.c.response, rid, machq.MESSAGE)
        finally:
            os.close(fd)
        return "STAT answered with STATS; RETRIEVE answered " + r

    def dot_queue_names(self):
        # Section 10: "." and ".." are valid queue names (not service names).
        for q in (".", ".."):
            data = os.urandom(16)
            self.c.store(data, q)
            assert self.c.retrieve(q).data == data, "queue %r gave back other data" % q
        return "stored into and retrieved from queues . and .."

    def tampered(self, as_page):
        data = b"not what the digest says"
        body = machq.store_body(len(data), DIGEST_SHA256, bytes(32), b"")
        if as_page:
            fd = machq.make_page(data)
            try:
                rid = self.c.send_frame(STORE, body, fd=fd)
            finally:
                os.close(fd)
        else:
            rid = self.c.send_frame(STORE, body + data, flags=FLAG_INLINE)
        self.c.response(rid, STORED)   # the server does not check digests
        try:
            self.c.retrieve()
        except IntegrityError as e:
            assert e.message is not None and e.message.data == data
            return str(e)
        raise AssertionError("tampered payload accepted")

    def unknown_digest(self):
        # Section 9: an algorithm the receiver does not know is a failure.
        body = machq.store_body(2, DIGEST_BLAKE3, bytes(32), b"")
        self.c.response(self.c.send_frame(STORE, body + b"hi", flags=FLAG_INLINE), STORED)
        try:
            self.c.retrieve()
        except UnverifiableError as e:
            return str(e)
        raise AssertionError("unverifiable payload accepted")

    def malformed_retrieve(self):
        body = struct.pack("<IB3x", 0, 3) + b"ab"   # name_len 3, but 2 bytes follow
        rid = self.c.send_frame(RETRIEVE, body)
        r = self.expect_error("BAD_REQUEST", self.c.response, rid, machq.MESSAGE)
        self.c.stats()   # the connection stays open
        return r

    def inline_store_with_descriptor(self):
        fd = machq.make_page(b"x")
        try:
            body = machq.store_body(1, 0, b"", b"") + b"x"
            rid = self.c.send_frame(STORE, body, flags=FLAG_INLINE, fd=fd)
        finally:
            os.close(fd)
        return self.expect_error("BAD_DESCRIPTOR", self.c.response, rid, STORED)

    def unsealed_page(self):
        fd = os.memfd_create("unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.pwrite(fd, b"0123456789", 0)
            rid = self.c.send_frame(STORE, machq.store_body(10, 0, b"", b""), fd=fd)
        finally:
            os.close(fd)
        return self.expect_error("BAD_PAGE", self.c.response, rid, STORED)

    def version_errors(self):
        details = []
        for lo, hi in ((7, 9), (2, 1)):
            d = self.expect_error("VERSION", lambda: self.connect(versions=(lo, hi)))
            details.append("%d-%d: %s" % (lo, hi, d.split(":")[0]))
        # Section 5.1: VERSION carries the HELLO's id.
        frames, end = raw_exchange(self.path, machq.frame(HELLO, 7, HELLO_BODY.pack(MAGIC, 1, 0)))
        assert [(op, rid, code) for op, rid, code, _ in frames] == [(machq.ERROR, 7, 2)], frames
        details.append("HELLO id 7 offering 1-0: VERSION, id 7, then %s" % end)
        return "; ".join(details)

    def bad_header(self):
        # Section 3: a bad header is MALFORMED with id 0, and the connection
        # closes; the close may come as ECONNRESET (section 5.4).
        hello = machq.frame(HELLO, 0, HELLO_BODY.pack(MAGIC, 1, 1))
        bad = bytearray(machq.frame(STAT, 1))
        bad[7] = 1   # the reserved header byte
        frames, end = raw_exchange(self.path, hello + bytes(bad))
        ops = [(op, rid, code) for op, rid, code, _ in frames]
        assert ops == [(machq.WELCOME, 0, None), (machq.ERROR, 0, 1)], frames
        return "WELCOME, then MALFORMED id 0 (%s), then %s" % (frames[1][3], end)

    def duplicate_waiting_id(self):
        # Section 5.2: a second waiting RETRIEVE under the id of one still
        # waiting is fatal; the waiting one is answered CANCELLED.
        q = self.queue("duplicate")
        with self.connect() as c2:
            rid = c2.start_retrieve(q, WAIT_FOREVER)
            c2.send_frame(RETRIEVE, machq.retrieve_body(q.encode(), WAIT_FOREVER), rid=rid)
            r = self.expect_error("CANCELLED", c2.result, rid)
            try:
                c2.stats()
            except ConnectionClosed as e:
                assert e.error is not None and e.error.name == "MALFORMED" and e.error.rid == 0, e
                return "waiting RETRIEVE got %s; connection ended with %s" % (r.split(":")[0], e.error)
            raise AssertionError("connection still usable")

    # -- acknowledged delivery (version 3, sections 6.5, 6.6, 6.11, 6.12, 10.1)

    def older_versions(self):
        # Section 5.1: the server chooses the highest version in the range
        # offered; ack mode (and KICK) needs 3, DISOWN 2. The client refuses
        # them below that without sending anything.
        details = []
        for hi in (1, 2):
            with self.connect(versions=(1, hi)) as c:
                assert c.version == hi, "offered 1-%d, the server chose %d" % (hi, c.version)
                sent = c._next_id
                old = self.queue("old")
                for what, fn in (("reserve", lambda: c.reserve(old)),
                                 ("kick", lambda: c.kick(old)),
                                 ("ack", lambda: c.ack(1)),
                                 ("peek", lambda: c.peek(old)),
                                 ("purge", lambda: c.purge(old)),
                                 ("delete", lambda: c.delete(old)),
                                 ("create_group", lambda: c.create_group(old, "g")),
                                 ("delete_group", lambda: c.delete_group(old, "g")),
                                 ("configure", lambda: c.configure(old, 1)),
                                 ("a waiting store", lambda: c.store(b"x", old, wait=True))):
                    try:
                        fn()
                    except Unsupported:
                        pass
                    else:
                        raise AssertionError("%s allowed on a version-%d connection" % (what, hi))
                assert c._next_id == sent, "a request was sent"
                c.stats()   # the connection is still usable
                # Section 6.13: sent anyway, PEEK is UNKNOWN_OP below version 3.
                rid = c.send_frame(machq.PEEK, machq.queue_op_body(old.encode()))
                self.expect_error("UNKNOWN_OP", c.response, rid, machq.MESSAGE)
                c.stats()
            details.append("1-%d: version %d, version-3 operations refused unsent; "
                           "a raw PEEK gives UNKNOWN_OP" % (hi, hi))
        return "; ".join(details)

    def v3_stats(self):
        # Section 6.8: the fields a version-3 server adds.
        q = self.queue("ack-stats")
        self.c.store(b"x", q)
        d = self.c.reserve(q)
        s = self.c.stats()
        x = self.qstat(q)
        d.ack()
        assert set(s["pending"]) >= {"messages", "bytes", "pages"}, s.get("pending")
        assert s["pending"]["messages"] >= 1, s["pending"]
        for k in ("pending", "delayed", "delivered", "redelivered", "acked", "nacked",
                  "dead_lettered", "blocked"):
            assert isinstance(x.get(k), int), "queues[].%s is %r" % (k, x.get(k))
        assert (x["messages"], x["pending"], x["delayed"], x["delivered"], x["blocked"]) == \
            (0, 1, 0, 1, 0), x
        # Optional fields: absent while the queue has no groups and no settings.
        assert not {"groups", "max_deliveries", "lease_ms"} & set(x), x
        return "pending %s; queue: %s" % (s["pending"], ", ".join(
            "%s %d" % (k, x[k]) for k in ("messages", "pending", "delayed", "delivered")))

    def ack_mode(self):
        q = self.queue("ack")
        want = [os.urandom(100), os.urandom(100_000)]   # inline, and a sealed memfd
        seqs = [self.c.store(data, q) for data in want]
        got = []
        for i, data in enumerate(want):
            d = self.c.reserve(q)
            assert isinstance(d, machq.Delivery), type(d)
            assert (d.seq, d.payload, d.queue) == (seqs[i], data, q), d
            assert d.inline == (i == 0), "travelled %s" % ("inline" if d.inline else "as a page")
            assert (d.deliveries, d.dead, d.died_after, d.note) == (1, DEAD_LIVE, 0, ""), d
            assert d.token != 0 and d.token not in [g.token for g in got], "token %d" % d.token
            got.append(d)
        x = self.qstat(q)
        assert (x["messages"], x["pending"]) == (0, 2), x
        outcomes = [d.ack() for d in got]
        assert outcomes == [OUTCOME_ACKED] * 2, outcomes
        x = self.qstat(q)
        assert (x["messages"], x["pending"], x["delayed"]) == (0, 0, 0), x
        self.expect_error("EMPTY", self.c.reserve, q)
        r = self.expect_error("STALE", got[0].ack)
        return "seq %s delivered once each and acked; a second ACK: %s" % (seqs, r)

    def nak_in_place(self):
        # Section 6.11: a NAK puts the message back at its original place,
        # after the server's backoff, which is awaited by polling STAT.
        q = self.queue("nak")
        a, b = self.c.store(b"a", q), self.c.store(b"b", q)
        d = self.c.reserve(q)
        assert d.seq == a, d
        assert d.nak(reason="try again") == OUTCOME_REQUEUED
        x = self.qstat(q)
        assert (x["messages"] + x["delayed"], x["pending"]) == (2, 0), x
        self.await_queue(q, "the NAK's backoff", messages=2, delayed=0, pending=0)
        d = self.c.reserve(q)
        assert (d.seq, d.data, d.deliveries, d.note) == (a, b"a", 2, "try again"), d
        assert d.redelivered
        e = self.c.reserve(q)
        assert (e.seq, e.deliveries) == (b, 1), e
        d.ack()
        e.ack()
        return "seq %d back before seq %d, deliveries 2, note %r" % (a, b, d.note)

    def nak_delay(self):
        # A NAK with a delay: the message stays away that long (a later one
        # is delivered meanwhile), then a waiting RETRIEVE receives it.
        q = self.queue("nak-delay")
        a, b = self.c.store(b"a", q), self.c.store(b"b", q)
        d = self.c.reserve(q)
        t0 = time.monotonic()
        assert d.nak(delay_ms=1000) == OUTCOME_REQUEUED
        x = self.qstat(q)
        assert (x["messages"], x["delayed"]) == (1, 1), x
        e = self.c.reserve(q)
        assert (e.seq, e.deliveries) == (b, 1), e
        e.ack()
        d = self.c.reserve(q, wait_ms=WAIT_MS)
        took = time.monotonic() - t0
        assert (d.seq, d.deliveries) == (a, 2), d
        assert took >= 0.99, "back after %.0f ms, before its 1000 ms delay" % (took * 1000)
        d.ack()
        return "seq %d delivered during the delay; seq %d back after %.0f ms" % (b, a, took * 1000)

    def close_returns(self):
        # Sections 5.4, 10.1: a connection's end puts its deliveries back at
        # once, to a RETRIEVE waiting there if any.
        q = self.queue("close")
        seq = self.c.store(b"held", q)
        c2 = self.connect()
        try:
            d = c2.reserve(q)
            assert (d.seq, d.deliveries) == (seq, 1), d
            rid = self.c.start_retrieve(q, WAIT_MS, ack=True)
            x = self.qstat(q)
            assert (x["waiting"], x["pending"]) == (1, 1), x
        finally:
            c2.close()
        d = self.c.result(rid)
        assert (d.seq, d.data, d.deliveries) == (seq, b"held", 2), d
        d.ack()
        return "seq %d, held by a closed connection, handed to a waiting RETRIEVE, deliveries 2" % seq

    def term_and_kick(self):
        q = self.queue("term")
        dlq = q + ".dlq"
        seq = self.c.store(b"poison", q)
        d = self.c.reserve(q)
        assert d.term("cannot parse it") == OUTCOME_DEAD_LETTERED
        x, y = self.qstat(q), self.qstat(dlq)
        assert (x["messages"], x["pending"], y["messages"]) == (0, 0, 1), (x, y)
        # Read the dead letter in ack mode on another connection, then close
        # it, which puts it back: KICK moves what is in line in Q.dlq.
        with self.connect() as c2:
            dead = c2.reserve(dlq)
        assert (dead.seq, dead.data) == (seq, b"poison"), dead
        assert (dead.dead, dead.dead_reason, dead.note, dead.died_after, dead.deliveries) == \
            (DEAD_TERMED, "termed", "cannot parse it", 1, 1), dead
        self.await_queue(dlq, "the dead letter back in line", messages=1, pending=0)
        moved = self.c.kick(q)
        assert moved == 1, "kick moved %d" % moved
        assert self.c.kick(q) == 0
        d = self.c.reserve(q)
        assert (d.seq, d.data, d.dead, d.note, d.died_after, d.deliveries) == \
            (seq, b"poison", DEAD_LIVE, "", 0, 1), d
        d.ack()
        return "seq %d in %s: dead %s, note %r, died after %d; kicked back live" % (
            seq, dlq, dead.dead_reason, dead.note, dead.died_after)

    def max_deliveries(self):
        # Section 10.1: the --max-deliveries-th delivery coming back
        # unacknowledged makes the message a dead letter (whatever the flag).
        q = self.queue("max-deliveries")
        seq = self.c.store(b"again", q)
        for _ in range(10_000):
            d = self.c.reserve(q, wait_ms=WAIT_MS)
            outcome = d.nak(delay_ms=1, reason="not yet")
            if outcome != OUTCOME_REQUEUED:
                break
        assert outcome == OUTCOME_DEAD_LETTERED, "outcome %d" % outcome
        dead = self.c.reserve(q + ".dlq")
        assert (dead.seq, dead.dead, dead.died_after, dead.note) == \
            (seq, DEAD_MAX_DELIVERIES, d.deliveries, "not yet"), dead
        dead.ack()
        return "dead letter after %d deliveries: dead %s" % (d.deliveries, dead.dead_reason)

    def private_term(self):
        # Section 10.1: the private queue has no dead-letter queue.
        self.c.store(b"private", "")
        d = self.c.reserve("")
        assert d.term("no") == OUTCOME_DROPPED
        self.expect_error("EMPTY", self.c.retrieve, "")
        return "TERM outcome dropped"

    def lease(self):
        q = self.queue("lease")
        seq = self.c.store(b"slow", q)
        d = self.c.reserve(q, lease_ms=60_000)
        lease = d.touch()
        assert 0 < lease <= 60_000, "TOUCH gave lease %d" % lease
        d.ack()
        self.c.store(b"slow", q)
        d = self.c.reserve(q, lease_ms=NO_LEASE)
        assert d.touch() == 0, "a delivery without a lease has one"
        d.ack()
        seq = self.c.store(b"late", q)
        d = self.c.reserve(q, lease_ms=50)
        self.await_queue(q, "the 50 ms lease to run out", messages=1, pending=0)
        try:
            d.ack()
        except StaleError as e:
            assert e.name == "STALE" and not e.fatal, e
            r = str(e)
        else:
            raise AssertionError("a late ACK was accepted")
        d2 = self.c.reserve(q)
        assert (d2.seq, d2.deliveries) == (seq, 2) and d2.token != d.token, d2
        d2.ack()
        return "TOUCH: lease %d ms; late ACK: %s" % (lease, r)

    def credit(self):
        q = self.queue("credit")
        a, b = self.c.store(b"a", q), self.c.store(b"b", q)
        d = self.c.reserve(q, credit=1)
        r = self.expect_error("LIMIT", lambda: self.c.reserve(q, credit=1))
        # A waiting one waits for credit too, and is served once an ACK frees it.
        rid = self.c.start_retrieve(q, WAIT_MS, ack=True, credit=1)
        x = self.qstat(q)
        assert (x["waiting"], x["messages"]) == (1, 1), x
        d.ack()
        e = self.c.result(rid)
        assert (d.seq, e.seq) == (a, b), (d, e)
        e.ack()
        return "second RETRIEVE with credit 1: %s; a waiting one served after the ACK" % r

    def stale_other(self):
        # Section 6.11: nobody can settle another connection's delivery.
        q = self.queue("other")
        self.c.store(b"mine", q)
        with self.connect() as c2:
            d = c2.reserve(q)
            r = self.expect_error("STALE", self.c.ack, d.token)
            assert d.ack() == OUTCOME_ACKED
        return r

    def ack_bad_name(self):
        # Section 6.5: a named queue read in ack mode has at most 251 bytes.
        return self.expect_error("BAD_QUEUE_NAME", self.c.reserve, "q" * 252)

    def unverifiable_nak(self):
        # Section 9: a message this client cannot verify (BLAKE3, which the
        # standard library lacks) is NAKed in ack mode, not consumed. It is
        # stored with digest_alg 2 and 32 arbitrary bytes: the server never
        # verifies digests.
        q = self.queue("blake3")
        seq = self.store_raw(q, b"from a BLAKE3 sender", DIGEST_BLAKE3, os.urandom(32))
        try:
            self.c.reserve(q)
        except UnverifiableError as e:
            err = e
        else:
            raise AssertionError("unverifiable payload accepted")
        assert err.outcome == OUTCOME_REQUEUED and err.settle_error is None, err
        d = err.message
        assert (d.seq, d.deliveries, d.digest_alg) == (seq, 1, DIGEST_BLAKE3), d
        x = self.qstat(q)
        assert (x["messages"] + x["delayed"], x["pending"]) == (1, 0), x
        self.await_queue(q, "the NAK's backoff", messages=1, delayed=0, pending=0)
        try:
            self.c.reserve(q)
        except UnverifiableError as e:
            again = e.message
        else:
            raise AssertionError("unverifiable payload accepted")
        assert (again.seq, again.deliveries, again.note) == (seq, 2, err.reason), again
        # Clean up: a plain RETRIEVE takes it (and refuses it).
        self.await_queue(q, "the NAK's backoff", messages=1, delayed=0, pending=0)
        try:
            self.c.retrieve(q)
        except UnverifiableError:
            pass
        x = self.qstat(q)
        assert (x["messages"], x["delayed"], x["pending"]) == (0, 0, 0), x
        return "%s; delivered again with deliveries 2, note %r" % (err, again.note)

    def mismatch_term(self):
        # Section 9: a message that does not match its digest is TERMed in
        # ack mode: it waits in the dead-letter queue.
        q = self.queue("mismatch")
        seq = self.store_raw(q, b"not what the digest says", DIGEST_SHA256, bytes(32))
        try:
            self.c.reserve(q)
        except UnverifiableError:
            raise
        except IntegrityError as e:
            err = e
        else:
            raise AssertionError("tampered payload accepted")
        assert err.outcome == OUTCOME_DEAD_LETTERED and err.message.seq == seq, err
        x, y = self.qstat(q), self.qstat(q + ".dlq")
        assert (x["messages"], x["pending"], x["delayed"], y["messages"]) == (0, 0, 0, 1), (x, y)
        try:
            self.c.retrieve(q + ".dlq")   # clean up
        except IntegrityError:
            pass
        return str(err)

    # -- queue management (version 3, section 6.13) --------------------------

    def peek(self):
        # PEEK describes a message in line without taking it: STAT shows
        # the same before and after; past the end, EMPTY.
        q = self.queue("peek")
        want = [os.urandom(100), os.urandom(100_000)]   # inline, and a sealed memfd
        seqs = [self.c.store(data, q) for data in want]
        before = self.qstat(q)
        for i, data in enumerate(want):
            p = self.c.peek(q, i)
            assert isinstance(p, machq.Peeked), type(p)
            assert (p.seq, p.data, p.queue, p.index) == (seqs[i], data, q, i), p
            assert p.inline == (i == 0), "travelled %s" % ("inline" if p.inline else "as a page")
            assert (p.deliveries, p.dead, p.died_after, p.note) == (0, DEAD_LIVE, 0, ""), p
        again = self.c.peek(q)   # the same message again: nothing was taken
        assert again.seq == seqs[0], again
        after = self.qstat(q)
        assert after == before, "STAT before %r, after %r" % (before, after)
        r = self.expect_error("EMPTY", self.c.peek, q, 2)
        self.expect_error("EMPTY", self.c.peek, self.queue("peek-none"))
        got = [self.c.retrieve(q) for _ in want]
        assert [(m.seq, m.data) for m in got] == list(zip(seqs, want)), "retrieved other messages"
        self.c.store(b"mine", "")   # the private queue too
        assert self.c.peek("").data == b"mine"
        self.c.retrieve("")
        return "seq %s peeked (inline, page), STAT unchanged; index 2: %s" % (seqs, r)

    def peek_history(self):
        # PEEK says how a message fared: a NAKed one its deliveries and
        # note, a dead letter why, after how many deliveries, and its reason.
        q = self.queue("peek-history")
        seq = self.c.store(b"tried", q)
        self.c.reserve(q).nak(reason="busy")
        self.await_queue(q, "the NAK's backoff", messages=1, delayed=0, pending=0)
        p = self.c.peek(q)
        assert (p.seq, p.deliveries, p.dead, p.note) == (seq, 1, DEAD_LIVE, "busy"), p
        d = self.c.reserve(q)
        assert d.term("broken") == OUTCOME_DEAD_LETTERED
        p = self.c.peek(q + ".dlq")
        assert (p.seq, p.data, p.dead, p.died_after, p.note, p.deliveries) == \
            (seq, b"tried", DEAD_TERMED, 2, "broken", 0), p
        self.c.retrieve(q + ".dlq")
        return "after a NAK: deliveries %d, note %r; in %s.dlq: dead %s after %d, note %r" % (
            1, "busy", q, p.dead_reason, p.died_after, p.note)

    def purge(self):
        # PURGE frees what is in line and what is delayed at once; a
        # pending delivery is freed when it comes back (a NAK: dropped).
        q = self.queue("purge")
        a = self.c.store(b"a", q)
        self.c.store(b"b", q)
        self.c.store(b"c", q)
        d = self.c.reserve(q)
        e = self.c.reserve(q)
        assert e.nak(delay_ms=600_000) == OUTCOME_REQUEUED   # away ten minutes
        x = self.qstat(q)
        assert (x["messages"], x["pending"], x["delayed"]) == (1, 1, 1), x
        freed, pending = self.c.purge(q)
        assert (freed, pending) == (2, 1), "purge: freed %d, pending %d" % (freed, pending)
        x = self.qstat(q)
        assert (x["messages"], x["pending"], x["delayed"]) == (0, 1, 0), x
        outcome = d.nak(reason="too late")
        assert outcome == OUTCOME_DROPPED, "NAK after PURGE: outcome %d" % outcome
        x = self.qstat(q)
        assert (x["messages"], x["pending"], x["delayed"]) == (0, 0, 0), x
        self.expect_error("EMPTY", self.c.retrieve, q)
        # A waiting RETRIEVE goes on waiting; what is stored after is kept.
        rid = self.c.start_retrieve(q, WAIT_MS)
        assert self.c.purge(q) == (0, 0)
        assert self.qstat(q)["waiting"] == 1, self.qstat(q)
        with self.connect() as other:
            later = other.store(b"after", q)
        m = self.c.result(rid)
        assert (m.seq, m.data) == (later, b"after"), m
        assert self.c.purge(self.queue("purge-none")) == (0, 0)
        self.c.store(b"1", "")
        self.c.store(b"2", "")
        assert self.c.purge("") == (2, 0), "private queue"
        self.expect_error("EMPTY", self.c.retrieve, "")
        return "freed 2 (in line, delayed), pending 1 (seq %d), NAKed then: dropped" % a

    def delete(self):
        # DELETE removes a queue with what it holds; a RETRIEVE waiting on
        # it is answered CANCELLED; its numbers continue above.
        q = self.queue("delete")
        with self.connect() as c2:
            rid = c2.start_retrieve(q, WAIT_FOREVER)
            self.await_queue(q, "the RETRIEVE to wait", waiting=1)
            assert self.c.delete(q) == (0, 0)
            r = self.expect_error("CANCELLED", c2.result, rid)
            c2.stats()   # the connection stays open
            self.c.store(b"a", q)
            last = self.c.store(b"b", q)
            d = c2.reserve(q)
            freed, pending = self.c.delete(q)
            assert (freed, pending) == (1, 1), "delete: freed %d, pending %d" % (freed, pending)
            assert d.nak() == OUTCOME_DROPPED, "NAK after DELETE"
        self.expect_error("EMPTY", self.c.retrieve, q)
        seq = self.c.store(b"new", q)
        assert seq > last, "seq %d after DELETE, the deleted queue's last was %d" % (seq, last)
        self.c.retrieve(q)
        assert self.c.delete(self.queue("delete-none")) == (0, 0)
        b = self.expect_error("BAD_QUEUE_NAME", self.c.delete, "")
        return "waiting RETRIEVE: %s; freed 1, pending 1; new seq %d > %d; private queue: %s" % (
            r.split(":")[0], seq, last, b.split(":")[0])

    # -- consumer groups (version 3, sections 6.14, 10.2) ---------------------

    def groups_fan_out(self):
        # Each group receives every message; a message is freed only once
        # every group has acknowledged it. Its payload counts once; each
        # group's copy counts as a message (section 10.2).
        q = self.queue("fan-out")
        assert self.c.create_group(q, "a") == (True, 0)
        assert self.c.create_group(q, "b") == (True, 0)
        assert self.c.create_group(q, "a") == (False, 0), "created twice"
        base = self.held()
        data = [os.urandom(1000), os.urandom(200_000)]
        seqs = [self.c.store(x, q) for x in data]
        size = sum(map(len, data))
        assert self.held() == (base[0] + 4, base[1] + size), "held %r, base %r" % (self.held(), base)
        x = self.qstat(q)
        assert x["messages"] == 0, "the queue's own line holds %r" % x
        got = {}
        for g in ("a", "b"):
            st = self.gstat(q, g)
            assert (st["messages"], st["bytes"], st["position"]) == (2, size, seqs[0]), st
            got[g] = [self.c.reserve(q, group=g) for _ in data]
            assert [(d.seq, d.data, d.group, d.deliveries) for d in got[g]] == \
                [(s, x, g, 1) for s, x in zip(seqs, data)], got[g]
            self.expect_error("EMPTY", self.c.reserve, q, group=g)
        for d in got["a"]:
            assert d.ack() == OUTCOME_ACKED
        assert self.held() == (base[0] + 2, base[1] + size), "freed before group b acked"
        assert self.gstat(q, "b")["pending"] == 2, self.gstat(q, "b")
        got["b"][0].ack()
        assert self.held() == (base[0] + 1, base[1] + len(data[1])), self.held()
        got["b"][1].ack()
        assert self.held() == base, "held %r after both groups acked, base %r" % (self.held(), base)
        assert self.c.delete(q) == (0, 0)
        return "seq %s to groups a and b; freed only after both ACKed (STAT messages, bytes)" % seqs

    def groups_compete(self):
        # The consumers of one group share its messages; a closed
        # connection's delivery goes back to the group's line.
        q = self.queue("compete")
        self.c.create_group(q, "workers")
        seqs = [self.c.store(b"job%d" % i, q) for i in range(2)]
        c2 = self.connect()
        try:
            d1 = self.c.reserve(q, group="workers")
            d2 = c2.reserve(q, group="workers")
            assert sorted([d1.seq, d2.seq]) == seqs, (d1, d2)
            self.expect_error("EMPTY", self.c.reserve, q, group="workers")
            st = self.gstat(q, "workers")
            assert (st["messages"], st["pending"]) == (0, 2), st
        finally:
            c2.close()
        d3 = self.c.reserve(q, group="workers", wait_ms=WAIT_MS)
        assert (d3.seq, d3.deliveries) == (d2.seq, 2), d3
        d1.ack()
        d3.ack()
        self.c.delete(q)
        return "seq %d and %d to two consumers; the closed one's back with deliveries 2" % (
            d1.seq, d2.seq)

    def groups_from_oldest(self):
        # Action 1 leaves what the queue holds to plain consumers; action 2
        # adopts it.
        q = self.queue("oldest")
        seqs = [self.c.store(b"old%d" % i, q) for i in range(2)]
        assert self.c.create_group(q, "new") == (True, 0)
        assert self.qstat(q)["messages"] == 2, "the queue's own line lost its messages"
        self.expect_error("EMPTY", self.c.reserve, q, group="new")
        changed, adopted = self.c.create_group(q, "all", from_oldest=True)
        assert (changed, adopted) == (True, 2), (changed, adopted)
        assert self.qstat(q)["messages"] == 0, self.qstat(q)
        got = [self.c.reserve(q, group="all") for _ in seqs]
        assert [d.seq for d in got] == seqs, got
        for d in got:
            d.ack()
        assert self.c.create_group(q, "all", from_oldest=True) == (False, 0)
        self.c.delete(q)
        return "from oldest adopted seq %s; a plain group took none" % seqs

    def no_group(self):
        q = self.queue("no-group")
        self.c.store(b"x", q)
        try:
            self.c.reserve(q, group="nobody")
        except machq.NoGroupError as e:
            assert e.name == "NO_GROUP" and not e.fatal, e
            r = "%s, id %d: %s" % (e.name, e.rid, e.text)
        else:
            raise AssertionError("no error, want NO_GROUP")
        self.expect_error("NO_GROUP", self.c.reserve, self.queue("no-queue"), group="g")
        self.expect_error("NO_GROUP", self.c.reserve, q, WAIT_MS, group="nobody")   # at once
        self.expect_error("BAD_QUEUE_NAME", self.c.reserve, "", group="g")
        self.expect_error("BAD_QUEUE_NAME", self.c.create_group, q, "bad name")
        self.c.retrieve(q)
        return r

    def group_delete(self):
        # Deleting a group answers its waiting RETRIEVE with CANCELLED,
        # frees its line, and drops its pending delivery when NAKed.
        q = self.queue("group-delete")
        self.c.create_group(q, "keep")
        self.c.create_group(q, "gone")
        with self.connect() as c2:
            rid = c2.start_retrieve(q, WAIT_FOREVER, ack=True, group="gone")
            deadline = time.monotonic() + DEADLINE
            while self.gstat(q, "gone")["waiting"] != 1:
                assert time.monotonic() < deadline, "the RETRIEVE never waited"
                time.sleep(0.002)
            assert self.c.delete_group(q, "gone") == (True, 0, 0)
            r = self.expect_error("CANCELLED", c2.result, rid)
            c2.stats()
        self.c.create_group(q, "gone")
        for i in range(3):
            self.c.store(b"m%d" % i, q)
        d = self.c.reserve(q, group="gone")
        assert self.c.delete_group(q, "gone") == (True, 2, 1)
        assert d.nak() == OUTCOME_DROPPED, "NAK after the group's deletion"
        assert self.c.delete_group(q, "gone") == (False, 0, 0)
        self.expect_error("NO_GROUP", self.c.reserve, q, group="gone")
        assert self.gstat(q, "keep")["messages"] == 3, self.gstat(q, "keep")
        # DELETE of the queue answers a RETRIEVE waiting on one of its groups.
        for _ in range(3):
            self.c.reserve(q, group="keep").ack()
        with self.connect() as c2:
            rid = c2.start_retrieve(q, WAIT_FOREVER, ack=True, group="keep")
            deadline = time.monotonic() + DEADLINE
            while self.gstat(q, "keep")["waiting"] != 1:
                assert time.monotonic() < deadline, "the RETRIEVE never waited"
                time.sleep(0.002)
            self.c.delete(q)
            self.expect_error("CANCELLED", c2.result, rid)
        return "waiting RETRIEVE: %s; deleted with 2 in line, 1 pending (NAKed: dropped)" % (
            r.split(":")[0])

    def group_dead_letter(self):
        # A group's dead letter remembers its group: KICK moves it back there.
        q = self.queue("group-dlq")
        self.c.configure(q, max_deliveries=1)
        self.c.create_group(q, "g")
        self.c.create_group(q, "h")
        seq = self.c.store(b"once", q)
        assert self.c.reserve(q, group="g").nak(reason="no") == OUTCOME_DEAD_LETTERED
        p = self.c.peek(q + ".dlq")
        assert (p.seq, p.dead, p.died_after, p.note) == (seq, DEAD_MAX_DELIVERIES, 1, "no"), p
        assert self.c.kick(q) == 1
        assert (self.gstat(q, "g")["messages"], self.gstat(q, "h")["messages"]) == (1, 1)
        for g in ("g", "h"):
            d = self.c.reserve(q, group=g)
            assert (d.seq, d.deliveries) == (seq, 1), d
            d.ack()
        self.c.delete(q)
        return "seq %d dead-lettered from group g, kicked back into g" % seq

    # -- queue settings (version 3, section 6.15) ------------------------------

    def configure(self):
        q = self.queue("config")
        self.c.configure(q, max_deliveries=1, lease_ms=60_000)
        seq = self.c.store(b"fragile", q)
        x = self.qstat(q)
        assert (x.get("max_deliveries"), x.get("lease_ms")) == (1, 60_000), x
        d = self.c.reserve(q)   # lease_ms 0: the queue's lease
        lease = d.touch()
        assert 0 < lease <= 60_000, "TOUCH gave lease %d, want the queue's 60000" % lease
        outcome = d.nak(reason="once is enough")
        assert outcome == OUTCOME_DEAD_LETTERED, "NAK of delivery 1 of 1: outcome %d" % outcome
        dead = self.c.reserve(q + ".dlq")
        assert (dead.seq, dead.dead, dead.died_after, dead.note) == \
            (seq, DEAD_MAX_DELIVERIES, 1, "once is enough"), dead
        dead.ack()
        self.c.configure(q, lease_ms=NO_LEASE)   # replaces both settings
        self.c.store(b"sturdy", q)
        x = self.qstat(q)
        assert (x.get("max_deliveries"), x.get("lease_ms")) == (None, NO_LEASE), x
        d = self.c.reserve(q)
        assert d.touch() == 0, "the queue's lease is none, yet the delivery has one"
        assert d.nak(delay_ms=1) == OUTCOME_REQUEUED, "max_deliveries is the server's again"
        self.await_queue(q, "the NAK's delay", messages=1, delayed=0)
        self.c.configure(q)   # back to the server's settings
        x = self.qstat(q)
        assert not {"max_deliveries", "lease_ms"} & set(x), x
        self.c.retrieve(q)
        self.expect_error("BAD_QUEUE_NAME", self.c.configure, "", 1)
        return "max_deliveries 1: the first NAK dead-letters (dead %s); lease %d ms" % (
            dead.dead_reason, lease)

    # -- waiting for room (version 3, section 6.3): a server with
    # --max-queue-messages N ---------------------------------------------------

    def fill(self, q, n):
        return [self.c.store(b"fill%d" % i, q) for i in range(n)]

    def await_blocked(self, q, n):
        return self.await_queue(q, "STOREs waiting for room", blocked=n)

    def wait_store(self):
        q = self.queue("room")
        seqs = self.fill(q, self.limit)
        r = self.expect_error("LIMIT", self.c.store, b"more", q)
        with self.connect() as w:
            rid = w.start_store(b"waited", q, wait=True)
            self.await_blocked(q, 1)
            m = self.c.retrieve(q)
            assert m.seq == seqs[0], m
            seq = w.store_result(rid)
        x = self.qstat(q)
        assert (x["messages"], x["blocked"]) == (self.limit, 0), x
        got = [self.c.retrieve(q) for _ in range(self.limit)]
        assert (got[-1].seq, got[-1].data) == (seq, b"waited"), got[-1]
        return "without WAIT: %s; with WAIT stored as seq %d once one was retrieved" % (
            r.split(":")[0], seq)

    def wait_store_cancel(self):
        q = self.queue("room-cancel")
        seqs = self.fill(q, self.limit)
        rid = self.c.start_store(b"never", q, wait=True)
        self.await_blocked(q, 1)
        self.c.cancel(rid)
        r = self.expect_error("CANCELLED", self.c.store_result, rid)
        x = self.qstat(q)
        assert (x["messages"], x["blocked"]) == (self.limit, 0), x
        got = [self.c.retrieve(q) for _ in seqs]
        assert [m.seq for m in got] == seqs and b"never" not in [m.data for m in got], got
        self.expect_error("EMPTY", self.c.retrieve, q)
        self.c.stats()   # the connection stays open
        return r

    def wait_store_order(self):
        # First come, first served; a connection's end drops its waiting store.
        q = self.queue("room-order")
        self.fill(q, self.limit)
        w1, w2, w3 = self.connect(), self.connect(), self.connect()
        try:
            r1 = w1.start_store(b"first", q, wait=True)
            self.await_blocked(q, 1)
            r2 = w2.start_store(b"second", q, wait=True)
            self.await_blocked(q, 2)
            w3.start_store(b"dropped", q, wait=True)
            self.await_blocked(q, 3)
            w3.close()
            self.await_blocked(q, 2)
            self.c.retrieve(q)
            s1 = w1.store_result(r1)
            x = self.await_blocked(q, 1)
            assert x["messages"] == self.limit, x
            self.c.retrieve(q)
            s2 = w2.store_result(r2)
            assert s1 < s2, (s1, s2)
        finally:
            for w in (w1, w2, w3):
                w.close()
        got = [self.c.retrieve(q) for _ in range(self.limit)]
        assert [m.data for m in got][-2:] == [b"first", b"second"], got
        self.expect_error("EMPTY", self.c.retrieve, q)
        return "stored in the order they waited (seq %d, %d); a closed connection's dropped" % (s1, s2)

    def wait_store_delete(self):
        q = self.queue("room-delete")
        self.fill(q, self.limit)
        rid = self.c.start_store(b"never", q, wait=True)
        self.await_blocked(q, 1)
        assert self.c.delete(q) == (self.limit, 0)
        r = self.expect_error("CANCELLED", self.c.store_result, rid)
        self.expect_error("EMPTY", self.c.retrieve, q)
        return r

    def wait_store_groups(self):
        # With consumer groups, a store waits while any group is full.
        q = self.queue("room-groups")
        self.c.create_group(q, "fast")
        self.c.create_group(q, "slow")
        self.fill(q, self.limit)
        for _ in range(self.limit):
            self.c.reserve(q, group="fast").ack()
        assert self.gstat(q, "fast")["messages"] == 0
        rid = self.c.start_store(b"waited", q, wait=True)
        self.await_blocked(q, 1)
        d = self.c.reserve(q, group="slow")
        d.ack()
        seq = self.c.store_result(rid)
        for g in ("fast", "slow"):
            st = self.gstat(q, g)
            assert st["messages"] == (1 if g == "fast" else self.limit), st
        self.c.delete(q)
        return "waited while group slow held %d; stored as seq %d after its ACK" % (self.limit, seq)

    # -- driver -------------------------------------------------------------

    def client(self):
        """Say which machq module is under test."""
        print("client machq %s from %s" % (machq.__version__, machq.__file__), flush=True)

    def run(self):
        self.client()
        if not self.check("handshake", self.handshake):
            return 1
        named = self.queue("trip")
        for queue in ("", named):
            where = "named queue %s" % queue if queue else "private queue"
            for size in SIZES:
                self.check("round trip %d B via %s" % (size, where), self.round_trip, size, queue)
        self.check("round trip 0 B as a sealed memfd", self.round_trip, 0, "", False)
        self.check("round trip 4096 B as a sealed memfd", self.round_trip, 4096, named, False)
        self.check("retrieve from empty private queue gives EMPTY",
                   self.expect_error, "EMPTY", self.c.retrieve, "")
        self.check("retrieve from empty named queue gives EMPTY",
                   self.expect_error, "EMPTY", self.c.retrieve, self.queue("empty"))
        self.check("store to queue 'bad name!' gives BAD_QUEUE_NAME",
                   self.expect_error, "BAD_QUEUE_NAME", self.c.store, b"x", "bad name!")
        self.check("retrieve from queue 'a/b' gives BAD_QUEUE_NAME",
                   self.expect_error, "BAD_QUEUE_NAME", self.c.retrieve, "a/b")
        self.check("queue names . and .. are valid", self.dot_queue_names)
        self.check("waiting retrieve times out with EMPTY", self.waiting_retrieve_times_out)
        self.check("waiting retrieve served by another connection", self.waiting_retrieve_served)
        self.check("CANCEL of a waiting retrieve gives CANCELLED", self.cancel)
        self.check("malformed CANCEL gives BAD_REQUEST under its id", self.malformed_cancel)
        self.check("STATS", self.stats)
        self.check("STAT with a body is answered", self.stat_with_body)
        self.check("descriptor on STAT and RETRIEVE is ignored", self.descriptor_on_stat_and_retrieve)
        self.check("digest mismatch detected (inline)", self.tampered, False)
        self.check("digest mismatch detected (sealed memfd)", self.tampered, True)
        self.check("unknown digest algorithm refused", self.unknown_digest)
        self.check("malformed RETRIEVE body gives BAD_REQUEST", self.malformed_retrieve)
        self.check("inline STORE with a descriptor gives BAD_DESCRIPTOR",
                   self.inline_store_with_descriptor)
        self.check("unsealed memfd gives BAD_PAGE", self.unsealed_page)
        self.check("HELLO version range without 1 gives VERSION", self.version_errors)
        self.check("bad frame header gives MALFORMED id 0 and closes", self.bad_header)
        self.check("duplicate id of a waiting retrieve ends the connection",
                   self.duplicate_waiting_id)
        self.check("versions 1 and 2 chosen when offered; ack mode refused there, unsent",
                   self.older_versions)
        self.check("STATS has the version-3 fields", self.v3_stats)
        self.check("ack mode: delivered once, ACKed; a second ACK gives STALE", self.ack_mode)
        self.check("NAK puts the message back at its place", self.nak_in_place)
        self.check("NAK with a delay: away that long, then to a waiting RETRIEVE", self.nak_delay)
        self.check("a closed connection's delivery goes back at once", self.close_returns)
        self.check("TERM moves to Q.dlq; read there in ack mode; KICK brings it back",
                   self.term_and_kick)
        self.check("the last allowed delivery NAKed becomes a dead letter", self.max_deliveries)
        self.check("TERM on the private queue drops the message", self.private_term)
        self.check("TOUCH; a late ACK after the lease ran out gives STALE", self.lease)
        self.check("credit 1: a second RETRIEVE gives LIMIT, a waiting one waits", self.credit)
        self.check("settling another connection's delivery gives STALE", self.stale_other)
        self.check("ack mode on a 252-byte name gives BAD_QUEUE_NAME", self.ack_bad_name)
        self.check("unverifiable (BLAKE3) message NAKed, stays in its queue", self.unverifiable_nak)
        self.check("digest mismatch in ack mode TERMed to Q.dlq", self.mismatch_term)
        self.check("PEEK takes nothing (STAT unchanged); past the end gives EMPTY", self.peek)
        self.check("PEEK shows deliveries and note, and a dead letter's why", self.peek_history)
        self.check("PURGE frees and counts; a pending delivery NAKed after it is dropped",
                   self.purge)
        self.check("DELETE answers a waiting RETRIEVE with CANCELLED; numbers continue",
                   self.delete)
        self.check("two groups each receive every message; freed after both ACK",
                   self.groups_fan_out)
        self.check("consumers of one group get distinct messages", self.groups_compete)
        self.check("a group created from the oldest adopts what the queue holds",
                   self.groups_from_oldest)
        self.check("a group the queue lacks gives NO_GROUP", self.no_group)
        self.check("deleting a group answers its waiting RETRIEVE with CANCELLED",
                   self.group_delete)
        self.check("a group's dead letter is kicked back into its group", self.group_dead_letter)
        self.check("CONFIG max_deliveries 1: a NAKed message is a dead letter at once; "
                   "the queue's lease", self.configure)
        self.check("connection still open after the failed requests",
                   lambda: "%d client(s)" % self.c.stats()["clients"])
        return self.finish()

    def run_limited(self, limit):
        """The checks of STORE's WAIT flag, against a server started with
        --max-queue-messages `limit`."""
        self.limit = limit
        self.client()
        if not self.check("handshake", self.handshake):
            return 1
        self.check("WAIT: a store into a full queue waits, stored once one is retrieved",
                   self.wait_store)
        self.check("WAIT: a cancelled waiting store stores nothing", self.wait_store_cancel)
        self.check("WAIT: waiting stores served in order; a closed connection's dropped",
                   self.wait_store_order)
        self.check("WAIT: DELETE answers a waiting store with CANCELLED", self.wait_store_delete)
        self.check("WAIT: with consumer groups a store waits while any group is full",
                   self.wait_store_groups)
        return self.finish()

    def finish(self):
        self.c.close()
        print("%d failure(s)" % self.failures, flush=True)
        return 1 if self.failures else 0


def raw_exchange(path, data):
    """Send raw bytes on a new connection; return (frames, how it ended).

    Reads until the server closes. Each frame is (op, id, error code or
    None, error text or body). The end is "EOF" or "ECONNRESET": both mean
    the server closed (section 5.4).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(path)
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:
                end = "ECONNRESET"
                break
            if not chunk:
                end = "EOF"
                break
            buf += chunk
    frames = []
    while len(buf) >= HEADER.size:
        length, op, _, _, _, rid = HEADER.unpack_from(buf)
        body, buf = buf[HEADER.size:length], buf[length:]
        if op == machq.ERROR:
            code, = struct.unpack_from("<H", body)
            frames.append((op, rid, code, body[4:].decode("utf-8", "replace")))
        else:
            frames.append((op, rid, None, body))
    return frames, end


def main(argv):
    args = argv[1:]
    limit = None
    if len(args) == 3 and args[0] == "--max-queue-messages" and args[1].isdigit() \
            and int(args[1]) >= 1:
        limit, args = int(args[1]), args[2:]
    if len(args) != 1:
        print("usage: python3 %s [--max-queue-messages N] SOCKET_PATH"
              % os.path.basename(argv[0]), file=sys.stderr)
        return 2
    t = SelfTest(args[0])
    return t.run() if limit is None else t.run_limited(limit)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
