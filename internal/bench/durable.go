package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/bench/redis"
)

// The durable runs (docs/PERFORMANCE.md, "Durable stores") compare
// machq's durable named queues with what a user would otherwise pick:
//
//   - small stores per second, one at a time from each of several
//     producers, against Redis with its append-only file synced always;
//   - one large page stored durably against the bare mechanism: a kernel
//     copy of the sealed memfd into a new file of the same file system,
//     fdatasync and a sync of the directory;
//   - how long a machqd takes to recover a million stored messages.
//
// Everything the runs write goes to a temporary directory of
// Config.DurableDir, removed at the end.

// durableSize is the payload of the durable store runs and of the
// recovery run.
const durableSize = 64

// Labels of the durable runs' rows (not systems of --systems: the durable
// runs follow machq and redis).
const (
	sysRedisAOF = "redis-aof"
	sysFileSync = "file+sync"
)

// Recovery build: the stores of the recovery run go into this many
// queues, from this many clients each sending batches of this many.
const (
	recoveryQueues  = 8
	recoveryClients = 16
	recoveryBatch   = 256
)

// recoveredMsg is the message of the log record a machqd writes once it
// has recovered its durable queues.
const recoveredMsg = "durable queues recovered"

// durable runs the durable stores, the large durable store and the
// recovery run.
func (e *environment) durable(ctx context.Context) error {
	if !e.wanted(sysMachq) {
		e.report.note("durable: skipped: --systems leaves out machq")
		return nil
	}
	base, err := os.MkdirTemp(e.cfg.DurableDir, "machq-bench-durable-")
	if err != nil {
		return fmt.Errorf("bench: durable runs: --durable-dir %s: %w (give a writable directory on the disk to measure, or --skip durable)", e.cfg.DurableDir, err)
	}
	defer os.RemoveAll(base)
	d := &Durable{Dir: e.cfg.DurableDir, FileSystem: fileSystem(base), Size: durableSize}
	e.report.Durable = d
	if d.FileSystem == "tmpfs" || d.FileSystem == "ramfs" {
		e.report.note("durable: %s is on %s, where a sync costs nothing: give --durable-dir a directory on the disk to measure", e.cfg.DurableDir, d.FileSystem)
	}

	// One machqd with a data directory for the stores and the large
	// store, and one redis-server with its append-only file beside it.
	dataDir := filepath.Join(base, "machq")
	sock := filepath.Join(e.dir, "durable.sock")
	p, err := e.startPeer(ctx, peerMachqDurable, sock, dataDir, filepath.Join(base, "machqd.log"))
	if err != nil {
		return err
	}
	defer p.Stop()
	var rsrv *redis.Server
	if e.wanted(sysRedis) {
		rdir := filepath.Join(e.dir, "redis-aof")
		rdata := filepath.Join(base, "redis")
		for _, dir := range []string{rdir, rdata} {
			if err := os.Mkdir(dir, 0o700); err != nil {
				return fmt.Errorf("bench: %w", err)
			}
		}
		srv, err := redis.StartWith(ctx, rdir, redis.Options{AppendFsyncAlways: true, DataDir: rdata})
		switch {
		case errors.Is(err, redis.ErrNotInstalled):
			e.report.note("durable: redis-aof: skipped: %v", err)
		case err != nil:
			return err
		default:
			rsrv = srv
			defer srv.Close()
			e.report.note("durable: redis-aof: redis-server %s with appendonly yes, appendfsync always (one fdatasync per pass of its event loop, before it answers the commands of that pass), append-only file beside machq's data directory", srv.Version())
		}
	}
	if err := e.durableStores(ctx, sock, rsrv); err != nil {
		return err
	}
	if err := e.durableLarge(ctx, sock, dataDir, base); err != nil {
		return err
	}
	// The recovery run has the machine to itself.
	p.Stop()
	if rsrv != nil {
		if err := rsrv.Close(); err != nil {
			return err
		}
	}
	return e.recovery(ctx, base)
}

// storer is one producer's connection for the durable store runs.
type storer interface {
	// Store stores p and returns once the system says it is durable.
	Store(p []byte) error
	// Close removes what the producer stored and disconnects.
	Close() error
}

// machqStorer stores into a durable named queue of its own.
type machqStorer struct {
	ctx   context.Context
	c     *machq.Client
	queue string
}

