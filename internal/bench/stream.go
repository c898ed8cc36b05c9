package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/peerproc"
)

// The streaming variants: how the producer hands each frame to machq.
const (
	// StreamPage fills a page and sends it without a copy:
	// machq.NewPage, every byte written into Bytes, Client.SendPage.
	StreamPage = "page"
	// StreamSend fills one reused []byte, with the same code, and sends
	// it with Client.Send, which copies it into a memfd.
	StreamSend = "send"
)

// streamVariants are the variants in the order of the report.
var streamVariants = []string{StreamPage, StreamSend}

// streamAPI says what each variant calls.
var streamAPI = map[string]string{
	StreamPage: "NewPage + fill Bytes() + SendPage",
	StreamSend: "fill a reused []byte + Send",
}

const (
	// DefaultStreamSize is the default frame size of the streaming run.
	DefaultStreamSize = 8 << 20
	// DefaultStreamFrames is the default number of frames of each
	// streaming run: one to two seconds of frames of DefaultStreamSize on
	// a 2-CPU virtual machine.
	DefaultStreamFrames = 200
	// StreamTarget is what page's frame rate should be at least, as a
	// multiple of send's.
	StreamTarget = 1.3
	// streamQueueDepth bounds the frames waiting in the stream's queue:
	// the server that carries the stream has it as its queue message
	// limit, and the producer waits for room (WithWaitForRoom), as a
	// producer faster than its consumer would, instead of piling up
	// frames in memory.
	streamQueueDepth = 8
	// streamFD is the descriptor a stream peer's control socket has in
	// it (the first of exec.Cmd.ExtraFiles).
	streamFD = 3
)

// streamRate is the frame rate of one variant in one round.
type streamRate struct {
	round   int
	elapsed time.Duration
	// producer is the producer's own time, from starting the first frame
	// to the last frame stored.
	producer time.Duration
}

// stream measures a stream of frames from a producer process through a
// named queue to a consumer process, which waits for each frame with
// RetrieveWait and reads every byte of it, while the producer goes on
// storing: frames per second from the producer starting its first frame
// to the consumer having read its last, for each variant, in rounds that
// rotate the order of the variants.
func (e *environment) stream(ctx context.Context) error {
	size, frames := e.cfg.StreamSize, e.cfg.StreamFrames
	path := filepath.Join(e.dir, "stream.sock")
	// The queue holds at most streamQueueDepth frames; the stored bytes
	// are bounded by what can be in flight (the queue, a store waiting
	// for room, a frame being handed to the consumer), not by the
	// machine's memory.
	held := int64(streamQueueDepth+4) * int64(size)
	srv, err := e.startPeer(ctx, peerMachq, path,
		"--max-queue-messages", strconv.Itoa(streamQueueDepth),
		"--max-stored-bytes", strconv.FormatInt(held, 10))
	if err != nil {
		return err
	}
	defer srv.Stop()

	rates := map[string][]streamRate{}
	for round := range e.cfg.Rounds {
		for i := range streamVariants {
			v := streamVariants[(i+round)%len(streamVariants)]
			r, err := e.streamRun(ctx, path, v, round)
			if err != nil {
				return fmt.Errorf("bench: stream of %d × %s frames, %s: %w", frames, fmtSize(size), v, err)
			}
			rates[v] = append(rates[v], r)
		}
		e.progress("stream %s: round %d/%d", fmtSize(size), round+1, e.cfg.Rounds)
	}

	s := &Stream{Size: size, Frames: frames, QueueDepth: streamQueueDepth, Rounds: e.cfg.Rounds, Target: StreamTarget}
	for _, v := range streamVariants {
		sv := StreamVariant{Variant: v, API: streamAPI[v]}
		var perSecond []float64
		for _, r := range rates[v] {
			run := StreamRun{Round: r.round + 1, Elapsed: Duration(r.elapsed), Producer: Duration(r.producer),
				PerSecond: float64(frames) / r.elapsed.Seconds()}
			sv.Runs = append(sv.Runs, run)
			perSecond = append(perSecond, run.PerSecond)
		}
		sv.PerSecond = median(perSecond)
		sv.MBps = sv.PerSecond * float64(size) / 1e6
		s.Variants = append(s.Variants, sv)
	}
	if send := s.Variants[1].PerSecond; send > 0 {
		s.Ratio = s.Variants[0].PerSecond / send
	}
	e.report.Stream = s
	e.progress("stream %s: %s %.0f frames/s, %s %.0f frames/s: %s over %s %.2f (target %.1f or more)", fmtSize(size),
		StreamPage, s.Variants[0].PerSecond, StreamSend, s.Variants[1].PerSecond, StreamPage, StreamSend, s.Ratio, StreamTarget)
	return nil
}

