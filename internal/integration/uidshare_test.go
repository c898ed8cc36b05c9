package integration_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/clienttest"
)

// TestIntegrationDescriptorShareOfAUser: when other users are admitted,
// one user's connections take at most its share of the server's
// descriptors (machqd --max-descriptors-per-uid, half by default), so
// under a low descriptor limit that user cannot lock the others out.
func TestIntegrationDescriptorShareOfAUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as other users")
	}
	const victim, mallory = 65534, 65533
	socket := filepath.Join(sharedDir(t, 0o755), "machq.sock")
	startDaemonNoFile(t, 256, socket, "--allow-uid", fmt.Sprint(victim), "--allow-uid", fmt.Sprint(mallory))
	ctx := ctxT(t)

	// 256 descriptors less the 64 kept back, 3 per connection: mallory
	// gets half, 32 connections.
	var held []*machq.Client
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	refused := false
	for range 100 {
		c, err := dialUserErr(socket, mallory)
		if err != nil {
			if !errors.Is(err, machq.ErrLimit) || !strings.Contains(err.Error(), "max-descriptors-per-uid") {
				t.Fatalf("mallory's connection %d: %v; want a LIMIT naming --max-descriptors-per-uid", len(held)+1, err)
			}
			refused = true
			break
		}
		held = append(held, c)
	}
	if !refused || len(held) != 32 {
		t.Fatalf("mallory holds %d connections (refused: %v), want 32 of the 64 the descriptors allow", len(held), refused)
	}
	// The other user still connects, as often as its own share allows,
	// and is served.
	for i := range 10 {
		v := dialUser(t, socket, victim)
		if _, err := v.Send(ctx, "victim", []byte("still served")); err != nil {
			t.Fatalf("victim's connection %d: %v", i+1, err)
		}
		clienttest.ExpectMessage(t, ctx, v, "victim", "still served", "victim after mallory's flood")
	}
}
