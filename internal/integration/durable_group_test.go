package integration_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/machq/machq"
)

// TestDurableGroupsSurviveSIGKILL: the consumer groups of a durable
// queue, created with the CLI, come back after machqd is SIGKILLed with
// what each group had not acknowledged, a delivery pending at the kill
// redelivered, and the page fanned out to both groups intact.
func TestDurableGroupsSurviveSIGKILL(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	socket := filepath.Join(t.TempDir(), "machq.sock")
	d := startDaemon(t, socket, "--data-dir", dir)
	ctx := ctxT(t)
	for _, g := range []string{"billing", "audit"} {
		if r := runCLI(t, nil, "group", "create", "--socket", socket, "--queue", "orders", "--group", g); r.code != 0 {
			t.Fatalf("machq group create %s: exit %d: %s", g, r.code, r.stderr)
		}
	}
	c := dial(t, socket)
	for i := range 3 {
		if _, err := c.Send(ctx, "orders", []byte(fmt.Sprint("order ", i))); err != nil {
			t.Fatal(err)
		}
	}
	big := bytes.Repeat([]byte("fan-out "), 128<<10) // 1 MiB: a page
	if _, err := c.Send(ctx, "orders", big); err != nil {
		t.Fatal(err)
	}
	take := func(group string) *machq.Delivery {
		t.Helper()
		dv, err := c.Reserve(ctx, "orders", &machq.AckOptions{Group: group})
		if err != nil {
			t.Fatalf("reserve from %s: %v", group, err)
		}
		return dv
	}
	// billing acknowledges order 0 and holds order 1; audit acknowledges
	// everything but the page.
	dv := take("billing")
	if err := dv.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	held := take("billing")
	if string(held.Bytes()) != "order 1" {
		t.Fatalf("billing's second message: %q", held.Bytes())
	}
	for range 3 {
		dv := take("audit")
		if err := dv.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A durable answer after the delivery: its record is on disk too.
	if _, err := c.Send(ctx, "other", []byte("x")); err != nil {
		t.Fatal(err)
	}
	d.kill()

	startDaemon(t, socket, "--data-dir", dir)
	c = dial(t, socket)
	dv = take("billing")
	if string(dv.Bytes()) != "order 1" || !dv.Redelivered() {
		t.Fatalf("billing after the kill: %q, redelivered %v; want order 1, redelivered", dv.Bytes(), dv.Redelivered())
	}
	if err := dv.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"order 2", "page"} {
		dv := take("billing")
		if want == "page" && !bytes.Equal(dv.Bytes(), big) || want != "page" && string(dv.Bytes()) != want {
			t.Fatalf("billing after the kill: %d bytes, want %s", len(dv.Bytes()), want)
		}
		if err := dv.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	dv = take("audit")
	if !bytes.Equal(dv.Bytes(), big) {
		t.Fatalf("audit after the kill: %d bytes, want the page", len(dv.Bytes()))
	}
	if err := dv.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"billing", "audit"} {
		if _, err := c.Reserve(ctx, "orders", &machq.AckOptions{Group: g}); err == nil {
			t.Fatalf("group %s holds more than it was sent", g)
		}
	}
}
