package bench

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/machq/machq/internal/bench/floor"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/wire"
)

// phases times each step of an out-of-line round trip through machq's
// server, speaking the protocol directly so that each step can be timed
// alone, next to the same steps of the bare memfd mechanism.
func (e *environment) phases(ctx context.Context) error {
	memfdPath, haveFloor := e.floors[floor.Memfd]
	for _, size := range e.cfg.Sizes {
		if size == 0 {
			continue
		}
		want := payload(size)
		rc, err := dialRaw(e.machqPath)
		if err != nil {
			return err
		}
		var all [][]time.Duration
		var n int
		deadline := time.Now().Add(e.cfg.Time)
		for n < e.cfg.MinIters || (time.Now().Before(deadline) && n < 1000) {
			d, err := rc.roundTrip(size, want)
			if err != nil {
				rc.close()
				return fmt.Errorf("bench: phases at %s: %w", fmtSize(size), err)
			}
			all = append(all, d)
			n++
			if ctx.Err() != nil {
				rc.close()
				return ctx.Err()
			}
		}
		rc.close()
		med := medians(all)
		e.report.Phases = append(e.report.Phases, Phases{System: sysMachq, Size: size, N: n,
			Create: med[0], Fill: med[1], Seal: med[2], Send: med[3], Store: med[4], Retrieve: med[5],
			Map: med[6], Read: med[7], MapPopulate: med[8], ReadPopulated: med[9], Pread: med[10]})

		if !haveFloor {
			continue
		}
		fc, err := floor.Dial(memfdPath, floor.Memfd)
		if err != nil {
			return err
		}
		all, n = all[:0], 0
		deadline = time.Now().Add(e.cfg.Time)
		chk := newChecker(want)
		for n < e.cfg.MinIters || (time.Now().Before(deadline) && n < 1000) {
			p, err := fc.PageRoundTrip(size, func(b []byte) { copy(b, want) }, chk.got)
			if err == nil {
				err = chk.err
			}
			if err != nil {
				fc.Close()
				return fmt.Errorf("bench: memfd phases at %s: %w", fmtSize(size), err)
			}
			all = append(all, []time.Duration{p.Create, p.Fill, p.Seal, p.Send, p.Store, p.Retrieve, p.Map, p.Read})
			n++
		}
		fc.Close()
		med = medians(all)
		e.report.Phases = append(e.report.Phases, Phases{System: sysMemfd, Size: size, N: n,
			Create: med[0], Fill: med[1], Seal: med[2], Send: med[3], Store: med[4], Retrieve: med[5],
			Map: med[6], Read: med[7]})
		e.cfg.progress("%s: phases", fmtSize(size))
	}
	return nil
}

// medians returns the median of each column.
func medians(rows [][]time.Duration) []Duration {
	if len(rows) == 0 {
		return nil
	}
	out := make([]Duration, len(rows[0]))
	col := make([]time.Duration, len(rows))
	for j := range out {
		for i, r := range rows {
			col[i] = r[j]
		}
		m, _ := percentiles(col)
		out[j] = Duration(m)
	}
	return out
}

// rawConn is a machq connection spoken frame by frame.
type rawConn struct {
	uc   *net.UnixConn
	rd   *wire.Reader
	id   uint64
	wbuf []byte
	rbuf []byte
}

func dialRaw(path string) (*rawConn, error) {
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	c := &rawConn{uc: uc, rd: wire.NewReader(uc)}
	if _, err := uc.Write(wire.AppendHello(nil, 0, wire.Hello{MinVersion: wire.Version, MaxVersion: wire.Version})); err != nil {
		c.close()
		return nil, err
	}
	if _, err := c.expect(wire.OpWelcome); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (c *rawConn) close() {
	c.rd.Close()
	c.uc.Close()
}

// expect reads the next frame and checks its operation.
func (c *rawConn) expect(op wire.Op) (wire.Frame, error) {
	f, err := c.rd.ReadFrame()
	if err != nil {
		return f, err
	}
	if f.Op != op {
		wire.CloseFDs(f.FDs)
		if f.Op == wire.OpError {
			code, msg, _ := wire.ParseError(f.Body)
			return f, fmt.Errorf("server error %s: %s", code, msg)
		}
		return f, fmt.Errorf("got %s, want %s", f.Op, op)
	}
	return f, nil
}

// roundTrip stores and retrieves one page of size bytes holding want,
// returning the time of each phase in the order of the Phases fields.
func (c *rawConn) roundTrip(size int, want []byte) ([]time.Duration, error) {
	var d [11]time.Duration
	t := time.Now()
	lap := func(i int) {
		now := time.Now()
		d[i] = now.Sub(t)
		t = now
	}
	fd, err := page.Create("bench")
	if err != nil {
		return nil, err
	}
	defer func() {
		if fd >= 0 {
			syscall.Close(fd)
		}
	}()
	if err := page.Truncate(fd, int64(size)); err != nil {
		return nil, err
	}
	buf, err := page.MapWritable(fd, int64(size), true)
	if err != nil {
		return nil, err
	}
	lap(0)
	copy(buf, want)
	lap(1)
	if err := page.Unmap(buf); err != nil {
		return nil, err
	}
	if err := page.Seal(fd); err != nil {
		return nil, err
	}
	lap(2)
	c.id++
	c.wbuf = wire.AppendStore(c.wbuf[:0], c.id, wire.Store{Size: uint64(size)}, nil, true)
	err = wire.WriteFrames(c.uc, c.wbuf, []int{fd}, []int{0})
	syscall.Close(fd)
	fd = -1
	if err != nil {
		return nil, err
	}
	lap(3)
	if _, err := c.expect(wire.OpStored); err != nil {
		return nil, err
	}
	lap(4)
	c.id++
	c.wbuf = wire.AppendRetrieve(c.wbuf[:0], c.id, wire.Retrieve{})
	if err := wire.WriteFrames(c.uc, c.wbuf, nil, nil); err != nil {
		return nil, err
	}
	f, err := c.expect(wire.OpMessage)
	if err != nil {
		return nil, err
	}
	if len(f.FDs) != 1 {
		wire.CloseFDs(f.FDs)
		return nil, fmt.Errorf("MESSAGE carried %d descriptors, want 1", len(f.FDs))
	}
	fd = f.FDs[0]
	lap(5)
	m, err := page.MapReadOnly(fd, int64(size), false)
	if err != nil {
		return nil, err
	}
	lap(6)
	ok := bytes.Equal(m, want)
	lap(7)
	page.Unmap(m)
	if !ok {
		return nil, fmt.Errorf("received page differs from the one stored")
	}
	t = time.Now()
	m, err = page.MapReadOnly(fd, int64(size), true)
	if err != nil {
		return nil, err
	}
	lap(8)
	ok = bytes.Equal(m, want)
	lap(9)
	page.Unmap(m)
	if !ok {
		return nil, fmt.Errorf("received page differs from the one stored")
	}
	if cap(c.rbuf) < size {
		c.rbuf = make([]byte, size)
	}
	t = time.Now()
	if _, err := page.ReadAt(fd, c.rbuf[:size], 0); err != nil {
		return nil, err
	}
	lap(10)
	return d[:], nil
}