func (s *machqStorer) Store(p []byte) error {
	_, err := s.c.Send(s.ctx, s.queue, p)
	return err
}

func (s *machqStorer) Close() error {
	_, err := s.c.Delete(s.ctx, s.queue)
	if cerr := s.c.Close(); err == nil {
		err = cerr
	}
	return err
}

// redisStorer pushes onto a list of its own (which Close deletes).
type redisStorer struct{ c *redis.Client }

func (s redisStorer) Store(p []byte) error { return s.c.Push(p) }
func (s redisStorer) Close() error         { return s.c.Close() }

// storeCount names the durable queues of the store runs apart.
var storeCount atomic.Uint64

// dialDurable connects to the durable machqd at sock, with no digest:
// Redis and the floor have none.
func dialDurable(ctx context.Context, sock string) (*machq.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return machq.Dial(dctx, sock, machq.WithDigest(machq.DigestNone))
}

// durableStores measures durable 64-byte stores per second with each
// producer count, machq and Redis taking turns in rounds.
func (e *environment) durableStores(ctx context.Context, sock string, rsrv *redis.Server) error {
	type sys struct {
		name string
		dial func() (storer, error)
	}
	systems := []sys{{sysMachq, func() (storer, error) {
		c, err := dialDurable(ctx, sock)
		if err != nil {
			return nil, err
		}
		return &machqStorer{ctx: ctx, c: c, queue: fmt.Sprintf("bench-durable-%d", storeCount.Add(1))}, nil
	}}}
	if rsrv != nil {
		systems = append(systems, sys{sysRedisAOF, func() (storer, error) {
			c, err := redis.Dial(rsrv.Path())
			if err != nil {
				return nil, err
			}
			return redisStorer{c}, nil
		}})
	}
	p := payload(durableSize)
	per := e.cfg.DurableTime / time.Duration(e.cfg.Rounds)
	for _, producers := range e.cfg.DurableProducers {
		counts := make([]int64, len(systems))
		elapsed := make([]time.Duration, len(systems))
		skipped := make([]string, len(systems))
		for round := range e.cfg.Rounds {
			for i := range systems {
				k := (i + round) % len(systems)
				if skipped[k] != "" {
					continue
				}
				n, d, err := storeLoad(ctx, systems[k].dial, producers, p, per)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					if systems[k].name == sysMachq {
						return fmt.Errorf("bench: durable stores of machq with %d producers: %w", producers, err)
					}
					skipped[k] = err.Error()
					continue
				}
				counts[k] += n
				elapsed[k] += d
			}
		}
		rows := make([]DurableStores, len(systems))
		for k, s := range systems {
			rows[k] = DurableStores{System: s.name, Size: durableSize, Producers: producers, Skipped: skipped[k]}
			if skipped[k] == "" && elapsed[k] > 0 {
				rows[k].Stores = counts[k]
				rows[k].PerSecond = float64(counts[k]) / elapsed[k].Seconds()
			}
		}
		for k := range rows {
			if rows[k].PerSecond > 0 {
				rows[k].Ratio = rows[0].PerSecond / rows[k].PerSecond
			}
		}
		e.report.Durable.Stores = append(e.report.Durable.Stores, rows...)
		e.cfg.progress("durable stores: %d producers", producers)
	}
	return nil
}

