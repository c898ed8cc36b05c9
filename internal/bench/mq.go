package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/machq/machq/internal/bench/mqueue"
)

// startMqueue starts the POSIX message queue peer and returns the system
// that drives it, or nil when the kernel offers no message queues.
func (e *environment) startMqueue(ctx context.Context) (*system, error) {
	maxSize, why := mqueue.MaxSize()
	if maxSize < 0 {
		e.report.note("mqueue: skipped: %s", why)
		return nil, nil
	}
	path := filepath.Join(e.dir, "mqueue.sock")
	if _, err := e.startPeer(ctx, peerMq, path); err != nil {
		return nil, err
	}
	e.report.note("mqueue: payloads up to %s: %s", fmtSize(maxSize), why)
	return &system{
		name:    sysMqueue,
		maxSize: maxSize,
		limit:   fmt.Sprintf("above the kernel's message size limit (%s)", fmtSize(maxSize)),
		dial: func(_ context.Context, size int) (target, error) {
			return mqueue.Dial(path, size)
		},
	}, nil
}

func serveMqueue(ctx context.Context, args []string, ready func()) error {
	if len(args) != 1 {
		return errors.New("bench peer: usage: mqueue SOCKET")
	}
	// The peer's own limits must allow what the client's do.
	mqueue.MaxSize()
	ln, err := mqueue.Listen(args[0])
	if err != nil {
		return err
	}
	ready()
	if err := mqueue.Serve(ctx, ln); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
