package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/bench/floor"
	"github.com/machq/machq/internal/bench/redis"
	"github.com/machq/machq/internal/peerproc"
	"github.com/machq/machq/internal/wire"
)

// System names, in the order they are reported.
const (
	sysMachq       = "machq"
	sysMachqInline = "machq-inline"
	sysMachqMemfd  = "machq-memfd"
	sysMemfd       = "memfd"
	sysCopy        = "copy"
	sysRedis       = "redis"
	sysMqueue      = "mqueue"
)

// SystemNames lists the systems a run can measure:
//
//	machq         machq as shipped: inline up to 64 KiB, memfd above
//	machq-inline  machq with every payload inline (up to 1 MiB)
//	machq-memfd   machq with every non-empty payload in a memfd
//	memfd         bare floor: a sealed memfd passed with SCM_RIGHTS
//	copy          bare floor: the bytes copied through a stream socket
//	redis         Redis RPUSH + LPOP over a Unix socket
//	mqueue        POSIX message queues between two processes
func SystemNames() []string {
	return []string{sysMachq, sysMachqInline, sysMachqMemfd, sysMemfd, sysCopy, sysRedis, sysMqueue}
}

func knownSystem(name string) bool { return slices.Contains(SystemNames(), name) }

// target is one client connection to a system under test.
type target interface {
	// RoundTrip stores p, waits for the acknowledgement, retrieves it and
	// calls got with the bytes received, valid only during the call.
	RoundTrip(p []byte, got func([]byte)) error
	// Pipeline stores depth copies of p, then retrieves depth payloads,
	// with as few waits as the system allows.
	Pipeline(p []byte, depth int, got func([]byte)) error
	Close() error
}

// system is one system under test.
type system struct {
	name string
	// maxSize is the largest payload it can carry; limit says why.
	maxSize int
	limit   string
	// dial connects a client for payloads of size bytes.
	dial func(ctx context.Context, size int) (target, error)
}

const unlimited = int(^uint(0) >> 1)

// environment is the state of one run: the peers and the systems.
type environment struct {
	cfg    *Config
	dir    string
	report *Report
	peers  []*peerproc.Process

	machqPath string
	machqPID  int // 0 when measuring a server started elsewhere
	floors    map[floor.Mechanism]string
	redis     *redis.Server
	systems   []*system
}

func (e *environment) wanted(name string) bool {
	return len(e.cfg.Systems) == 0 || slices.Contains(e.cfg.Systems, name)
}

// start starts every peer the selected systems need.
func (e *environment) start(ctx context.Context) error {
	e.machqPath = e.cfg.Socket
	if e.machqPath == "" {
		e.machqPath = filepath.Join(e.dir, "machq.sock")
		p, err := e.startPeer(ctx, peerMachq, e.machqPath)
		if err != nil {
			return err
		}
		e.machqPID = p.PID()
	}
	// The server's own inline limit bounds machq-inline.
	maxInline := wire.MaxInline
	if c, err := e.dialMachq(ctx, machq.WithInlineThreshold(0)); err != nil {
		return err
	} else {
		maxInline = c.MaxInline()
		c.Close()
	}
	e.systems = append(e.systems,
		&system{name: sysMachq, maxSize: unlimited, dial: e.machqDialer(machq.DefaultInlineThreshold)},
		&system{name: sysMachqInline, maxSize: maxInline, limit: fmt.Sprintf("larger than the server's inline limit (%s)", fmtSize(maxInline)),
			dial: e.machqDialer(maxInline)},
		&system{name: sysMachqMemfd, maxSize: unlimited, dial: e.machqDialer(0)},
	)

	e.floors = map[floor.Mechanism]string{}
	for _, m := range []floor.Mechanism{floor.Memfd, floor.Copy} {
		name := sysMemfd
		if m == floor.Copy {
			name = sysCopy
		}
		if !e.wanted(name) && !(m == floor.Memfd && !e.cfg.SkipZeroCopy && e.wanted(sysMachq)) {
			continue
		}
		path := filepath.Join(e.dir, "floor-"+m.String()+".sock")
		if _, err := e.startPeer(ctx, peerFloor, m.String(), path); err != nil {
			return err
		}
		e.floors[m] = path
		e.systems = append(e.systems, &system{name: name, maxSize: unlimited, dial: func(context.Context, int) (target, error) {
			return floor.Dial(path, m)
		}})
	}

	if e.wanted(sysRedis) {
		dir := filepath.Join(e.dir, "redis")
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		srv, err := redis.Start(ctx, dir)
		switch {
		case errors.Is(err, redis.ErrNotInstalled):
			e.report.note("redis: skipped: %v", err)
		case err != nil:
			return err
		default:
			e.redis = srv
			e.report.note("redis: redis-server %s, persistence off, over a Unix socket", srv.Version())
			e.systems = append(e.systems, &system{name: sysRedis, maxSize: unlimited, dial: func(context.Context, int) (target, error) {
				return redis.Dial(srv.Path())
			}})
		}
	}

	if e.wanted(sysMqueue) {
		s, err := e.startMqueue(ctx)
		if err != nil {
			return err
		}
		if s != nil {
			e.systems = append(e.systems, s)
		}
	}
	e.systems = slices.DeleteFunc(e.systems, func(s *system) bool { return !e.wanted(s.name) })
	return nil
}

