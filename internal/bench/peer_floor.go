package bench

import (
	"context"
	"errors"

	"github.com/machq/machq/internal/bench/floor"
)

func serveFloor(ctx context.Context, mech floor.Mechanism, path string, ready func()) error {
	ln, err := floor.Listen(path)
	if err != nil {
		return err
	}
	ready()
	if err := floor.Serve(ctx, ln, mech); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