// median returns the median of x, 0 if it is empty.
func median(x []float64) float64 {
	if len(x) == 0 {
		return 0
	}
	s := slices.Clone(x)
	slices.Sort(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// streamRun runs one variant once: a consumer process, then a producer
// process, each started and ready before either begins; then both are
// told to go, the consumer first.
func (e *environment) streamRun(ctx context.Context, path, variant string, round int) (streamRate, error) {
	size, frames := e.cfg.StreamSize, e.cfg.StreamFrames
	queue := fmt.Sprintf("bench-stream-%d-%s", round+1, variant)
	args := []string{path, queue, strconv.Itoa(size), strconv.Itoa(frames), e.cfg.Digest.String()}
	cons, err := e.startStreamPeer(ctx, peerStreamConsumer, args...)
	if err != nil {
		return streamRate{}, err
	}
	defer cons.stop()
	prod, err := e.startStreamPeer(ctx, peerStreamProducer, append(args, variant)...)
	if err != nil {
		return streamRate{}, err
	}
	defer prod.stop()

	// Nothing in a working run takes long; the deadline only ends a
	// stuck one: a minute, and a second per 50 MB of frames.
	deadline := time.Now().Add(time.Minute + time.Duration(int64(size)*int64(frames)/50e6)*time.Second)
	type outcome struct {
		res streamResult
		err error
	}
	outcomes := make(chan outcome, 2)
	for _, p := range []*streamPeer{cons, prod} {
		if err := p.begin(); err != nil {
			return streamRate{}, err
		}
		go func() {
			res, err := p.result(ctx, deadline)
			outcomes <- outcome{res, err}
		}()
	}
	var pr, cr streamResult
	for got := 1; got <= 2; got++ {
		o := <-outcomes
		if o.err != nil {
			// Stopping both ends the other's wait too.
			cons.stop()
			prod.stop()
			if got == 1 {
				<-outcomes
			}
			return streamRate{}, o.err
		}
		if o.res.Role == peerStreamProducer {
			pr = o.res
		} else {
			cr = o.res
		}
	}
	if pr.Frames != frames || cr.Frames != frames {
		return streamRate{}, fmt.Errorf("%d frames produced and %d consumed, want %d", pr.Frames, cr.Frames, frames)
	}
	if cr.End <= pr.Start || pr.End < pr.Start {
		return streamRate{}, fmt.Errorf("producer from %d to %d ns, consumer done at %d ns: the clocks disagree", pr.Start, pr.End, cr.End)
	}
	return streamRate{round: round, elapsed: time.Duration(cr.End - pr.Start), producer: time.Duration(pr.End - pr.Start)}, nil
}

// streamPeer is a running stream producer or consumer, and the socket
// the benchmark tells it to go on and reads its result from.
type streamPeer struct {
	name string
	proc *peerproc.Process
	ctl  *net.UnixConn
}

// startStreamPeer starts a stream peer of kind with args after its
// control descriptor, and waits until it is ready.
func (e *environment) startStreamPeer(ctx context.Context, kind string, args ...string) (*streamPeer, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("bench: socketpair: %w", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "stream control"), os.NewFile(uintptr(fds[1]), "stream control")
	cmd := e.cfg.PeerCommand(append([]string{kind, strconv.Itoa(streamFD)}, args...)...)
	cmd.ExtraFiles = []*os.File{theirs}
	p, err := peerproc.Start(ctx, kind+" peer", cmd)
	theirs.Close()
	if err != nil {
		mine.Close()
		return nil, fmt.Errorf("bench: %w", err)
	}
	c, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("bench: %w", err)
	}
	return &streamPeer{name: kind, proc: p, ctl: c.(*net.UnixConn)}, nil
}

// begin tells the peer to go on.
func (p *streamPeer) begin() error {
	if _, err := p.ctl.Write([]byte("go\n")); err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	return nil
}

// result waits for the peer's result, until deadline or the end of ctx.
func (p *streamPeer) result(ctx context.Context, deadline time.Time) (streamResult, error) {
	p.ctl.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { p.ctl.SetReadDeadline(time.Now()) })
	defer stop()
	b, err := io.ReadAll(p.ctl)
	if err != nil {
		if ctx.Err() != nil {
			return streamResult{}, ctx.Err()
		}
		return streamResult{}, fmt.Errorf("%s: %w", p.name, err)
	}
	var r streamResult
	if len(bytes.TrimSpace(b)) == 0 {
		return r, fmt.Errorf("%s ended without a result", p.name)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: its result %q: %w", p.name, b, err)
	}
	if r.Err != "" {
		return r, fmt.Errorf("%s: %s", p.name, r.Err)
	}
	return r, nil
}

