package loadtest

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/machq/machq"
)

// Roles of the processes of an ack-mode run (AckClientConfig.Role).
const (
	RoleProducer = "producer"
	RoleConsumer = "consumer"
)

// AckClientConfig is what one process of an ack-mode run does.
type AckClientConfig struct {
	Socket string
	// Role is RoleProducer or RoleConsumer.
	Role string
	// ID numbers the producer, or the consumer, from 0.
	ID int
	// Producers is how many producers the run has and Messages how many
	// each stores: a consumer refuses a message outside them.
	Producers int
	Messages  int
	MaxSize   int // largest payload
	// Queues is how many shared queues the run uses; Queue is the one a
	// consumer takes its messages from.
	Queues int
	Queue  int
	// Credit is the most deliveries a consumer holds unsettled at once.
	Credit int
	Seed   uint64
	// Victim makes a consumer one to be killed: HoldAfter its start, it
	// takes up to Credit deliveries (waiting for the first, and up to
	// holdGather for the others), acknowledges a random part of them,
	// reports the rest as held and then holds them, acknowledging
	// nothing more, until it is killed.
	Victim    bool
	HoldAfter time.Duration
}

// ackQueue names shared queue i of an ack-mode run.
func ackQueue(i int) string { return "load-ack-" + strconv.Itoa(i) }

// ackShape returns the queue and the payload size of message n of
// producer p: both are drawn from the run's seed, so that a consumer can
// tell what it should have received.
func ackShape(seed uint64, p, n, queues, maxSize int) (queue, size int) {
	r := rand.New(rand.NewPCG(seed, 1<<63|uint64(p)<<32|uint64(n)))
	queue = r.IntN(queues)
	return queue, max(payloadSize(r, maxSize), 16)
}

// matches reports whether b is exactly the payload fill writes for
// message seq of client id, of len(b) bytes.
func matches(b []byte, id, seq int) bool {
	if len(b) < 16 || binary.LittleEndian.Uint64(b[:8]) != uint64(id) || binary.LittleEndian.Uint64(b[8:16]) != uint64(seq) {
		return false
	}
	x := byte(id*31 + seq*7)
	for i := 16; i < len(b); i++ {
		if b[i] != x+byte(i) {
			return false
		}
	}
	return true
}

// An observation is one delivery a consumer received, as it reports it
// on stdout: "a" (acknowledged: Ack returned nil) or "h" (held when it
// stopped to be killed), then the queue's index, the message's sequence
// number, its producer and number, and its delivery count.
type observation struct {
	held       bool
	queue      int
	seq        uint64
	producer   int
	number     int
	deliveries int
}

func (o observation) append(b []byte) []byte {
	if o.held {
		b = append(b, "h "...)
	} else {
		b = append(b, "a "...)
	}
	b = strconv.AppendInt(b, int64(o.queue), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, o.seq, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(o.producer), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(o.number), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(o.deliveries), 10)
	return append(b, '\n')
}

// parseObservation parses a line written by observation.append, without
// its newline.
func parseObservation(line string) (observation, error) {
	var o observation
	var kind string
	n, err := fmt.Sscan(line, &kind, &o.queue, &o.seq, &o.producer, &o.number, &o.deliveries)
	if err != nil || n != 6 || (kind != "a" && kind != "h") {
		return o, fmt.Errorf("not an observation: %q", line)
	}
	o.held = kind == "h"
	return o, nil
}

// holdGather bounds how long a consumer to be killed waits for more
// deliveries to hold, once it holds one.
const holdGather = time.Second

// heldLine is the line a consumer to be killed writes once it holds its
// deliveries, after reporting them.
const heldLine = "held"

