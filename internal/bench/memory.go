package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/procfs"
	"github.com/machq/machq/server"
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
	e.report.note("memory: the %d messages of %s share one sealed memfd, sent again and again without a copy, so the test needs %s of RAM instead of %s; the server holds, counts and frees each one's descriptor alone, as it would distinct pages, and its limits are sized to what the test stores rather than to the machine's memory",
		e.cfg.LargeMessages, fmtSize(largeMessageSize), fmtSize(largeMessageSize), fmtSize(e.cfg.LargeMessages*largeMessageSize))
	return nil
}

// memoryHeadroom is how many messages beyond the test's own the memory
// server's limits leave room for: the warm-up's, each retrieved before
// the next is sent, and no more than a few at once.
const memoryHeadroom = 16

// memoryLimits returns the limits, as machqd peer flags, of a server
// that is to hold n messages of size bytes in one private queue: room for
// them and memoryHeadroom more, whatever the machine. The server's
// defaults would not do: its byte limit is half of the machine's memory,
// which the declared sizes of the large messages pass on most machines
// (they share one memfd, so the test needs their memory once, but the
// server counts each message's size), and its message limits are below
// what --small-messages may ask for.
func memoryLimits(n, size int) []string {
	held := int64(n) + memoryHeadroom
	bytes := max(held*int64(size), 1) // 0 would mean the default
	args := []string{
		"--max-stored-messages", strconv.FormatInt(held, 10),
		"--max-private-messages", strconv.FormatInt(held, 10),
		"--max-stored-bytes", strconv.FormatInt(bytes, 10),
		"--max-private-bytes", strconv.FormatInt(bytes, 10),
	}
	if size > machq.DefaultInlineThreshold {
		args = append(args, "--max-stored-pages", strconv.FormatInt(held, 10))
	}
	return args
}

// checkDescriptors fails if a server holding pages out-of-line messages
// would run out of descriptors: each holds one open, which no setting of
// the benchmark's can lift above the descriptor limit (the hard
// RLIMIT_NOFILE, which a Go program raises its own to).
func checkDescriptors(pages int) error {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Max == unix.RLIM_INFINITY {
		return nil
	}
	// The server's descriptor budget keeps server.DescriptorReserve back,
	// and the test's connection and the server's listener take some.
	need := uint64(pages) + memoryHeadroom + server.DescriptorReserve + 16
	if need > rl.Max {
		return fmt.Errorf("bench: the memory test's %d large messages each hold a descriptor in the server, which needs about %d; the descriptor limit is %d (ulimit -Hn): give --large-messages %d or fewer, or raise the limit",
			pages, need, rl.Max, int64(rl.Max)-int64(need-uint64(pages)))
	}
	return nil
}

// memoryRun starts a fresh server whose limits fit the test, stores n
// messages of size bytes in one client's private queue and reads the
// server's footprint.
func (e *environment) memoryRun(ctx context.Context, name string, n, size int) (*Memory, error) {
	if size > machq.DefaultInlineThreshold {
		if err := checkDescriptors(n); err != nil {
			return nil, err
		}
	}
	path := filepath.Join(e.dir, name+".sock")
	p, err := e.startPeer(ctx, append([]string{peerMachq, path}, memoryLimits(n, size)...)...)
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
