"""The self-test (selftest.py) as a unittest test case.

    MACHQ_TEST_SOCKET=SOCKET_PATH python3 -m unittest -v
    MACHQ_TEST_SOCKET=SOCKET_PATH MACHQ_TEST_MAX_QUEUE_MESSAGES=N python3 -m unittest -v

Run from this directory, unittest discovers this file and the module
machq it tests is machq.py beside it; run from a directory holding only
this file and selftest.py, it tests the installed package.

MACHQ_TEST_SOCKET names the socket of a running machqd, which should
have no other client meanwhile (see selftest.py); without it the test is
skipped. With
MACHQ_TEST_MAX_QUEUE_MESSAGES=N it runs only the checks of STORE's WAIT
flag, against a server started with --max-queue-messages N. Each check
prints its "ok" or "FAIL" line; the test fails if any check failed.
"""

import os
import unittest

import selftest

SOCKET_ENV = "MACHQ_TEST_SOCKET"
LIMIT_ENV = "MACHQ_TEST_MAX_QUEUE_MESSAGES"


class SelfTestCase(unittest.TestCase):
    def test_selftest(self):
        path = os.environ.get(SOCKET_ENV, "")
        if not path:
            self.skipTest("%s is not set: no machqd to test against" % SOCKET_ENV)
        limit = os.environ.get(LIMIT_ENV, "")
        if limit and not (limit.isdigit() and int(limit) >= 1):
            self.fail("%s=%r: want a number of messages, 1 or more" % (LIMIT_ENV, limit))
        t = selftest.SelfTest(path)
        status = t.run_limited(int(limit)) if limit else t.run()
        self.assertEqual(status, 0, "%d check(s) failed: see the FAIL lines above" % t.failures)


if __name__ == "__main__":
    unittest.main()
