package integration_test

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
)

// cliStats runs machq stat --json against d and returns what it printed.
func cliStats(t *testing.T, d *daemon) machq.Stats {
	t.Helper()
	r := runCLI(t, nil, "stat", "--socket", d.socket, "--json")
	if r.code != 0 {
		t.Fatalf("machq stat --json: exit %d: %s", r.code, r.stderr)
	}
	var st machq.Stats
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("machq stat --json printed no STATS document: %v\n%s", err, r.stdout)
	}
	return st
}

// cliQueue is the named queue's entry in machq stat --json, and whether
// it is listed at all.
func cliQueue(t *testing.T, d *daemon, name string) (machq.QueueStats, bool) {
	t.Helper()
	for _, q := range cliStats(t, d).Queues {
		if q.Name == name {
			return q, true
		}
	}
	return machq.QueueStats{Name: name}, false
}

// settledBack waits until queue holds n messages in line, none pending
// with a consumer or waiting out a NAK's delay, and returns its entry in
// machq stat --json.
func settledBack(t *testing.T, d *daemon, queue string, n int) machq.QueueStats {
	t.Helper()
	var q machq.QueueStats
	waitFor(t, fmt.Sprintf("%d messages back in line in %s", n, queue), func() bool {
		q, _ = cliQueue(t, d, queue)
		return q.Messages == n && q.Pending == 0 && q.Delayed == 0
	})
	return q
}

// counts returns queue's entry in machq stat --json, counters and
// settings, once nothing of it is pending with a consumer or waiting out
// a NAK's delay. The server does not list a queue that is idle (empty,
// nobody waiting): it removes it and brings it back, counters and
// settings included, on its next use. So a marker message is stored to
// bring it back, and purged after; it is not counted in what is
// returned.
func counts(t *testing.T, d *daemon, queue string) machq.QueueStats {
	t.Helper()
	waitFor(t, "nothing pending in "+queue, func() bool {
		q, _ := cliQueue(t, d, queue)
		return q.Pending == 0 && q.Delayed == 0
	})
	ctx := ctxT(t)
	c, err := machq.Dial(ctx, d.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const marker = "marker"
	if _, err := c.Send(ctx, queue, []byte(marker)); err != nil {
		t.Fatal(err)
	}
	q, ok := cliQueue(t, d, queue)
	if !ok {
		t.Fatalf("machq stat --json does not list %s holding a message", queue)
	}
	if p, err := c.Purge(ctx, queue); err != nil || p.Freed < 1 {
		t.Fatalf("purge of the marker: %+v, %v", p, err)
	}
	q.Messages--
	q.Bytes -= int64(len(marker))
	return q
}

// TestIntegrationRetrieveToFullDeviceKeepsTheMessage: machq retrieve
// whose write fails (--out /dev/full, or stdout redirected to it) exits
// 1 saying why and that the message stays, and the message does stay: in
// line, NAKed rather than acknowledged, whole for peek and for the next
// retrieve. Inline payloads and pages alike.
func TestIntegrationRetrieveToFullDeviceKeepsTheMessage(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full:", err)
	}
	d := startDaemon(t, "", "--log-level", "warn")
	big := make([]byte, 300<<10) // travels as a page
	rand.Read(big)
	for i, tc := range []struct {
		name    string
		payload []byte
		stdout  bool // redirect stdout rather than --out
	}{
		{"--out /dev/full, inline", []byte("stays put"), false},
		{"--out /dev/full, page", big, false},
		{"stdout to /dev/full, inline", []byte("stays put too"), true},
		{"stdout to /dev/full, page", big, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			queue := fmt.Sprint("full-", i)
			store(t, d.socket, queue, tc.payload)
			retrieve := bin.machq + " retrieve --socket " + d.socket + " --queue " + queue
			if tc.stdout {
				retrieve += " >/dev/full"
			} else {
				retrieve += " --out /dev/full"
			}
			r := runCmd(t, exec.Command("/bin/sh", "-c", retrieve))
			if r.code != 1 || !strings.Contains(r.stderr, "no space left on device") || !strings.Contains(r.stderr, "stays in queue "+queue) {
				t.Fatalf("%s: exit %d, stderr %q; want 1, the write's error and that the message stays in %s", retrieve, r.code, r.stderr, queue)
			}
			q := settledBack(t, d, queue, 1)
			if q.Delivered != 1 || q.Acked != 0 || q.Nacked != 1 || q.DeadLettered != 0 {
				t.Fatalf("after the failed write: %+v; want one delivery, NAKed, not acknowledged", q)
			}
			if p := runCLI(t, nil, "peek", "--socket", d.socket, "--queue", queue); p.code != 0 || !bytes.Equal([]byte(p.stdout), tc.payload) {
				t.Fatalf("peek after the failed write: exit %d, %d bytes, stderr %q", p.code, len(p.stdout), p.stderr)
			}
			if p := runCLI(t, nil, "peek", "--socket", d.socket, "--queue", queue, "--list"); !strings.Contains(p.stdout, "could not write it") {
				t.Errorf("peek --list does not show why the message came back:\n%s", p.stdout)
			}
			if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", queue); r.code != 0 || !bytes.Equal([]byte(r.stdout), tc.payload) {
				t.Fatalf("retrieve after the failed write: exit %d, %d bytes, stderr %q", r.code, len(r.stdout), r.stderr)
			}
			if q := counts(t, d, queue); q.Messages != 0 || q.Acked != 1 || q.Redelivered != 1 || q.Delivered != 2 {
				t.Fatalf("after the whole retrieve: %+v; want it gone, acknowledged on its second delivery", q)
			}
		})
	}
}