func (e *environment) close() {
	if e.redis != nil {
		e.redis.Close()
	}
	for _, p := range e.peers {
		p.Stop()
	}
}

func (e *environment) dialMachq(ctx context.Context, opts ...machq.Option) (*machq.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	opts = append([]machq.Option{machq.WithDigest(e.cfg.Digest)}, opts...)
	return machq.Dial(dctx, e.machqPath, opts...)
}

func (e *environment) machqDialer(inline int) func(context.Context, int) (target, error) {
	return func(ctx context.Context, _ int) (target, error) {
		dial := func() (*machq.Client, error) { return e.dialMachq(ctx, machq.WithInlineThreshold(inline)) }
		c, err := dial()
		if err != nil {
			return nil, err
		}
		return &machqTarget{ctx: ctx, c: c, dial: dial}, nil
	}
}

// machqTarget drives machq through its client library, in the private
// queue, as an application would.
type machqTarget struct {
	ctx   context.Context
	c     *machq.Client
	dial  func() (*machq.Client, error)
	batch [][]byte
}

// settle reconnects: Close waits for a spare page being allocated in the
// background and frees it, so that it neither slows the next system down
// nor carries over to the next round.
func (t *machqTarget) settle() error {
	t.c.Close()
	c, err := t.dial()
	if err != nil {
		return err
	}
	t.c = c
	return nil
}

func (t *machqTarget) RoundTrip(p []byte, got func([]byte)) error {
	if err := t.c.Send(t.ctx, "", p); err != nil {
		return err
	}
	return t.retrieve(got)
}

func (t *machqTarget) retrieve(got func([]byte)) error {
	m, err := t.c.Retrieve(t.ctx, "")
	if m != nil {
		defer m.Close()
	}
	if err != nil {
		return err
	}
	got(m.Bytes())
	return nil
}

// Pipeline stores depth copies of p with one SendBatch, then takes them
// back with one RetrieveBatch: each is one write and one wait.
func (t *machqTarget) Pipeline(p []byte, depth int, got func([]byte)) error {
	if cap(t.batch) < depth {
		t.batch = make([][]byte, depth)
	}
	batch := t.batch[:depth]
	for i := range batch {
		batch[i] = p
	}
	if err := t.c.SendBatch(t.ctx, "", batch); err != nil {
		return err
	}
	msgs, err := t.c.RetrieveBatch(t.ctx, "", depth)
	for _, m := range msgs {
		if err == nil {
			got(m.Bytes())
		}
		m.Close()
	}
	if err == nil && len(msgs) != depth {
		err = fmt.Errorf("retrieved %d of the %d messages stored", len(msgs), depth)
	}
	return err
}

func (t *machqTarget) Close() error { return t.c.Close() }
