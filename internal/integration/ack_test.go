package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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

// holderEnv, when set in the environment of this test binary, makes it
// a consumer process instead (see holdDeliveries): SOCKET|QUEUE|N.
const holderEnv = "MACHQ_INTEGRATION_HOLDER"

func init() {
	if spec := os.Getenv(holderEnv); spec != "" {
		os.Exit(holdDeliveries(spec))
	}
}

// holdDeliveries is a consumer process: it takes N messages of QUEUE in
// ack mode (credit N, no lease), says "holding SEQ" for each and "held",
// and then holds them, unsettled, until stdin ends or it is killed.
func holdDeliveries(spec string) int {
	parts := strings.Split(spec, "|")
	if len(parts) != 3 {
		fmt.Fprintf(os.Stderr, "%s=%q: want SOCKET|QUEUE|N\n", holderEnv, spec)
		return 2
	}
	n, err := strconv.Atoi(parts[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := machq.Dial(ctx, parts[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	for range n {
		d, err := c.Reserve(ctx, parts[1], &machq.AckOptions{Credit: n, Lease: -1})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("holding %d\n", d.Seq)
	}
	fmt.Println("held")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// TestIntegrationSIGKILLedConsumerRedeliveredAtOnce: a consumer process
// killed while it holds messages in ack mode (three, with a credit of
// three) gives every one of them back the instant its connection ends,
// to a consumer already waiting, each within 500 ms of the kill and with
// its delivery count raised.
func TestIntegrationSIGKILLedConsumerRedeliveredAtOnce(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	big := make([]byte, 1<<20) // a page among inline messages
	rand.Read(big)
	payloads := map[uint64][]byte{}
	c := dial(t, d.socket)
	for _, p := range [][]byte{[]byte("first job"), big, []byte("third job")} {
		seq, err := c.Send(ctxT(t), "jobs", p)
		if err != nil {
			t.Fatal(err)
		}
		payloads[seq] = p
	}

	// The consumer: this test binary, taking all three and holding them.
	holder := exec.Command(os.Args[0])
	holder.Env = append(os.Environ(), fmt.Sprintf("%s=%s|jobs|3", holderEnv, d.socket))
	stdin, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	done, out, errb := started(t, holder)
	waitFor(t, "the consumer to hold three messages", func() bool {
		select {
		case <-done:
			t.Fatalf("the consumer exited: %s", errb)
		default:
		}
		return strings.Contains(out.String(), "held\n")
	})
	held := map[uint64]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if s, ok := strings.CutPrefix(l, "holding "); ok {
			seq, _ := strconv.ParseUint(s, 10, 64)
			held[seq] = true
		}
	}
	if q := queueStats(d, "jobs"); q.Pending != 3 || q.Messages != 0 || len(held) != 3 {
		t.Fatalf("with the consumer holding %v: %+v; want three pending", held, q)
	}

	// Another consumer waits, three retrieves at once on one connection.
	waiter := dial(t, d.socket)
	type receipt struct {
		dl  *machq.Delivery
		err error
		at  time.Time
	}
	got := make(chan receipt, 3)
	for range 3 {
		go func() {
			dl, err := waiter.ReserveWait(ctxT(t), "jobs", &machq.AckOptions{Credit: 3, Lease: -1})
			got <- receipt{dl, err, time.Now()}
		}()
	}
	waitFor(t, "three retrieves waiting on jobs", func() bool { return queueStats(d, "jobs").Waiting == 3 })

	killed := time.Now()
	if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	for range 3 {
		select {
		case r := <-got:
			if r.err != nil {
				t.Fatalf("waiting consumer: %v", r.err)
			}
			dl := r.dl
			defer dl.Close()
			took := r.at.Sub(killed)
			t.Logf("seq %d (%d bytes) redelivered %v after SIGKILL", dl.Seq, dl.Len(), took)
			if took >= 500*time.Millisecond {
				t.Errorf("seq %d reached the waiting consumer %v after the kill; want under 500ms", dl.Seq, took)
			}
			if !held[dl.Seq] || !bytes.Equal(dl.Bytes(), payloads[dl.Seq]) {
				t.Errorf("redelivered seq %d (%d bytes) is not one the killed consumer held (%v) or its payload differs", dl.Seq, dl.Len(), held)
			}
			delete(held, dl.Seq)
			if dl.Deliveries() != 2 || !dl.Redelivered() {
				t.Errorf("seq %d: deliveries %d, redelivered %v; want 2, true", dl.Seq, dl.Deliveries(), dl.Redelivered())
			}
			if err := dl.Ack(ctxT(t)); err != nil {
				t.Fatal(err)
			}
		case <-timeout:
			t.Fatalf("messages %v held by the killed consumer were not redelivered", held)
		}
	}
	<-done
	if q := counts(t, d, "jobs"); q.Messages != 0 || q.Delivered != 6 || q.Redelivered != 3 || q.Acked != 3 {
		t.Fatalf("after the redeliveries: %+v; want six deliveries, three of them redeliveries, acknowledged", q)
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