// TestIntegrationShellRetrievesInAckMode: the shell's retrieve takes a
// message in ack mode and acknowledges it once shown (the queue's acked
// counter rises); --no-ack takes it without; a shell that cannot show
// it (stdout on /dev/full) leaves it in the queue, NAKed, not acked.
func TestIntegrationShellRetrievesInAckMode(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	store(t, d.socket, "acked", []byte("first"))
	sh := startShell(t, d.socket, "--queue", "acked", "--log-level", "warn")
	sh.send("2")
	sh.expect("first")
	sh.expect("integrity confirmed")
	if q := counts(t, d, "acked"); q.Acked != 1 || q.Delivered != 1 || q.Messages != 0 || q.Nacked != 0 {
		t.Fatalf("after the shell's retrieve: %+v; want one delivery, acknowledged", q)
	}
	sh.send("3")
	<-sh.done

	// --no-ack: delivered, never acknowledged.
	store(t, d.socket, "acked", []byte("second"))
	r := runCLI(t, strings.NewReader("2\n3\n"), "shell", "--socket", d.socket, "--queue", "acked", "--no-ack", "--log-level", "warn")
	if r.code != 0 || !strings.Contains(r.stdout, "second\nintegrity confirmed") {
		t.Fatalf("shell --no-ack: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if q := counts(t, d, "acked"); q.Delivered != 2 || q.Acked != 1 || q.Messages != 0 {
		t.Fatalf("after shell --no-ack: %+v; want a second delivery and still one acknowledgement", q)
	}

	// A shell whose output fails puts the message back.
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full:", err)
	}
	store(t, d.socket, "acked", []byte("third"))
	cmd := exec.Command("/bin/sh", "-c", bin.machq+" shell --socket "+d.socket+" --queue acked --log-level warn >/dev/full")
	cmd.Stdin = strings.NewReader("2\n3\n")
	runCmd(t, cmd)
	q := settledBack(t, d, "acked", 1)
	if q.Acked != 1 || q.Nacked != 1 || q.Delivered != 3 {
		t.Fatalf("after a shell that could not show the message: %+v; want it NAKed, not acknowledged", q)
	}
	if p := runCLI(t, nil, "peek", "--socket", d.socket, "--queue", "acked"); p.stdout != "third" {
		t.Fatalf("peek: %+v; want the message the shell could not show", p)
	}
}

