"""Self-test of machq.py against a running machq server.

    python3 selftest.py SOCKET_PATH

Prints one line per check ("ok" or "FAIL", the check, details) and exits
with status 1 if any check failed (2 on a usage error). Each check states
what docs/PROTOCOL.md says should happen; a failure means the client, the
document or the server is wrong.

The test uses the connection's private queue and named queues called
selftest-PID-*, and briefly the queues "." and "..".
"""

import json
import os
import socket
import struct
import sys
import time

import machq
from machq import (CANCEL, DIGEST_BLAKE3, DIGEST_SHA256, FLAG_INLINE, HEADER, HELLO,
                   HELLO_BODY, MAGIC, RETRIEVE, STAT, STATS, STORE, STORED, WAIT_FOREVER,
                   ConnectionClosed, IntegrityError, ServerError)

INLINE_THRESHOLD = 4096   # so that 4096 B travels inline and 4097 B as a page
TIMEOUT = 60.0            # seconds any one socket operation may take
SIZES = (0, 1, 4095, 4096, 4097, 1 << 20, 16 << 20)


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
    def expect_error(name, fn, *args):
        """Call fn, which must raise ServerError `name`; describe the error."""
        try:
            fn(*args)
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

    # -- checks -------------------------------------------------------------

    def handshake(self):
        self.c = self.connect(inline_threshold=INLINE_THRESHOLD)
        c = self.c
        assert c.version == 1, c.version
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
        except IntegrityError as e:
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

    # -- driver -------------------------------------------------------------

    def run(self):
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
        self.check("connection still open after the failed requests",
                   lambda: "%d client(s)" % self.c.stats()["clients"])
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
    if len(argv) != 2:
        print("usage: python3 %s SOCKET_PATH" % os.path.basename(argv[0]), file=sys.stderr)
        return 2
    return SelfTest(argv[1]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
