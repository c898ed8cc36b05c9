package integration_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/machq/machq"
)

// kill SIGKILLs the daemon and waits for it to be gone.
func (d *daemon) kill() {
	d.cmd.Process.Kill()
	<-d.exited
}

// TestDurableQueuesSurviveSIGKILL stores inline and page messages in a
// durable queue, takes some, acknowledges some, holds one unsettled, and
// SIGKILLs the server: the next one started on the data directory has
// every message not taken, in order, the page intact, the unsettled one
// marked redelivered, and none of those taken.
func TestDurableQueuesSurviveSIGKILL(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	socket := filepath.Join(t.TempDir(), "machq.sock")
	d := startDaemon(t, socket, "--data-dir", dir)
	ctx := ctxT(t)
	c := dial(t, socket)
	for i := range 6 {
		if _, err := c.Send(ctx, "jobs", []byte(fmt.Sprint("job ", i))); err != nil {
			t.Fatal(err)
		}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB: a page
	f, err := os.CreateTemp(t.TempDir(), "big")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(big)
	f.Seek(0, 0)
	if _, _, err := c.SendFile(ctx, "jobs", f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// job 0 taken without ack, job 1 acknowledged, job 2 held unsettled.
	m, err := c.Retrieve(ctx, "jobs")
	if err != nil || string(m.Bytes()) != "job 0" {
		t.Fatalf("retrieve: %v", err)
	}
	m.Close()
	dv, err := c.Reserve(ctx, "jobs", nil)
	if err != nil || string(dv.Bytes()) != "job 1" {
		t.Fatalf("reserve: %v", err)
	}
	if err := dv.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	held, err := c.Reserve(ctx, "jobs", nil)
	if err != nil || string(held.Bytes()) != "job 2" {
		t.Fatalf("reserve: %v", err)
	}
	// A durable store after the delivery: once it is answered, the
	// delivery's record is on disk too.
	if _, err := c.Send(ctx, "other", []byte("x")); err != nil {
		t.Fatal(err)
	}
	d.kill()

	d = startDaemon(t, socket, "--data-dir", dir)
	if !strings.Contains(d.logs.String(), "durable queues recovered") {
		t.Errorf("no recovery report in the logs:\n%s", d.logs)
	}
	c = dial(t, socket)
	st, err := c.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Durable == nil || st.Durable.Dir != dir || st.Durable.Sync != "every-store" || st.Durable.Failed != "" {
		t.Errorf("STATS durable: %+v", st.Durable)
	}
	if q := queueStats(d, "jobs"); !q.Durable || q.Messages != 5 {
		t.Errorf("STATS of jobs after the restart: %+v; want durable, 5 messages", q)
	}
	again, err := c.Reserve(ctx, "jobs", nil)
	if err != nil || string(again.Bytes()) != "job 2" {
		t.Fatalf("after the restart the first message: %v", err)
	}
	if !again.Redelivered() || again.Deliveries() != 2 {
		t.Errorf("the message pending at the crash: redelivered %v, deliveries %d; want it marked, delivered twice", again.Redelivered(), again.Deliveries())
	}
	if err := again.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	for i, w := range []string{"job 3", "job 4", "job 5"} {
		m, err := c.Retrieve(ctx, "jobs")
		if err != nil {
			t.Fatalf("after the restart, message %d: %v", i, err)
		}
		if string(m.Bytes()) != w {
			t.Fatalf("after the restart, message %d is %q, want %q", i, m.Bytes(), w)
		}
		m.Close()
	}
	m, err = c.Retrieve(ctx, "jobs")
	if err != nil {
		t.Fatalf("the page after the restart: %v", err)
	}
	if !m.OutOfLine() || !bytes.Equal(m.Bytes(), big) {
		t.Fatalf("the page after the restart: out of line %v, %d bytes, equal %v", m.OutOfLine(), m.Len(), bytes.Equal(m.Bytes(), big))
	}
	m.Close()
	if _, err := c.Retrieve(ctx, "jobs"); !errors.Is(err, machq.ErrEmpty) {
		t.Fatalf("jobs after the last: %v, want empty", err)
	}
	// Everything taken: the payload files are gone.
	waitFor(t, "the payload files to be deleted", func() bool {
		ents, _ := os.ReadDir(filepath.Join(dir, "payloads"))
		return len(ents) == 0
	})
	// A second server on the same data directory refuses to start.
	other := filepath.Join(t.TempDir(), "other.sock")
	out, err := exec.Command(bin.machqd, "--socket", other, "--data-dir", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another server") {
		t.Fatalf("a second server on the data directory: %v\n%s", err, out)
	}
}
