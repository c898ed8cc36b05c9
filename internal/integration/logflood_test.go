package integration_test

import (
	"net"
	"strings"
	"testing"

	"github.com/machq/machq"
)

// TestIntegrationLogFloodIsBounded: 500 connections refused in a burst
// (past --max-connections) log at most --log-rate warnings of that
// message a second, then one record saying how many were left out.
func TestIntegrationLogFloodIsBounded(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn", "--max-connections", "1", "--log-rate", "20")
	// Hold the one connection allowed (once the readiness probe's is
	// gone).
	var hold *machq.Client
	waitFor(t, "the one connection allowed", func() bool {
		c, err := machq.Dial(ctxT(t), d.socket)
		hold = c
		return err == nil
	})
	defer hold.Close()
	for range 500 {
		c, err := net.Dial("unix", d.socket)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 512)
		c.Read(buf) // the refusal
		c.Close()
	}
	// One more after the burst's second: the summary comes with it.
	waitFor(t, "the summary of what was left out", func() bool {
		c, err := net.Dial("unix", d.socket)
		if err == nil {
			buf := make([]byte, 512)
			c.Read(buf)
			c.Close()
		}
		return strings.Contains(d.logs.String(), "left_out=")
	})
	refused := strings.Count(d.logs.String(), `msg="connection refused"`)
	if refused >= 500 || refused < 20 {
		t.Fatalf("%d refusals logged for 500+ refused connections with --log-rate 20", refused)
	}
}