// stop ends the peer; it is safe to call more than once, and from
// another goroutine than result's.
func (p *streamPeer) stop() {
	p.proc.Stop()
	p.ctl.Close()
}

// streamResult is what a stream peer reports: times on the system-wide
// monotonic clock (CLOCK_MONOTONIC), comparable between processes.
type streamResult struct {
	Role string `json:"role"`
	// Start is, for the producer, when it started its first frame, and
	// for the consumer when it received its first.
	Start int64 `json:"start_ns"`
	// End is, for the producer, when its last frame was stored, and for
	// the consumer when it had read every byte of its last.
	End    int64  `json:"end_ns"`
	Frames int    `json:"frames"`
	Err    string `json:"error,omitempty"`
}

// monotonic reads the system-wide monotonic clock.
func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// streamFrames is the content of a stream's frames: a pattern, stamped
// in its first (up to) 8 bytes with the frame's number.
type streamFrames struct{ pattern []byte }

func newStreamFrames(size int) streamFrames { return streamFrames{payload(size)} }

func stampFrame(i int) [8]byte {
	var s [8]byte
	binary.LittleEndian.PutUint64(s[:], uint64(i))
	return s
}

// fill writes every byte of frame i into b, which is the frame's size.
func (f streamFrames) fill(b []byte, i int) {
	copy(b, f.pattern)
	s := stampFrame(i)
	copy(b, s[:])
}

// check reads every byte of b and reports whether it is frame i.
func (f streamFrames) check(b []byte, i int) error {
	if len(b) != len(f.pattern) {
		return fmt.Errorf("frame %d: received %d bytes, sent %d", i, len(b), len(f.pattern))
	}
	s := stampFrame(i)
	n := min(len(b), len(s))
	if !bytes.Equal(b[:n], s[:n]) {
		return fmt.Errorf("frame %d: another frame came in its place", i)
	}
	if !bytes.Equal(b[n:], f.pattern[n:]) {
		return fmt.Errorf("frame %d: received bytes differ from those sent", i)
	}
	return nil
}