// storeLoad runs producers connections, each storing p one at a time for
// about d, and returns the stores completed and the time they took.
// Connecting and cleaning up are not timed.
func storeLoad(ctx context.Context, dial func() (storer, error), producers int, p []byte, d time.Duration) (int64, time.Duration, error) {
	ss := make([]storer, 0, producers)
	closeAll := func() error {
		var errs []error
		for _, s := range ss {
			errs = append(errs, s.Close())
		}
		return errors.Join(errs...)
	}
	for range producers {
		s, err := dial()
		if err != nil {
			closeAll()
			return 0, 0, err
		}
		ss = append(ss, s)
	}
	var done atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make([]error, producers)
	start := time.Now()
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	for i, s := range ss {
		wg.Go(func() {
			for !stop.Load() && ctx.Err() == nil {
				if err := s.Store(p); err != nil {
					errs[i] = err
					stop.Store(true)
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	timer.Stop()
	err := errors.Join(errs...)
	if cerr := closeAll(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, 0, err
	}
	return done.Load(), elapsed, nil
}

// durableLarge stores one large sealed page durably, again and again,
// through machq and through the bare mechanism, taking turns, and
// compares the medians.
func (e *environment) durableLarge(ctx context.Context, sock, dataDir, base string) error {
	size := e.cfg.DurableLargeSize
	f, err := sealedPage(size)
	if err != nil {
		return err
	}
	defer f.Close()
	c, err := dialDurable(ctx, sock)
	if err != nil {
		return err
	}
	defer c.Close()
	const queue = "bench-durable-large"
	payloads := filepath.Join(dataDir, "payloads")
	floorDir := filepath.Join(base, "floor")
	if err := os.Mkdir(floorDir, 0o700); err != nil {
		return fmt.Errorf("bench: %w", err)
	}

	machqStore := func() (time.Duration, error) {
		start := time.Now()
		if _, _, err := c.SendFile(ctx, queue, f); err != nil {
			return 0, err
		}
		d := time.Since(start)
		// Untimed: take it away, and wait for its payload file to go,
		// so that the next store starts on a clean slate.
		if _, err := c.Purge(ctx, queue); err != nil {
			return 0, err
		}
		return d, waitEmptyDir(ctx, payloads)
	}
	var floorN int
	floorStore := func() (time.Duration, error) {
		floorN++
		path := filepath.Join(floorDir, fmt.Sprintf("%d.page", floorN))
		start := time.Now()
		if err := fileSync(path, int(f.Fd()), int64(size)); err != nil {
			return 0, err
		}
		d := time.Since(start)
		return d, os.Remove(path)
	}

	runs := []struct {
		name  string
		store func() (time.Duration, error)
		d     []time.Duration
	}{{name: sysMachq, store: machqStore}, {name: sysFileSync, store: floorStore}}
	for round := range e.cfg.Rounds {
		for i := range runs {
			r := &runs[(i+round)%len(runs)]
			for range (e.cfg.DurableLargeIters + e.cfg.Rounds - 1) / e.cfg.Rounds {
				d, err := r.store()
				if err != nil {
					return fmt.Errorf("bench: durable store of %s by %s: %w", fmtSize(size), r.name, err)
				}
				r.d = append(r.d, d)
				if ctx.Err() != nil {
					return ctx.Err()
				}
			}
		}
	}
	rows := make([]DurableLarge, len(runs))
	for i, r := range runs {
		med, p99 := percentiles(r.d)
		rows[i] = DurableLarge{System: r.name, Size: size, N: len(r.d), Median: Duration(med), P99: Duration(p99),
			MBps: float64(size) / med.Seconds() / 1e6}
	}
	for i := range rows {
		rows[i].RatioFloor = float64(rows[i].Median) / float64(rows[1].Median)
	}
	e.report.Durable.Large = rows
	e.cfg.progress("durable store of %s", fmtSize(size))
	return nil
}

// fileSync is the floor of a durable page store: the sealed page src
// copied by the kernel into the new file path (copy_file_range, or
// sendfile where the two are on different file systems, as they are for
// a memfd and a disk), the file's data synced and its name made durable
// by syncing its directory.
func fileSync(path string, src int, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	dst := int(f.Fd())
	var off int64
	sendfile := false
	for off < size {
		var n int
		if sendfile {
			n, err = unix.Sendfile(dst, src, &off, int(min(size-off, 1<<30)))
		} else {
			n, err = unix.CopyFileRange(src, &off, dst, nil, int(min(size-off, 1<<30)), 0)
		}
		switch {
		case err == unix.EINTR || err == unix.EAGAIN:
			continue
		case err != nil && !sendfile && off == 0 && (err == unix.EXDEV || err == unix.EINVAL || err == unix.EOPNOTSUPP || err == unix.ENOSYS):
			sendfile = true
			continue
		case err != nil:
			return err
		case n == 0:
			return fmt.Errorf("the page ended at %d of %d bytes", off, size)
		}
	}
	if err := unix.Fdatasync(dst); err != nil {
		return os.NewSyscallError("fdatasync", err)
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}

// waitEmptyDir waits until dir holds no file, for at most 10 s.
func waitEmptyDir(ctx context.Context, dir string) error {
	deadline := time.Now().Add(10 * time.Second)
	backoff := 50 * time.Microsecond
	for {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		if len(ents) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d files still in %s 10 s after the purge", len(ents), dir)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Millisecond)
	}
}

// recovery stores Config.RecoveryMessages small messages through a
// machqd with a data directory, stops it, and times a new machqd on the
// same directory until it serves them.
func (e *environment) recovery(ctx context.Context, base string) error {
	n := e.cfg.RecoveryMessages
	dataDir := filepath.Join(base, "recovery")
	sock := filepath.Join(e.dir, "recovery.sock")
	p, err := e.startPeer(ctx, peerMachqDurable, sock, dataDir, filepath.Join(base, "recovery-build.log"))
	if err != nil {
		return err
	}
	defer p.Stop()
	rec := &Recovery{Messages: n, Size: durableSize,
		Built: fmt.Sprintf("stored through machqd into up to %d durable queues by %d clients, each sending batches of %d (SendBatch) and waiting for them to be on disk",
			recoveryQueues, recoveryClients, recoveryBatch)}
	start := time.Now()
	if err := storeMany(ctx, sock, n); err != nil {
		return fmt.Errorf("bench: recovery run, storing %d messages: %w", n, err)
	}
	rec.StoreTime = Duration(time.Since(start))
	p.Stop()
	e.cfg.progress("recovery: %d messages stored in %s", n, rec.StoreTime)

	logPath := filepath.Join(base, "recovery.log")
	start = time.Now()
	p2, err := e.startPeer(ctx, peerMachqDurable, sock, dataDir, logPath)
	if err != nil {
		return err
	}
	defer p2.Stop()
	c, err := dialDurable(ctx, sock)
	if err != nil {
		return err
	}
	st, err := c.Stat(ctx)
	c.Close()
	if err != nil {
		return err
	}
	rec.Serving = Duration(time.Since(start))
	rec.Served = st.Messages
	if err := readRecoveryLog(logPath, rec); err != nil {
		return err
	}
	if rec.Recovered != n || rec.Served != int64(n) {
		return fmt.Errorf("bench: recovery run: %d messages stored, %d recovered, %d served", n, rec.Recovered, rec.Served)
	}
	e.report.Durable.Recovery = rec
	e.cfg.progress("recovery: %d messages recovered in %s, served after %s", rec.Recovered, rec.Took, rec.Serving)
	return nil
}

// storeMany stores n small messages into the durable queues of the
// machqd at sock, quickly: clients pipeline batches, so that many stores
// share each sync.
func storeMany(ctx context.Context, sock string, n int) error {
	p := payload(durableSize)
	batch := make([][]byte, recoveryBatch)
	for i := range batch {
		batch[i] = p
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, recoveryClients)
	for w := range recoveryClients {
		wg.Go(func() {
			c, err := dialDurable(ctx, sock)
			if err != nil {
				errs[w] = err
				return
			}
			defer c.Close()
			queue := fmt.Sprintf("bench-recovery-%d", w%recoveryQueues)
			for {
				end := next.Add(recoveryBatch)
				from := end - recoveryBatch
				if from >= int64(n) {
					return
				}
				if err := c.SendBatch(ctx, queue, batch[:min(end, int64(n))-from]); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// readRecoveryLog reads the figures of the recovery report from a
// machqd's log, JSON records one a line.
func readRecoveryLog(path string, rec *Recovery) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("bench: recovery log: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r struct {
			Msg      string `json:"msg"`
			Queues   int    `json:"queues"`
			Messages int    `json:"messages"`
			Segments int    `json:"segments"`
			Records  int    `json:"records"`
			Took     int64  `json:"took"`
		}
		if json.Unmarshal(sc.Bytes(), &r) != nil || r.Msg != recoveredMsg {
			continue
		}
		rec.Recovered, rec.Queues, rec.Took, rec.Segments, rec.Records = r.Messages, r.Queues, Duration(r.Took), r.Segments, r.Records
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("bench: recovery log: %w", err)
	}
	return fmt.Errorf("bench: recovery log %s has no %q record", filepath.Base(path), recoveredMsg)
}

// fileSystem names the file system dir is on.
func fileSystem(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown"
	}
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.RAMFS_MAGIC:
		return "ramfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.F2FS_SUPER_MAGIC:
		return "f2fs"
	}
	return fmt.Sprintf("0x%x", uint32(st.Type))
}
