package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/procfs"
)

// largeMessageSize is the payload of the memory test's large messages.
const largeMessageSize = 16 << 20

// memory measures a fresh server's resident memory and open descriptors
// with many small and with many large messages stored.
func (e *environment) memory(ctx context.Context) error {
	small, err := e.memoryRun(ctx, "memory-small", e.cfg.SmallMessages, 64)
	if err != nil {
		return err
	}
	large, err := e.memoryRun(ctx, "memory-large", e.cfg.LargeMessages, largeMessageSize)
	if err != nil {
		return err
	}
	e.report.Memory = append(e.report.Memory, *small, *large)
	e.report.note("memory: the %d messages of %s share one sealed memfd, sent again and again without a copy, so the test needs %s of RAM instead of %s; the server holds, counts and frees each one's descriptor alone, as it would distinct pages",
		e.cfg.LargeMessages, fmtSize(largeMessageSize), fmtSize(largeMessageSize), fmtSize(e.cfg.LargeMessages*largeMessageSize))
	return nil
}

// memoryRun starts a fresh server, stores n messages of size bytes in
// one client's private queue and reads the server's footprint.
func (e *environment) memoryRun(ctx context.Context, name string, n, size int) (*Memory, error) {
	path := filepath.Join(e.dir, name+".sock")
	p, err := e.startPeer(ctx, peerMachq, path)
	if err != nil {
		return nil, err
	}
	defer p.Stop()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := machq.Dial(dctx, path, machq.WithDigest(machq.DigestNone))
	cancel()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// Warm the server up so that the baseline includes its steady state.
	for range 100 {
		if _, err := c.Send(ctx, "", make([]byte, min(size, 64))); err != nil {
			return nil, err
		}
		if m, err := c.Retrieve(ctx, ""); err != nil {
			return nil, err
		} else {
			m.Close()
		}
	}
	baseRSS, baseFDs, err := procfs.Status(p.PID())
	if err != nil {
		return nil, err
	}

	var store func() error
	if size > machq.DefaultInlineThreshold {
		f, err := sealedPage(size)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		store = func() error {
			_, _, err := c.SendFile(ctx, "", f)
			return err
		}
	} else {
		data := payload(size)
		store = func() error { _, err := c.Send(ctx, "", data); return err }
	}

	start := time.Now()
	const workers = 32
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		share := n / workers
		if w < n%workers {
			share++
		}
		wg.Go(func() {
			for range share {
				if err := store(); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("bench: memory test storing %d × %s: %w", n, fmtSize(size), err)
		}
	}
	elapsed := time.Since(start)
	st, err := c.Stat(ctx)
	if err != nil {
		return nil, err
	}
	if st.Messages != int64(n) {
		return nil, fmt.Errorf("bench: memory test stored %d messages, the server holds %d", n, st.Messages)
	}
	rss, fds, err := procfs.Status(p.PID())
	if err != nil {
		return nil, err
	}
	m := &Memory{Messages: n, Size: size, PayloadBytes: int64(n) * int64(size), BaselineRSS: baseRSS, RSS: rss,
		BaselineFDs: baseFDs, FDs: fds, StoreTime: Duration(elapsed)}
	held := int64(0)
	if size <= machq.DefaultInlineThreshold {
		held = m.PayloadBytes // inline payloads live in the server's memory
	}
	m.PerMessage = float64(rss-baseRSS-held) / float64(n)
	e.cfg.progress("memory: %d × %s stored", n, fmtSize(size))
	return m, nil
}

// sealedPage returns a sealed memfd of size bytes, filled with a pattern.
func sealedPage(size int) (*os.File, error) {
	fd, err := page.Create("bench-large")
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "bench-large")
	if err := page.Write(fd, payload(size)); err != nil {
		f.Close()
		return nil, err
	}
	if err := page.Seal(fd); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