// runStreamPeer is the body of a stream peer process:
//
//	stream-producer CTLFD SOCKET QUEUE SIZE FRAMES DIGEST VARIANT
//	stream-consumer CTLFD SOCKET QUEUE SIZE FRAMES DIGEST
//
// It connects to the machq server at SOCKET, says ready, waits for "go"
// on the control socket CTLFD, streams FRAMES frames of SIZE bytes into
// (or out of) the named QUEUE, and writes its result on the control
// socket as one line of JSON.
func runStreamPeer(ctx context.Context, role string, args []string, ready func()) error {
	usage := "CTLFD SOCKET QUEUE SIZE FRAMES DIGEST"
	if role == peerStreamProducer {
		usage += " VARIANT"
	}
	if len(args) != len(strings.Fields(usage)) {
		return fmt.Errorf("bench peer: usage: %s %s", role, usage)
	}
	fd, err := strconv.Atoi(args[0])
	if err != nil || fd < 0 {
		return fmt.Errorf("bench peer: control descriptor %q", args[0])
	}
	f := os.NewFile(uintptr(fd), "stream control")
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("bench peer: control socket: %w", err)
	}
	defer conn.Close()
	// The end of ctx (the benchmark stopping this peer) ends a wait for
	// "go" too.
	defer context.AfterFunc(ctx, func() { conn.Close() })()

	res, err := streamWork(ctx, role, args[1:], ready, func() error {
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			return fmt.Errorf("waiting for go: %w", err)
		}
		if line != "go\n" {
			return fmt.Errorf("told %q instead of go", line)
		}
		return nil
	})
	res.Role = role
	if err != nil {
		res.Err = err.Error()
	}
	if werr := json.NewEncoder(conn).Encode(res); werr != nil && err == nil {
		err = werr
	}
	return err
}

// streamWork does a stream peer's work; see runStreamPeer.
func streamWork(ctx context.Context, role string, args []string, ready func(), wait func() error) (streamResult, error) {
	var r streamResult
	socket, queue := args[0], args[1]
	size, err := strconv.Atoi(args[2])
	if err != nil || size <= 0 {
		return r, fmt.Errorf("frame size %q", args[2])
	}
	frames, err := strconv.Atoi(args[3])
	if err != nil || frames <= 0 {
		return r, fmt.Errorf("frame count %q", args[3])
	}
	digest, err := machq.ParseDigest(args[4])
	if err != nil {
		return r, err
	}
	variant := ""
	if role == peerStreamProducer {
		variant = args[5]
		if !slices.Contains(streamVariants, variant) {
			return r, fmt.Errorf("unknown variant %q", variant)
		}
	}
	opts := []machq.Option{machq.WithDigest(digest)}
	if role == peerStreamProducer {
		opts = append(opts, machq.WithWaitForRoom())
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := machq.Dial(dctx, socket, opts...)
	cancel()
	if err != nil {
		return r, err
	}
	defer c.Close()
	content := newStreamFrames(size)
	var buf []byte
	if variant == StreamSend {
		buf = make([]byte, size)
	}
	ready()
	if err := wait(); err != nil {
		return r, err
	}

	if role == peerStreamProducer {
		r.Start = monotonic()
		for i := range frames {
			if variant == StreamPage {
				p, err := machq.NewPage(size)
				if err != nil {
					return r, err
				}
				content.fill(p.Bytes(), i)
				if _, err := c.SendPage(ctx, queue, p); err != nil {
					p.Close()
					return r, fmt.Errorf("frame %d: %w", i, err)
				}
			} else {
				content.fill(buf, i)
				if _, err := c.Send(ctx, queue, buf); err != nil {
					return r, fmt.Errorf("frame %d: %w", i, err)
				}
			}
			r.Frames++
		}
		r.End = monotonic()
		return r, nil
	}

	for i := range frames {
		m, err := c.RetrieveWait(ctx, queue)
		if err != nil {
			if m != nil {
				m.Close()
			}
			return r, fmt.Errorf("frame %d: %w", i, err)
		}
		if i == 0 {
			r.Start = monotonic()
		}
		err = content.check(m.Bytes(), i)
		m.Close()
		if err != nil {
			return r, err
		}
		r.Frames++
	}
	r.End = monotonic()
	return r, nil
}
