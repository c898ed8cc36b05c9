package bench

import (
	"context"
	"errors"
)

// mqPeer is the POSIX message queue peer process.
type mqPeer struct{}

func (e *environment) startMqueue(ctx context.Context) (*system, error) {
	e.report.note("mqueue: not measured yet")
	return nil, nil
}

func serveMqueue(ctx context.Context, args []string, ready func()) error {
	return errors.New("bench peer: mqueue not available")
}
