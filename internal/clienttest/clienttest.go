// Package clienttest holds checks that tests of several packages make
// through the client library.
package clienttest

import (
	"context"
	"testing"

	"github.com/machq/machq"
)

// ExpectMessage retrieves the oldest message of queue with c and fails t,
// saying what was being checked, unless it holds want.
func ExpectMessage(t testing.TB, ctx context.Context, c *machq.Client, queue, want, what string) {
	t.Helper()
	m, err := c.Retrieve(ctx, queue)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	defer m.Close()
	if got := string(m.Bytes()); got != want {
		t.Fatalf("%s: got %q, want %q", what, got, want)
	}
}
