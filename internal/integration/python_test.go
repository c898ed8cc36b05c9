package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/testtool"
)

// The Python client in examples/python was written from docs/PROTOCOL.md
// alone. These tests run it against a real machqd: its self-test, and
// messages passed between it and the Go library in both directions.

// pythonTimeout bounds each Python program; the self-test moves 34 MiB
// through a race-enabled server.
const pythonTimeout = 3 * time.Minute

// pythonExamples returns the absolute path of examples/python. The test
// runs in internal/integration.
func pythonExamples(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "examples", "python"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "machq.py")); err != nil {
		t.Fatalf("the Python client is missing: %v", err)
	}
	return dir
}

// runPython runs python3 with args (a script, or -c and a program) with
// examples/python on PYTHONPATH, and returns what it printed. It fails t
// with that output if the program fails or overruns pythonTimeout.
func runPython(t *testing.T, python, dir string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pythonTimeout)
	defer cancel()
	// -B: write no __pycache__ into the source tree.
	cmd := exec.CommandContext(ctx, python, append([]string{"-B"}, args...)...)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+dir, "PYTHONDONTWRITEBYTECODE=1")
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (killed after %v)", err, pythonTimeout)
		}
		t.Fatalf("python3 %s: %v; output:\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// TestIntegrationPythonClient runs examples/python/selftest.py, which
// checks the Python client and the protocol document against the server:
// round trips inline and as sealed memfds, errors, waiting, CANCEL, STATS,
// digest checks, acknowledged delivery, PEEK, PURGE, DELETE, consumer
// groups and CONFIG.
func TestIntegrationPythonClient(t *testing.T) {
	python := testtool.Path(t, "python3", "apt-get install python3")
	dir := pythonExamples(t)
	d := startDaemon(t, "", "--log-level", "warn")

	out := runPython(t, python, dir, filepath.Join(dir, "selftest.py"), d.socket)
	lines := "\n" + out
	if !strings.Contains(lines, "\n0 failure(s)\n") || strings.Contains(lines, "\nFAIL") {
		t.Fatalf("selftest.py exited 0 but did not report success:\n%s", out)
	}
	t.Logf("selftest.py: %d checks passed", strings.Count(lines, "\nok "))
}

// TestIntegrationPythonWaitingStore runs the checks of examples/python/
// selftest.py for STORE's WAIT flag (section 6.3 of docs/PROTOCOL.md)
// against a server whose named queues hold at most two messages: a store
// into a full queue waits for room and is stored once a message leaves,
// in the order the stores came; a cancelled one, one whose queue is
// deleted and one whose connection ends store nothing; with consumer
// groups a store waits while any group is full.
func TestIntegrationPythonWaitingStore(t *testing.T) {
	python := testtool.Path(t, "python3", "apt-get install python3")
	dir := pythonExamples(t)
	const limit = "2"
	d := startDaemon(t, "", "--log-level", "warn", "--max-queue-messages", limit)

	out := runPython(t, python, dir, filepath.Join(dir, "selftest.py"),
		"--max-queue-messages", limit, d.socket)
	lines := "\n" + out
	if !strings.Contains(lines, "\n0 failure(s)\n") || strings.Contains(lines, "\nFAIL") {
		t.Fatalf("selftest.py --max-queue-messages %s exited 0 but did not report success:\n%s", limit, out)
	}
	if n := strings.Count(lines, "\nok    WAIT:"); n < 5 {
		t.Fatalf("selftest.py ran %d checks of the WAIT flag, want 5:\n%s", n, out)
	}
	t.Logf("selftest.py --max-queue-messages %s: %d checks passed", limit, strings.Count(lines, "\nok "))
}

// pyStore stores each size given after the socket and queue: a payload of
// random bytes, SHA-256 digest. It prints "size sha256hex seq" per message.
const pyStore = `
import hashlib, os, sys
import machq

sock, queue = sys.argv[1], sys.argv[2]
with machq.connect(sock, timeout=60) as c:
    for size in map(int, sys.argv[3:]):
        data = os.urandom(size)
        seq = c.store(data, queue)
        print(size, hashlib.sha256(data).hexdigest(), seq)
`

// pyRetrieve retrieves the number of messages given after the socket and
// queue; Client.retrieve verifies each digest. It prints, per message,
// "size sha256hex seq form digest_alg digesthex".
const pyRetrieve = `
import hashlib, sys
import machq

sock, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with machq.connect(sock, timeout=60) as c:
    for _ in range(n):
        m = c.retrieve(queue)
        print(len(m.data), hashlib.sha256(m.data).hexdigest(), m.seq,
              "inline" if m.inline else "memfd", m.digest_alg, m.digest.hex())
`

// TestIntegrationPythonInterop passes messages between the Python client
// and the Go library through named queues, inline and as pages: each side
// verifies the other's SHA-256 digests.
func TestIntegrationPythonInterop(t *testing.T) {
	python := testtool.Path(t, "python3", "apt-get install python3")
	dir := pythonExamples(t)
	d := startDaemon(t, "", "--log-level", "warn")
	ctx, cancel := context.WithTimeout(context.Background(), pythonTimeout)
	defer cancel()
	c, err := machq.Dial(ctx, d.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	t.Run("PythonToGo", func(t *testing.T) {
		// 1000 B travels inline, 3 MiB + 1 as a sealed memfd (the Python
		// client's inline threshold is 64 KiB).
		sizes := []int{1000, 3<<20 + 1}
		args := []string{"-c", pyStore, d.socket, "py-to-go"}
		for _, n := range sizes {
			args = append(args, strconv.Itoa(n))
		}
		out := runPython(t, python, dir, args...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != len(sizes) {
			t.Fatalf("Python printed %d lines, want %d:\n%s", len(lines), len(sizes), out)
		}
		for i, line := range lines {
			var size int64
			var sum string
			var seq uint64
			if _, err := fmt.Sscan(line, &size, &sum, &seq); err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			m, err := c.Retrieve(ctx, "py-to-go") // verifies the digest Python attached
			if err != nil {
				t.Fatalf("retrieving message %d (%d bytes) stored by Python: %v", i, size, err)
			}
			got := sha256.Sum256(m.Bytes())
			alg, digest := m.Digest()
			switch {
			case m.Len() != size:
				t.Errorf("message %d: %d bytes, Python stored %d", i, m.Len(), size)
			case hex.EncodeToString(got[:]) != sum:
				t.Errorf("message %d: SHA-256 %x, Python stored %s", i, got, sum)
			case alg != machq.DigestSHA256 || hex.EncodeToString(digest) != sum:
				t.Errorf("message %d: attached digest %v %x, want SHA-256 %s", i, alg, digest, sum)
			case m.Seq != seq:
				t.Errorf("message %d: seq %d, STORED told Python %d", i, m.Seq, seq)
			case m.OutOfLine() != (size > 64<<10):
				t.Errorf("message %d (%d bytes): out of line %v", i, size, m.OutOfLine())
			}
			m.Close()
		}
	})

	t.Run("GoToPython", func(t *testing.T) {
		// 5 MiB travels as a page, 100 B inline (the Go client's default
		// threshold is 64 KiB).
		payloads := [][]byte{make([]byte, 5<<20), make([]byte, 100)}
		for _, p := range payloads {
			rand.Read(p)
			if _, err := c.Send(ctx, "go-to-py", p); err != nil {
				t.Fatal(err)
			}
		}
		out := runPython(t, python, dir, "-c", pyRetrieve, d.socket, "go-to-py", strconv.Itoa(len(payloads)))
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != len(payloads) {
			t.Fatalf("Python printed %d lines, want %d:\n%s", len(lines), len(payloads), out)
		}
		for i, line := range lines {
			var size, alg int
			var sum, form, digest string
			var seq uint64
			if _, err := fmt.Sscan(line, &size, &sum, &seq, &form, &alg, &digest); err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			want := sha256.Sum256(payloads[i])
			wantForm := "inline"
			if len(payloads[i]) > 64<<10 {
				wantForm = "memfd"
			}
			switch {
			case size != len(payloads[i]):
				t.Errorf("message %d: Python got %d bytes, Go sent %d", i, size, len(payloads[i]))
			case sum != hex.EncodeToString(want[:]):
				t.Errorf("message %d: Python got SHA-256 %s, Go sent %x", i, sum, want)
			case alg != int(machq.DigestSHA256) || digest != sum:
				t.Errorf("message %d: Python saw digest algorithm %d, digest %s; want SHA-256 %s", i, alg, digest, sum)
			case form != wantForm:
				t.Errorf("message %d (%d bytes): travelled %s, want %s", i, size, form, wantForm)
			}
		}
	})
}

// pyReserve takes the number of messages given after the socket and queue
// in ack mode (version 3), waiting up to 10 s for each, verifies each
// digest (Client.reserve does), then settles them all as told: "ack", or
// "nak" with the reason given after it. (Holding them all first keeps a
// NAKed message from coming back before the next is taken.) It prints,
// per message, "size sha256hex seq deliveries outcome" and, last, the
// note of the last message (an empty line if none).
const pyReserve = `
import hashlib, sys
import machq

sock, queue, n, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
reason = sys.argv[5] if len(sys.argv) > 5 else ""
with machq.connect(sock, timeout=60) as c:
    assert c.version == 3, c.version
    held = [c.reserve(queue, wait_ms=10000) for _ in range(n)]
    for d in held:
        outcome = d.ack() if how == "ack" else d.nak(reason=reason)
        print(len(d.payload), hashlib.sha256(d.payload).hexdigest(), d.seq, d.deliveries, outcome)
    print(held[-1].note)
`

// TestIntegrationPythonAckInterop passes messages between the Go library
// and the Python client in ack mode: what Python acknowledges is gone for
// Go, what Python NAKs comes back to Go at its place as a redelivery with
// Python's reason, and what Go NAKs comes to Python marked likewise.
func TestIntegrationPythonAckInterop(t *testing.T) {
	python := testtool.Path(t, "python3", "apt-get install python3")
	dir := pythonExamples(t)
	d := startDaemon(t, "", "--log-level", "warn")
	ctx, cancel := context.WithTimeout(context.Background(), pythonTimeout)
	defer cancel()
	c, err := machq.Dial(ctx, d.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// send stores 100 B (inline) and 200 KiB (a page) into queue.
	send := func(t *testing.T, queue string) [][]byte {
		t.Helper()
		payloads := [][]byte{make([]byte, 100), make([]byte, 200<<10)}
		for _, p := range payloads {
			rand.Read(p)
			if _, err := c.Send(ctx, queue, p); err != nil {
				t.Fatal(err)
			}
		}
		return payloads
	}
	// reserve runs pyReserve and returns its message lines and the note.
	reserve := func(t *testing.T, queue string, n int, how ...string) ([]string, string) {
		t.Helper()
		args := append([]string{"-c", pyReserve, d.socket, queue, strconv.Itoa(n)}, how...)
		out := runPython(t, python, dir, args...)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) != n+1 {
			t.Fatalf("Python printed %d lines, want %d:\n%s", len(lines), n+1, out)
		}
		return lines[:n], lines[n]
	}
	// check compares a pyReserve line with the payload Go sent.
	check := func(t *testing.T, i int, line string, payload []byte, deliveries, outcome int) {
		t.Helper()
		var size, n, o int
		var sum string
		var seq uint64
		if _, err := fmt.Sscan(line, &size, &sum, &seq, &n, &o); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		want := sha256.Sum256(payload)
		switch {
		case size != len(payload) || sum != hex.EncodeToString(want[:]):
			t.Errorf("message %d: Python got %d bytes, SHA-256 %s; Go sent %d, %x", i, size, sum, len(payload), want)
		case n != deliveries:
			t.Errorf("message %d: Python saw deliveries %d, want %d", i, n, deliveries)
		case o != outcome:
			t.Errorf("message %d: settled with outcome %d, want %d", i, o, outcome)
		}
	}

	t.Run("PythonAcks", func(t *testing.T) {
		payloads := send(t, "ack-py-acks")
		lines, _ := reserve(t, "ack-py-acks", len(payloads), "ack")
		for i, line := range lines {
			check(t, i, line, payloads[i], 1, 0)
		}
		if q := queueStats(d, "ack-py-acks"); q.Messages != 0 || q.Pending != 0 || q.Delayed != 0 {
			t.Errorf("after Python's ACKs the queue holds %+v, want nothing", q)
		}
		if _, err := c.Reserve(ctx, "ack-py-acks", nil); !errors.Is(err, machq.ErrEmpty) {
			t.Errorf("Reserve after Python's ACKs: %v, want ErrEmpty", err)
		}
	})

	t.Run("PythonNaks", func(t *testing.T) {
		payloads := send(t, "ack-py-naks")
		lines, _ := reserve(t, "ack-py-naks", len(payloads), "nak", "python cannot use it")
		for i, line := range lines {
			check(t, i, line, payloads[i], 1, 1)
		}
		// Back at their places after the server's backoff, in order.
		for i, p := range payloads {
			dl, err := c.ReserveWait(ctx, "ack-py-naks", nil)
			if err != nil {
				t.Fatalf("message %d NAKed by Python: %v", i, err)
			}
			switch {
			case !bytes.Equal(dl.Bytes(), p):
				t.Errorf("message %d: Go got other bytes back than it sent", i)
			case dl.Deliveries() != 2:
				t.Errorf("message %d: Deliveries() = %d, want 2", i, dl.Deliveries())
			case dl.Note() != "python cannot use it":
				t.Errorf("message %d: Note() = %q, want Python's NAK reason", i, dl.Note())
			}
			if err := dl.Ack(ctx); err != nil {
				t.Fatal(err)
			}
			dl.Close()
		}
	})

	t.Run("GoNaks", func(t *testing.T) {
		payloads := send(t, "ack-go-naks")
		var held []*machq.Delivery
		for range payloads { // all held before the first NAK: none comes back meanwhile
			dl, err := c.ReserveWait(ctx, "ack-go-naks", nil)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, dl)
		}
		for _, dl := range held {
			if err := dl.Nak(ctx, 0, "go says later"); err != nil {
				t.Fatal(err)
			}
			dl.Close()
		}
		lines, note := reserve(t, "ack-go-naks", len(payloads), "ack")
		for i, line := range lines {
			check(t, i, line, payloads[i], 2, 0)
		}
		if note != "go says later" {
			t.Errorf("Python saw note %q, want Go's NAK reason", note)
		}
	})
}
