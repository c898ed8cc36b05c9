package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
)

// TestIntegrationRetrieveIntoClosedPipeLeavesTheMessage: machq retrieve
// acknowledges only what it has written whole, so a reader that goes
// away (head -c 10) leaves the message in the queue, where machq peek
// ... and stat see it; --no-ack loses it, as before.
func TestIntegrationRetrieveIntoClosedPipeLeavesTheMessage(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	payload := make([]byte, 200<<10)
	rand.Read(payload)
	store(t, d.socket, "big", payload)

	run := func(extra string) string {
		sh := exec.Command("sh", "-c", bin.machq+" retrieve --socket "+d.socket+" --queue big"+extra+" | head -c 10 | wc -c")
		r := runCmd(t, sh)
		return strings.TrimSpace(r.stdout)
	}
	if got := run(""); got != "10" {
		t.Fatalf("head read %s bytes, want 10", got)
	}
	waitFor(t, "the message back in the queue", func() bool {
		q := queueStats(d, "big")
		return q.Messages == 1 && q.Pending == 0
	})
	if q := queueStats(d, "big"); q.Redelivered != 0 || q.Delivered != 1 {
		t.Fatalf("stats after the broken pipe: %+v", q)
	}
	// machq peek shows it, whole, without taking it.
	if r := runCLI(t, nil, "peek", "--socket", d.socket, "--queue", "big"); r.code != 0 || !bytes.Equal([]byte(r.stdout), payload) {
		t.Fatalf("peek: exit %d, %d bytes, stderr %q", r.code, len(r.stdout), r.stderr)
	}
	if r := runCLI(t, nil, "peek", "--socket", d.socket, "--queue", "big", "--list"); r.code != 0 || !strings.Contains(r.stdout, fmt.Sprint(len(payload))) {
		t.Fatalf("peek --list: %+v", r)
	}
	// The whole payload is still there, intact.
	out := filepath.Join(t.TempDir(), "out")
	if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "big", "--out", out); r.code != 0 {
		t.Fatalf("retrieve --out: %d %s", r.code, r.stderr)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, payload) {
		t.Fatalf("the payload written to --out differs (%d bytes)", len(got))
	}
	if q := queueStats(d, "big"); q.Messages != 0 || q.Pending != 0 {
		t.Fatalf("after a whole retrieve the queue holds %+v", q)
	}
	// --no-ack takes it before writing: a broken pipe loses it.
	store(t, d.socket, "big", payload)
	run(" --no-ack")
	waitFor(t, "the queue empty", func() bool { return queueStats(d, "big").Messages == 0 && queueStats(d, "big").Pending == 0 })
	// machq purge empties a queue and says how many it freed.
	for range 3 {
		store(t, d.socket, "big", payload)
	}
	if r := runCLI(t, nil, "purge", "--socket", d.socket, "--queue", "big"); r.code != 0 || !strings.Contains(r.stdout, "3 messages freed") {
		t.Fatalf("purge: %+v", r)
	}
	if q := queueStats(d, "big"); q.Messages != 0 {
		t.Fatalf("after the purge: %+v", q)
	}
}

// TestIntegrationSIGKILLedConsumerRedeliveredAtOnce: a consumer process
// killed while it holds a message in ack mode gives it back the instant
// its connection ends, to a consumer already waiting, with its delivery
// count raised.
func TestIntegrationSIGKILLedConsumerRedeliveredAtOnce(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	store(t, d.socket, "jobs", []byte("the job"))

	// The consumer takes the message and blocks writing it into a FIFO
	// nobody reads: it holds the message, unacknowledged.
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Open the FIFO's read end without reading, so that the consumer's
	// open succeeds and its write blocks once the pipe is full; a
	// payload larger than the pipe makes sure it does.
	big := make([]byte, 1<<20)
	rand.Read(big)
	store(t, d.socket, "jobs", big)
	rd, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	consumer := exec.Command(bin.machq, "retrieve", "--socket", d.socket, "--queue", "jobs", "--out", fifo)
	done, _, _ := started(t, consumer)
	// The first message is small: it is written whole and acknowledged.
	waitFor(t, "the consumer to finish the first message", func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
	buf := make([]byte, 64)
	n, _ := rd.Read(buf)
	if string(buf[:n]) != "the job" {
		t.Fatalf("the FIFO got %q", buf[:n])
	}
	if q := queueStats(d, "jobs"); q.Messages != 1 || q.Acked != 1 {
		t.Fatalf("after the first consumer: %+v", q)
	}
	// The second consumer blocks on the 1 MiB message.
	consumer = exec.Command(bin.machq, "retrieve", "--socket", d.socket, "--queue", "jobs", "--out", fifo)
	done, _, _ = started(t, consumer)
	waitFor(t, "the consumer to hold the big message", func() bool { return queueStats(d, "jobs").Pending == 1 })

	waiter := dial(t, d.socket)
	got := make(chan *machq.Delivery, 1)
	go func() {
		dl, err := waiter.ReserveWait(ctxT(t), "jobs", nil)
		if err != nil {
			t.Error(err)
		}
		got <- dl
	}()
	waitFor(t, "a consumer waiting on jobs", func() bool { return queueStats(d, "jobs").Waiting == 1 })
	killed := time.Now()
	consumer.Process.Signal(syscall.SIGKILL)
	<-done
	select {
	case dl := <-got:
		if dl == nil {
			t.Fatal("no delivery")
		}
		defer dl.Close()
		t.Logf("redelivered %s after SIGKILL", time.Since(killed))
		if !bytes.Equal(dl.Bytes(), big) || dl.Deliveries() != 2 || !dl.Redelivered() {
			t.Fatalf("redelivery: %d bytes, deliveries %d", dl.Len(), dl.Deliveries())
		}
		if err := dl.Ack(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the killed consumer's message was not redelivered")
	}
}

// TestIntegrationKickCommand: machq kick moves dead letters back; stat
// shows them as dead.
func TestIntegrationKickCommand(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn", "--max-deliveries", "1")
	store(t, d.socket, "work", []byte("poison"))
	c := dial(t, d.socket)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dl, err := c.Reserve(ctx, "work", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := dl.Nak(ctx, 0, "nope"); err != nil || dl.Outcome() != machq.DeadLettered {
		t.Fatalf("NAK of the only allowed delivery: %v, %s", err, dl.Outcome())
	}
	dl.Close()
	r := runCLI(t, nil, "stat", "--socket", d.socket)
	if !strings.Contains(r.stdout, "work.dlq") {
		t.Fatalf("stat does not list the dead-letter queue:\n%s", r.stdout)
	}
	r = runCLI(t, nil, "kick", "--socket", d.socket, "--queue", "work")
	if r.code != 0 || !strings.Contains(r.stdout, "1 dead letters moved") {
		t.Fatalf("kick: %d %q %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "work")
	if r.code != 0 || r.stdout != "poison" {
		t.Fatalf("retrieve after kick: %d %q %q", r.code, r.stdout, r.stderr)
	}
}