// RunAckClient runs one producer or consumer process of an ack-mode
// load run, writing its reports to out.
//
// A producer stores cfg.Messages messages, numbered from 0, each in the
// queue and of the size ackShape draws, with a payload that says whose
// and which it is, and prints a ClientReport as one JSON line (after a
// failure too).
//
// A consumer takes messages from its queue with ReserveWait (and Reserve,
// to hold up to cfg.Credit at once), checks each against what its
// producer stored (the library checks the digest), acknowledges them in
// a random order and reports each it acknowledged, in the order it
// received them (see observation). A victim stops acknowledging at its
// moment and holds what it has, as AckClientConfig says. The consumer
// ends when stdin reaches end of file, printing its ClientReport.
func RunAckClient(ctx context.Context, cfg AckClientConfig, stdin io.Reader, out io.Writer) error {
	c, err := machq.Dial(ctx, cfg.Socket)
	if err != nil {
		return err
	}
	defer c.Close()
	rep := ClientReport{ID: cfg.ID}
	switch cfg.Role {
	case RoleProducer:
		err = produce(ctx, c, cfg, &rep)
	case RoleConsumer:
		stop, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			io.Copy(io.Discard, stdin)
			cancel()
		}()
		w := bufio.NewWriter(out)
		err = consume(ctx, stop, c, cfg, w, &rep)
		if ferr := w.Flush(); err == nil {
			err = ferr
		}
	default:
		return fmt.Errorf("unknown role %q: want %s or %s", cfg.Role, RoleProducer, RoleConsumer)
	}
	// The report comes last, after a failure too: what a failed producer
	// stored must still be accounted for.
	if werr := json.NewEncoder(out).Encode(rep); err == nil {
		err = werr
	}
	return err
}

// produce stores the producer's messages.
func produce(ctx context.Context, c *machq.Client, cfg AckClientConfig, rep *ClientReport) error {
	buf := make([]byte, cfg.MaxSize)
	for n := range cfg.Messages {
		q, size := ackShape(cfg.Seed, cfg.ID, n, cfg.Queues, cfg.MaxSize)
		fill(buf[:size], cfg.ID, n)
		if _, err := c.Send(ctx, ackQueue(q), buf[:size]); err != nil {
			return fmt.Errorf("producer %d: store message %d in %s: %w", cfg.ID, n, ackQueue(q), err)
		}
		rep.Stored++
		rep.Bytes += int64(size)
	}
	return nil
}