// TestIntegrationCLIDeleteAndConfig runs machq delete and machq config
// against machqd: delete removes a queue with what it holds (stat no
// longer lists it, its waiters are told, a new queue of that name starts
// empty); config sets a queue's max deliveries and lease, which stat
// shows and deliveries obey.
func TestIntegrationCLIDeleteAndConfig(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	ctx := ctxT(t)
	cli := func(args ...string) result {
		t.Helper()
		r := runCLI(t, nil, append(args[:1:1], append([]string{"--socket", d.socket}, args[1:]...)...)...)
		if r.code != 0 {
			t.Fatalf("machq %v: exit %d: %s", args, r.code, r.stderr)
		}
		return r
	}

	t.Run("delete", func(t *testing.T) {
		for _, p := range []string{"a", "b", "c"} {
			store(t, d.socket, "doomed", []byte(p))
		}
		holder := dial(t, d.socket)
		held, err := holder.Reserve(ctx, "doomed", &machq.AckOptions{Lease: -1})
		if err != nil || string(held.Bytes()) != "a" {
			t.Fatalf("reserve: %v", err)
		}
		defer held.Close()
		if q, ok := cliQueue(t, d, "doomed"); !ok || q.Messages != 2 || q.Pending != 1 || q.Delivered != 1 {
			t.Fatalf("before the delete: %+v (listed %v)", q, ok)
		}

		// Two consumers wait on an empty queue: the CLI and the library.
		waiting := exec.Command(bin.machq, "retrieve", "--socket", d.socket, "--queue", "awaited", "--wait", "2m")
		done, out, errb := started(t, waiting)
		waiter := dial(t, d.socket)
		waited := make(chan error, 1)
		go func() {
			dl, err := waiter.ReserveWait(ctx, "awaited", nil)
			if dl != nil {
				dl.Close()
			}
			waited <- err
		}()
		waitFor(t, "two consumers waiting on awaited", func() bool {
			q, _ := cliQueue(t, d, "awaited")
			return q.Waiting == 2
		})

		r := cli("delete", "--queue", "doomed")
		if want := "deleted doomed: 2 messages freed; 1 pending with consumers are freed when they come back unacknowledged"; !strings.Contains(r.stdout, want) {
			t.Fatalf("machq delete: %q; want %q", r.stdout, want)
		}
		if q, ok := cliQueue(t, d, "doomed"); ok {
			t.Fatalf("stat still lists the deleted queue: %+v", q)
		}
		if r := cli("delete", "--queue", "awaited"); !strings.Contains(r.stdout, "deleted awaited: 0 messages freed") {
			t.Fatalf("machq delete of a queue with waiters: %q", r.stdout)
		}
		if code := exitWithin(t, done, waiting, 30*time.Second); code != 1 || !strings.Contains(errb.String(), "queue awaited was deleted") || out.String() != "" {
			t.Fatalf("the waiting machq retrieve: exit %d, stdout %q, stderr %q; want 1 saying the queue was deleted", code, out, errb)
		}
		select {
		case err := <-waited:
			if !errors.Is(err, machq.ErrCancelled) || !strings.Contains(err.Error(), "deleted") {
				t.Fatalf("the waiting ReserveWait: %v; want ErrCancelled saying the queue was deleted", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the waiting ReserveWait was not answered when its queue was deleted")
		}
		if q, ok := cliQueue(t, d, "awaited"); ok {
			t.Fatalf("stat still lists the deleted queue: %+v", q)
		}

		// The acknowledgement of a delivery of the deleted queue settles
		// it and brings nothing back.
		if err := held.Ack(ctx); err != nil {
			t.Fatalf("ack of a delivery of the deleted queue: %v", err)
		}
		waitFor(t, "the server to hold nothing", func() bool {
			st := cliStats(t, d)
			return st.Messages == 0 && st.Pending.Messages == 0
		})
		// A queue removed for being idle comes back with its counters;
		// a deleted one is gone: the name starts afresh, empty.
		if q := counts(t, d, "doomed"); q.Messages != 0 || q.Delivered != 0 || q.Acked != 0 {
			t.Fatalf("the queue created again under the deleted one's name: %+v; want a new, empty queue", q)
		}
		store(t, d.socket, "doomed", []byte("new"))
		if r := cli("retrieve", "--queue", "doomed"); r.stdout != "new" {
			t.Fatalf("first message of the queue created again: %q, want %q", r.stdout, "new")
		}
		if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "doomed"); r.code != 3 {
			t.Fatalf("the deleted queue's messages came back: %+v", r)
		}
	})

	t.Run("config", func(t *testing.T) {
		if r := cli("config", "--queue", "cfg", "--max-deliveries", "2", "--lease", "300ms"); r.stdout != "configured cfg\n" {
			t.Fatalf("machq config: %q", r.stdout)
		}
		if q := counts(t, d, "cfg"); q.MaxDeliveries != 2 || q.LeaseMillis != 300 {
			t.Fatalf("stat after machq config: %+v; want max_deliveries 2, lease_ms 300", q)
		}
		// Behaviour: a reserve asking for no lease of its own gets the
		// queue's, and the second lapsed delivery makes a dead letter.
		store(t, d.socket, "cfg", []byte("slow job"))
		c := dial(t, d.socket)
		var lapsed []*machq.Delivery
		for n := 1; n <= 2; n++ {
			dl, err := c.ReserveWait(ctx, "cfg", nil)
			if err != nil {
				t.Fatalf("delivery %d: %v", n, err)
			}
			defer dl.Close()
			if dl.Deliveries() != n || string(dl.Bytes()) != "slow job" {
				t.Fatalf("delivery %d: %q, counting %d deliveries", n, dl.Bytes(), dl.Deliveries())
			}
			lapsed = append(lapsed, dl)
			// Nobody settles it: the queue's lease runs out.
			waitFor(t, fmt.Sprintf("the lease of delivery %d to run out", n), func() bool {
				q, _ := cliQueue(t, d, "cfg")
				return q.Pending == 0
			})
		}
		dlq, _ := cliQueue(t, d, "cfg.dlq")
		q := counts(t, d, "cfg")
		if dlq.Messages != 1 || q.Messages != 0 || q.DeadLettered != 1 || q.Delivered != 2 || q.Redelivered != 1 || q.Acked != 0 {
			t.Fatalf("after two lapsed deliveries with --max-deliveries 2: cfg %+v, cfg.dlq %+v; want the message dead", q, dlq)
		}
		if p := cli("peek", "--queue", "cfg.dlq", "--list"); !strings.Contains(p.stdout, "max deliveries (after 2)") {
			t.Errorf("peek --list of cfg.dlq does not say the message died of max deliveries:\n%s", p.stdout)
		}
		for i, dl := range lapsed {
			if err := dl.Ack(ctx); !errors.Is(err, machq.ErrStale) {
				t.Errorf("ack of lapsed delivery %d: %v; want ErrStale", i+1, err)
			}
		}

		cli("config", "--queue", "cfg", "--no-lease")
		if q := counts(t, d, "cfg"); q.LeaseMillis != 0xFFFFFFFF || q.MaxDeliveries != 0 {
			t.Fatalf("stat after config --no-lease: %+v; want no lease and the server's max deliveries", q)
		}
		cli("config", "--queue", "cfg")
		if q := counts(t, d, "cfg"); q.LeaseMillis != 0 || q.MaxDeliveries != 0 {
			t.Fatalf("stat after config with no settings: %+v; want the server's", q)
		}
	})
}

// TestIntegrationSendSeqs: the sequence numbers Send, SendPage and
// SendFile return on one queue are consecutive, whichever way the
// payload travels, and are the Seq its consumer receives.
func TestIntegrationSendSeqs(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	c := dial(t, d.socket)
	ctx := ctxT(t)
	type sent struct {
		how     string
		seq     uint64
		payload []byte
	}
	var all []sent
	add := func(how string, seq uint64, err error, payload []byte) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", how, err)
		}
		all = append(all, sent{how, seq, payload})
	}
	for _, queue := range []string{"seqs", ""} {
		all = all[:0]
		seq, err := c.Send(ctx, queue, []byte("inline send"))
		add("Send inline", seq, err, []byte("inline send"))

		big := make([]byte, 200<<10)
		rand.Read(big)
		seq, err = c.Send(ctx, queue, big)
		add("Send of a page", seq, err, big)

		p, err := machq.NewPage(64 << 10)
		if err != nil {
			t.Fatal(err)
		}
		rand.Read(p.Bytes())
		pageBytes := bytes.Clone(p.Bytes())
		seq, err = c.SendPage(ctx, queue, p)
		add("SendPage", seq, err, pageBytes)

		empty, err := machq.NewPage(0)
		if err != nil {
			t.Fatal(err)
		}
		seq, err = c.SendPage(ctx, queue, empty)
		add("SendPage of an empty page", seq, err, nil)

		file := filepath.Join(t.TempDir(), "file")
		fileBytes := make([]byte, 100<<10)
		rand.Read(fileBytes)
		if err := os.WriteFile(file, fileBytes, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		n, seq, err := c.SendFile(ctx, queue, f)
		f.Close()
		if n != int64(len(fileBytes)) {
			t.Fatalf("SendFile stored %d bytes of %d", n, len(fileBytes))
		}
		add("SendFile of a regular file", seq, err, fileBytes)

		small := filepath.Join(t.TempDir(), "small")
		if err := os.WriteFile(small, []byte("small file"), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err = os.Open(small)
		if err != nil {
			t.Fatal(err)
		}
		_, seq, err = c.SendFile(ctx, queue, f)
		f.Close()
		add("SendFile of a small file (inline)", seq, err, []byte("small file"))

		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		piped := make([]byte, 150<<10)
		rand.Read(piped)
		go func() { pw.Write(piped); pw.Close() }()
		_, seq, err = c.SendFile(ctx, queue, pr)
		pr.Close()
		add("SendFile of a pipe", seq, err, piped)

		sealed := sealedSparse(t, 1<<20, "head", "tail")
		_, seq, err = c.SendFile(ctx, queue, sealed)
		sealedBytes := make([]byte, 1<<20)
		copy(sealedBytes, "head")
		copy(sealedBytes[len(sealedBytes)-4:], "tail")
		add("SendFile of a sealed memfd", seq, err, sealedBytes)

		memfd, err := unix.MemfdCreate("small", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		mf := os.NewFile(uintptr(memfd), "small-memfd")
		if _, err := io.WriteString(mf, "small sealed"); err != nil {
			t.Fatal(err)
		}
		if _, err := unix.FcntlInt(mf.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
			t.Fatal(err)
		}
		if _, err := mf.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		_, seq, err = c.SendFile(ctx, queue, mf)
		mf.Close()
		add("SendFile of a small sealed memfd (inline)", seq, err, []byte("small sealed"))

		seq, err = c.Send(ctx, queue, []byte("last"))
		add("Send after the others", seq, err, []byte("last"))

		label := queue
		if label == "" {
			label = "the private queue"
		}
		if all[0].seq == 0 {
			t.Errorf("%s: the first Send returned sequence number 0", label)
		}
		for i := 1; i < len(all); i++ {
			if all[i].seq != all[i-1].seq+1 {
				t.Errorf("%s: %s returned seq %d after %s's %d; want consecutive numbers", label, all[i].how, all[i].seq, all[i-1].how, all[i-1].seq)
			}
		}
		// Half retrieved plainly, half in ack mode: both carry the Seq
		// the sender was told.
		for i, s := range all {
			var m *machq.Message
			if i%2 == 0 {
				m, err = c.Retrieve(ctx, queue)
			} else {
				var dl *machq.Delivery
				dl, err = c.Reserve(ctx, queue, nil)
				if err == nil {
					m = dl.Message
					if aerr := dl.Ack(ctx); aerr != nil {
						t.Errorf("ack: %v", aerr)
					}
				}
			}
			if err != nil {
				t.Fatalf("%s: retrieve of %s's message: %v", label, s.how, err)
			}
			if m.Seq != s.seq || !bytes.Equal(m.Bytes(), s.payload) {
				t.Errorf("%s: %s's message arrived with seq %d and %d bytes; the sender was told seq %d for %d bytes", label, s.how, m.Seq, m.Len(), s.seq, len(s.payload))
			}
			m.Close()
		}
		if _, err := c.Retrieve(ctx, queue); !errors.Is(err, machq.ErrEmpty) {
			t.Errorf("%s: after every message: %v, want ErrEmpty", label, err)
		}
	}
}
