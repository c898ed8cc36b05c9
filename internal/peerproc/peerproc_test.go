package peerproc_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/machq/machq/internal/peerproc"
)

// TestStartAndStop runs a shell that says ready and waits for end of
// stdin, and one that fails before: Start waits for the first and reports
// the second's stderr; Stop ends the first through its stdin.
func TestStartAndStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := peerproc.Start(ctx, "reader", exec.Command("sh", "-c", "echo ready; cat >/dev/null"))
	if err != nil {
		t.Fatal(err)
	}
	if p.PID() <= 0 {
		t.Fatalf("pid %d", p.PID())
	}
	p.Stop()
	p.Stop() // twice is fine

	_, err = peerproc.Start(ctx, "failer", exec.Command("sh", "-c", "echo no socket for you >&2; exit 3"))
	if err == nil || !strings.Contains(err.Error(), "no socket for you") || !strings.Contains(err.Error(), "failer") {
		t.Fatalf("failing process: %v; want its name and its stderr", err)
	}
}