// consume takes, checks and acknowledges messages until stop ends,
// writing an observation to w for each delivery it acknowledged and
// flushing w before it may wait.
func consume(ctx, stop context.Context, c *machq.Client, cfg AckClientConfig, w *bufio.Writer, rep *ClientReport) error {
	queue := ackQueue(cfg.Queue)
	opts := &machq.AckOptions{Credit: cfg.Credit, Lease: -1}
	r := rand.New(rand.NewPCG(cfg.Seed, 1<<62|uint64(cfg.ID)))
	holdAt := time.Now().Add(cfg.HoldAfter)
	var line []byte
	var batch []*machq.Delivery
	var obs []observation
	var acked []bool
	for {
		hold := cfg.Victim && !time.Now().Before(holdAt)
		d, err := c.ReserveWait(stop, queue, opts)
		if err != nil {
			if d != nil {
				return consumerRefuses(ctx, cfg, d, err)
			}
			if stop.Err() != nil && ctx.Err() == nil {
				return nil // told to stop
			}
			return fmt.Errorf("consumer %d: reserve from %s: %w", cfg.ID, queue, err)
		}
		batch = append(batch[:0], d)
		k := 1 + r.IntN(cfg.Credit)
		wait := time.Duration(0)
		if hold {
			// Gather a full credit while messages keep coming, for a
			// while: the queue is often empty, its messages handed
			// straight to waiting consumers.
			k, wait = cfg.Credit, holdGather
		}
		batch, d, err = reserveMore(ctx, c, queue, opts, batch, k, wait)
		if err != nil {
			if d != nil {
				return consumerRefuses(ctx, cfg, d, err)
			}
			return fmt.Errorf("consumer %d: reserve from %s: %w", cfg.ID, queue, err)
		}
		obs = obs[:0]
		for _, d := range batch {
			o, err := check(cfg, d)
			if err != nil {
				return consumerRefuses(ctx, cfg, d, err)
			}
			obs = append(obs, o)
			rep.Bytes += d.Len()
			d.Close()
		}
		// Settle in a random order, some of the batch left held by a
		// consumer about to be killed.
		keep := 0
		if hold {
			keep = 1 + r.IntN(len(batch))
		}
		acked = append(acked[:0], make([]bool, len(batch))...)
		for _, i := range r.Perm(len(batch)) {
			if keep > 0 {
				keep--
				obs[i].held = true
				continue
			}
			if err := batch[i].Ack(ctx); err != nil {
				// Report what was acknowledged before failing.
				for j, o := range obs {
					if acked[j] {
						w.Write(o.append(line[:0]))
					}
				}
				return fmt.Errorf("consumer %d: ack message %d of %s: %w", cfg.ID, batch[i].Seq, queue, err)
			}
			acked[i] = true
			rep.Retrieved++
		}
		for _, o := range obs {
			line = o.append(line[:0])
			w.Write(line)
		}
		if hold {
			w.WriteString(heldLine + "\n")
			if err := w.Flush(); err != nil {
				return err
			}
			// Hold them, and whatever else arrives, until killed.
			for {
				d, err := c.ReserveWait(stop, queue, opts)
				switch {
				case err == nil:
					d.Close() // the message stays pending
				case stop.Err() != nil:
					return fmt.Errorf("consumer %d: held deliveries and was not killed", cfg.ID)
				default:
					return fmt.Errorf("consumer %d: reserve from %s while holding: %w", cfg.ID, queue, err)
				}
			}
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
}

// reserveMore adds deliveries of queue to batch until it holds k or the
// queue is empty, waiting for them up to wait in all. On an error, it
// returns the delivery it came with, if any.
func reserveMore(ctx context.Context, c *machq.Client, queue string, opts *machq.AckOptions, batch []*machq.Delivery, k int, wait time.Duration) ([]*machq.Delivery, *machq.Delivery, error) {
	reserve := func() (*machq.Delivery, error) { return c.Reserve(ctx, queue, opts) }
	if wait > 0 {
		gather, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		reserve = func() (*machq.Delivery, error) { return c.ReserveWait(gather, queue, opts) }
	}
	for len(batch) < k {
		d, err := reserve()
		switch {
		case errors.Is(err, machq.ErrEmpty):
			return batch, nil, nil
		case err != nil:
			return batch, d, err
		}
		batch = append(batch, d)
	}
	return batch, nil, nil
}

// check verifies a delivery against what its producer stored.
func check(cfg AckClientConfig, d *machq.Delivery) (observation, error) {
	b := d.Bytes()
	if len(b) < 16 {
		return observation{}, fmt.Errorf("%d bytes, shorter than any message stored", len(b))
	}
	p, n := binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:16])
	if p >= uint64(cfg.Producers) || n >= uint64(cfg.Messages) {
		return observation{}, fmt.Errorf("it says it is message %d of producer %d, which were never stored", n, p)
	}
	q, size := ackShape(cfg.Seed, int(p), int(n), cfg.Queues, cfg.MaxSize)
	switch {
	case q != cfg.Queue || d.Queue != ackQueue(cfg.Queue):
		return observation{}, fmt.Errorf("message %d of producer %d was stored in %s, not %s", n, p, ackQueue(q), d.Queue)
	case len(b) != size || !matches(b, int(p), int(n)):
		return observation{}, fmt.Errorf("message %d of producer %d changed (%d bytes, stored %d)", n, p, len(b), size)
	}
	return observation{queue: cfg.Queue, seq: d.Seq, producer: int(p), number: int(n), deliveries: d.Deliveries()}, nil
}

// consumerRefuses ends a consumer on a delivery it cannot accept: the
// delivery becomes a dead letter (so that it does not go round the other
// consumers), and the run fails.
func consumerRefuses(ctx context.Context, cfg AckClientConfig, d *machq.Delivery, err error) error {
	d.Close()
	terr := d.Term(ctx, "machq load: "+err.Error())
	return errors.Join(fmt.Errorf("consumer %d: message %d of %s: %w", cfg.ID, d.Seq, d.Queue, err), terr)
}
