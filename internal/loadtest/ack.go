package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/machq/machq"
)

// AckReport is the outcome particular to an ack-mode run (Config.Ack).
// Report.Messages and Report.Bytes count what the producers stored,
// Report.Losses the messages stored and never acknowledged,
// Report.Duplicates those acknowledged more than once, and
// Report.Killed the consumers killed while they held deliveries.
//
// Report.Ok holds an ack-mode run to everything a run of the other mode
// must meet but the server's resident memory afterwards (Report.After.RSS
// is reported, not checked): the consumers all leave at once at the end,
// and a server that then allocates nothing keeps the heap they left
// until Go's forced garbage collection, every two minutes, after which
// it returns to idle. A leak of what the server tracks shows in the
// counts that are checked: stored and pending messages, queues,
// descriptors and goroutines.
type AckReport struct {
	Producers int `json:"producers"`
	Consumers int `json:"consumers"`
	Queues    int `json:"queues"`
	Credit    int `json:"credit"`
	// Victims is how many consumers were chosen to be killed; Spared
	// counts those of them that found nothing more to hold once their
	// moment came (the queues had run dry) and so ended normally.
	Victims int `json:"victims"`
	Spared  int `json:"spared"`
	// Held counts the deliveries the killed consumers reported holding,
	// unacknowledged, when they were killed: each must then have been
	// acknowledged by another consumer, as a redelivery.
	Held int `json:"held"`
	// Acked counts the messages acknowledged (an Ack that returned nil),
	// Acks every successful Ack (Acked plus the duplicates).
	Acked int64 `json:"acked"`
	Acks  int64 `json:"acks"`
	// Redelivered counts the messages whose acknowledged delivery was
	// not their first; MaxDeliveries is the highest delivery count
	// acknowledged.
	Redelivered   int64 `json:"redelivered"`
	MaxDeliveries int   `json:"max_deliveries"`
	// Behind counts deliveries a consumer received after one with a
	// larger sequence number from the same queue: each must be a
	// redelivery. OrderViolations counts those that were not (a first
	// delivery out of FIFO order, or a message delivered twice to one
	// consumer) and a producer's messages in one queue whose sequence
	// numbers do not follow the order it stored them in.
	Behind          int64 `json:"behind"`
	OrderViolations int   `json:"order_violations"`
	// Mismatches counts acknowledgements that do not fit what was stored
	// (a message never stored, or seen in the wrong queue or under
	// another sequence number) and held deliveries not acknowledged
	// afterwards as a redelivery by another consumer.
	Mismatches int `json:"mismatches"`
	// The server's counts for the run's queues over the run, read just
	// before the consumers were told to stop: acknowledgements (which
	// must equal Acks), deliveries, redeliveries and dead letters
	// (which must be 0).
	ServerAcked        uint64 `json:"server_acked"`
	ServerDelivered    uint64 `json:"server_delivered"`
	ServerRedelivered  uint64 `json:"server_redelivered"`
	ServerDeadLettered uint64 `json:"server_dead_lettered"`
	// Stalled says the run stopped waiting for acknowledgements after
	// Config.StallTimeout without one.
	Stalled bool `json:"stalled,omitempty"`
	// QueuesLeft lists the run's queues (and their dead-letter queues)
	// still holding messages, pending deliveries or delayed ones after
	// the run.
	QueuesLeft []string `json:"queues_left,omitempty"`
	// Problems describes the first of the losses, duplicates, order
	// violations and mismatches.
	Problems []string `json:"problems,omitempty"`
}

// maxProblems bounds AckReport.Problems.
const maxProblems = 20

func (a *AckReport) ok() bool {
	return !a.Stalled && a.OrderViolations == 0 && a.Mismatches == 0 && a.ServerAcked == uint64(a.Acks) &&
		a.ServerDeadLettered == 0 && len(a.QueuesLeft) == 0
}

func (a *AckReport) problem(format string, args ...any) {
	if len(a.Problems) < maxProblems {
		a.Problems = append(a.Problems, fmt.Sprintf(format, args...))
	}
}

func (c *Config) setAckDefaults() error {
	if c.SigtermAfter > 0 {
		return errors.New("loadtest: the ack mode cannot be combined with SigtermAfter")
	}
	if c.Producers <= 0 {
		c.Producers = 50
	}
	if c.Queues <= 0 {
		c.Queues = 8
	}
	if c.Credit <= 0 {
		c.Credit = 8
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 30 * time.Second
	}
	if c.Clients < c.Queues {
		return fmt.Errorf("loadtest: %d consumers for %d queues: give at least one consumer per queue", c.Clients, c.Queues)
	}
	return nil
}

// ledger gathers what the consumers report acknowledging, by producer
// and message number.
type ledger struct {
	mu      sync.Mutex
	msgs    [][]ledgerEntry
	acked   int64 // distinct messages
	changed chan struct{}
	rep     *AckReport
}

type ledgerEntry struct {
	acks       int32
	by         int32 // the consumer of the first acknowledgement
	deliveries int32
	queue      int32
	seq        uint64
}

func newLedger(producers, messages int, rep *AckReport) *ledger {
	l := &ledger{msgs: make([][]ledgerEntry, producers), changed: make(chan struct{}, 1), rep: rep}
	for p := range l.msgs {
		l.msgs[p] = make([]ledgerEntry, messages)
	}
	return l
}

// signal wakes the coordinator to look at the ledger again.
func (l *ledger) signal() {
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// ack records that consumer acknowledged o.
func (l *ledger) ack(consumer int, o observation) {
	l.mu.Lock()
	defer l.mu.Unlock()
	defer l.signal()
	a := l.rep
	a.Acks++
	if o.producer < 0 || o.producer >= len(l.msgs) || o.number < 0 || o.number >= len(l.msgs[o.producer]) {
		a.Mismatches++
		a.problem("consumer %d acknowledged message %d of producer %d, which was never stored", consumer, o.number, o.producer)
		return
	}
	if o.deliveries < 1 {
		a.Mismatches++
		a.problem("consumer %d acknowledged message %d of producer %d with a delivery count of %d", consumer, o.number, o.producer, o.deliveries)
	}
	e := &l.msgs[o.producer][o.number]
	e.acks++
	if e.acks > 1 {
		a.problem("message %d of producer %d (%s #%d) acknowledged again by consumer %d (delivery %d), first by consumer %d (delivery %d)",
			o.number, o.producer, ackQueue(o.queue), o.seq, consumer, o.deliveries, e.by, e.deliveries)
		return
	}
	*e = ledgerEntry{acks: 1, by: int32(consumer), deliveries: int32(o.deliveries), queue: int32(o.queue), seq: o.seq}
	l.acked++
	if o.deliveries > 1 {
		a.Redelivered++
	}
	a.MaxDeliveries = max(a.MaxDeliveries, o.deliveries)
}

// orderViolation records a delivery out of the order the server
// guarantees.
func (l *ledger) orderViolation(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rep.OrderViolations++
	l.rep.problem(format, args...)
}

// orderCheck follows one consumer's deliveries from one queue. The
// server hands each queue's messages out in FIFO order, and puts a
// message whose consumer went away back at its original place: so a
// first delivery always has a larger sequence number than every message
// delivered from that queue before it, and only a redelivery may come
// behind one the consumer has seen.
type orderCheck struct {
	seen   bool
	top    uint64 // the largest sequence number seen
	behind int64
}

// observe checks the next delivery and returns what is wrong with it,
// or "".
func (c *orderCheck) observe(o observation) string {
	if !c.seen || o.seq > c.top {
		c.seen, c.top = true, o.seq
		return ""
	}
	switch {
	case o.seq == c.top:
		return fmt.Sprintf("message #%d of %s delivered twice in a row to one consumer (delivery %d)", o.seq, ackQueue(o.queue), o.deliveries)
	case o.deliveries <= 1:
		return fmt.Sprintf("message #%d of %s delivered for the first time after #%d", o.seq, ackQueue(o.queue), c.top)
	}
	c.behind++
	return ""
}

// ackProc is one client process of an ack-mode run.
type ackProc struct {
	name     string
	id       int
	victim   bool
	cmd      *exec.Cmd
	stdin    io.WriteCloser // consumers: closed to tell them to stop
	stderr   strings.Builder
	killSent atomic.Bool
	// Set by the goroutine that reads the process's output, before done.
	held   []observation
	behind int64
	report *ClientReport
	killed bool
	err    error
	bad    []string // lines that are not part of the protocol
}

// runAck is the ack-mode load test; see Config.Ack.
func runAck(ctx context.Context, cfg Config, rep *Report, socket string, monitor *machq.Client) error {
	pid := monitor.ServerPID()
	a := &AckReport{Producers: cfg.Producers, Consumers: cfg.Clients, Queues: cfg.Queues, Credit: cfg.Credit}
	rep.Ack = a
	rep.Clients = cfg.Producers + cfg.Clients

	st, err := monitor.Stat(ctx)
	if err != nil {
		return err
	}
	base := serverCounts(st, cfg.Queues)
	// Each queue holds a message pending with the monitor for the whole
	// run, so that no queue is ever idle: an idle queue may be removed,
	// and its counts with it.
	sentinels, err := holdSentinels(ctx, monitor, cfg)
	if err != nil {
		return err
	}
	stopSampling := samplePeak(pid, rep)
	sampled := false
	defer func() {
		if !sampled {
			stopSampling()
		}
	}()

	// Choose the consumers to kill, leaving each queue at least one.
	r := rand.New(rand.NewPCG(cfg.Seed, 1))
	want := min(int(float64(cfg.Clients)*cfg.KillFraction+0.5), cfg.Clients-cfg.Queues)
	free := make([]int, cfg.Queues) // consumers of each queue not to be killed
	for i := range cfg.Clients {
		free[i%cfg.Queues]++
	}
	holdAfter := map[int]time.Duration{}
	for _, i := range r.Perm(cfg.Clients) {
		if len(holdAfter) == want {
			break
		}
		if free[i%cfg.Queues] > 1 {
			free[i%cfg.Queues]--
			holdAfter[i] = time.Duration(r.Int64N(int64(cfg.KillWindow)))
		}
	}
	a.Victims = len(holdAfter)
	fmt.Fprintf(cfg.Progress, "load: ack mode: %d producers × %d messages up to %d bytes into %d queues; %d consumers (credit %d), %d to be killed holding deliveries; seed %d\n",
		cfg.Producers, cfg.Messages, cfg.MaxSize, cfg.Queues, cfg.Clients, cfg.Credit, len(holdAfter), cfg.Seed)

	l := newLedger(cfg.Producers, cfg.Messages, a)
	var failed atomic.Int32
	var consumersDone, producersDone sync.WaitGroup
	var procs []*ackProc
	abort := func() {
		for _, p := range procs {
			p.cmd.Process.Kill()
		}
		consumersDone.Wait()
		producersDone.Wait()
	}
	common := []string{"load-client", "--socket", socket, "--producers", strconv.Itoa(cfg.Producers),
		"--messages", strconv.Itoa(cfg.Messages), "--max-size", strconv.Itoa(cfg.MaxSize),
		"--queues", strconv.Itoa(cfg.Queues), "--credit", strconv.Itoa(cfg.Credit),
		"--seed", strconv.FormatUint(cfg.Seed, 10)}
	start := func(p *ackProc, wg *sync.WaitGroup, args []string) error {
		p.cmd = cfg.Command(append(append([]string(nil), common...), args...)...)
		stdout, err := p.cmd.StdoutPipe()
		if err != nil {
			return err
		}
		p.cmd.Stderr = &p.stderr
		if p.name == RoleConsumer {
			if p.stdin, err = p.cmd.StdinPipe(); err != nil {
				return err
			}
		}
		if err := p.cmd.Start(); err != nil {
			return fmt.Errorf("loadtest: start %s %d: %w", p.name, p.id, err)
		}
		procs = append(procs, p)
		wg.Go(func() {
			defer l.signal()
			readAckProc(p, stdout, l)
			if p.err != nil {
				failed.Add(1)
			}
		})
		return nil
	}
	consumers := make([]*ackProc, cfg.Clients)
	for i := range consumers {
		p := &ackProc{name: RoleConsumer, id: i}
		args := []string{"--role", RoleConsumer, "--id", strconv.Itoa(i), "--queue", strconv.Itoa(i % cfg.Queues)}
		if d, ok := holdAfter[i]; ok {
			p.victim = true
			args = append(args, "--victim", "--hold-after", d.String())
		}
		consumers[i] = p
		if err := start(p, &consumersDone, args); err != nil {
			abort()
			return err
		}
	}
	producers := make([]*ackProc, cfg.Producers)
	for i := range producers {
		p := &ackProc{name: RoleProducer, id: i}
		producers[i] = p
		if err := start(p, &producersDone, []string{"--role", RoleProducer, "--id", strconv.Itoa(i)}); err != nil {
			abort()
			return err
		}
	}

	// Wait for the producers, then for every message they stored to be
	// acknowledged.
	produced := make(chan struct{})
	go func() {
		producersDone.Wait()
		close(produced)
	}()
	select {
	case <-produced:
	case <-ctx.Done():
		abort()
		return ctx.Err()
	}
	var total int64
	for _, p := range producers {
		if p.report != nil {
			total += int64(p.report.Stored)
			rep.Messages += int64(p.report.Stored)
			rep.Bytes += p.report.Bytes
		}
	}
	fmt.Fprintf(cfg.Progress, "load: %d messages stored; waiting for their acknowledgements\n", total)
	stall := time.NewTimer(cfg.StallTimeout)
	defer stall.Stop()
wait:
	for {
		l.mu.Lock()
		done := l.acked >= total
		l.mu.Unlock()
		if done || failed.Load() > 0 {
			break
		}
		select {
		case <-l.changed:
			stall.Reset(cfg.StallTimeout)
		case <-stall.C:
			a.Stalled = true
			break wait
		case <-ctx.Done():
			abort()
			return ctx.Err()
		}
	}

	// Read the server's counts while the queues still exist, then stop
	// the consumers and let the sentinels go.
	if st, err = monitor.Stat(ctx); err != nil {
		abort()
		return err
	}
	now := serverCounts(st, cfg.Queues)
	if now.missing > 0 {
		a.Mismatches++
		a.problem("%d of the run's queues missing from STATS while their sentinels were pending", now.missing)
	}
	a.ServerAcked = now.acked - base.acked
	a.ServerDelivered = now.delivered - base.delivered - uint64(cfg.Queues) // the sentinels' deliveries
	a.ServerRedelivered = now.redelivered - base.redelivered
	a.ServerDeadLettered = now.deadLettered - base.deadLettered
	for _, p := range consumers {
		p.stdin.Close()
	}
	consumersDone.Wait()
	stopSampling()
	sampled = true
	for _, d := range sentinels {
		if err := d.Ack(ctx); err != nil {
			return fmt.Errorf("loadtest: acknowledge the sentinel of %s: %w", d.Queue, err)
		}
	}

	tally(cfg, rep, l, producers, consumers)
	fmt.Fprintf(cfg.Progress, "load: %d of %d messages acknowledged; %d consumers killed holding %d deliveries\n",
		a.Acked, rep.Messages, rep.Killed, a.Held)
	return settle(ctx, monitor, rep, func(st *machq.Stats) {
		a.QueuesLeft = a.QueuesLeft[:0]
		for _, q := range st.Queues {
			name := strings.TrimSuffix(q.Name, ".dlq")
			if i, err := strconv.Atoi(strings.TrimPrefix(name, "load-ack-")); err == nil && i >= 0 && i < cfg.Queues && name == ackQueue(i) &&
				(q.Messages > 0 || q.Pending > 0 || q.Delayed > 0) {
				a.QueuesLeft = append(a.QueuesLeft, fmt.Sprintf("%s: %d messages, %d pending, %d delayed", q.Name, q.Messages, q.Pending, q.Delayed))
			}
		}
	})
}

// readAckProc reads a process's reports until it exits: a consumer's
// observations go to the ledger, and its held line has it killed.
func readAckProc(p *ackProc, stdout io.Reader, l *ledger) {
	orders := map[int]*orderCheck{}
	sc := bufio.NewScanner(stdout)
	var last string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "{"):
			last = line
		case p.name == RoleProducer:
			p.bad = append(p.bad, line)
		case line == heldLine:
			if p.victim && p.killSent.CompareAndSwap(false, true) {
				p.cmd.Process.Signal(syscall.SIGKILL)
			} else {
				p.bad = append(p.bad, line)
			}
		default:
			o, err := parseObservation(line)
			if err != nil {
				p.bad = append(p.bad, line)
				continue
			}
			if o.held {
				p.held = append(p.held, o)
			} else {
				l.ack(p.id, o)
			}
			oc := orders[o.queue]
			if oc == nil {
				oc = &orderCheck{}
				orders[o.queue] = oc
			}
			if bad := oc.observe(o); bad != "" {
				l.orderViolation("consumer %d: %s", p.id, bad)
			}
		}
	}
	io.Copy(io.Discard, stdout)
	err := p.cmd.Wait()
	for _, oc := range orders {
		p.behind += oc.behind
	}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL && p.killSent.Load():
		p.killed = true
	case err != nil:
		p.err = fmt.Errorf("%v: %s", err, strings.TrimSpace(p.stderr.String()))
	case len(p.bad) > 0:
		p.err = fmt.Errorf("wrote %d lines outside the protocol, the first %q", len(p.bad), p.bad[0])
	}
	if last != "" {
		var cr ClientReport
		if json.Unmarshal([]byte(last), &cr) == nil {
			p.report = &cr
		}
	}
	if p.err == nil && !p.killed && p.report == nil {
		p.err = errors.New("ended without its report")
	}
}

// tally checks the ledger against what the producers stored and what
// the killed consumers held, into rep.
func tally(cfg Config, rep *Report, l *ledger, producers, consumers []*ackProc) {
	a := rep.Ack
	for _, p := range append(append([]*ackProc(nil), producers...), consumers...) {
		switch {
		case p.killed:
			rep.Killed++
			a.Held += len(p.held)
			continue
		case p.victim && p.err == nil:
			a.Spared++
		}
		if p.err != nil {
			rep.Failures = append(rep.Failures, fmt.Sprintf("%s %d: %v", p.name, p.id, p.err))
		}
	}
	rep.Survivors = rep.Clients - rep.Killed
	for _, p := range consumers {
		a.Behind += p.behind
	}
	a.Acked = l.acked

	// Per queue, the sequence number of the producer's last message.
	last, have := make([]uint64, cfg.Queues), make([]bool, cfg.Queues)
	for _, p := range producers {
		stored := 0
		if p.report != nil {
			stored = p.report.Stored
		}
		clear(have)
		for n, e := range l.msgs[p.id] {
			q, _ := ackShape(cfg.Seed, p.id, n, cfg.Queues, cfg.MaxSize)
			switch {
			case n >= stored:
				// A failed producer may have stored one more than it
				// counted; past that, nothing was stored.
				if e.acks > 0 && (p.err == nil || n > stored) {
					a.Mismatches++
					a.problem("message %d of producer %d acknowledged, but only %d were stored", n, p.id, stored)
				}
				continue
			case e.acks == 0:
				rep.Losses++
				a.problem("message %d of producer %d (in %s) never acknowledged", n, p.id, ackQueue(q))
				continue
			case e.acks > 1:
				rep.Duplicates++
			}
			if int(e.queue) != q {
				a.Mismatches++
				a.problem("message %d of producer %d acknowledged from %s; it was stored in %s", n, p.id, ackQueue(int(e.queue)), ackQueue(q))
				continue
			}
			if have[q] && e.seq <= last[q] {
				a.OrderViolations++
				a.problem("producer %d stored message %d in %s after an earlier one, yet it has #%d, not more than #%d", p.id, n, ackQueue(q), e.seq, last[q])
			}
			last[q], have[q] = e.seq, true
		}
	}
	for _, c := range consumers {
		if !c.killed {
			continue
		}
		for _, o := range c.held {
			e := l.msgs[o.producer][o.number]
			switch {
			case e.acks == 0:
				// Lost: counted above.
			case int(e.by) == c.id || e.seq != o.seq || e.deliveries < 2:
				a.Mismatches++
				a.problem("message %d of producer %d (#%d), held by consumer %d when killed, was acknowledged by consumer %d as #%d at delivery %d",
					o.number, o.producer, o.seq, c.id, e.by, e.seq, e.deliveries)
			}
		}
	}
}

// queueCounts sums the server's counts over the run's queues.
type queueCounts struct {
	acked, delivered, redelivered, deadLettered uint64
	missing                                     int
}

func serverCounts(st *machq.Stats, queues int) queueCounts {
	var c queueCounts
	seen := 0
	for _, q := range st.Queues {
		if i, err := strconv.Atoi(strings.TrimPrefix(q.Name, "load-ack-")); err == nil && i >= 0 && i < queues && q.Name == ackQueue(i) {
			seen++
			c.acked += q.Acked
			c.delivered += q.Delivered
			c.redelivered += q.Redelivered
			c.deadLettered += q.DeadLettered
		}
	}
	c.missing = queues - seen
	return c
}

// holdSentinels stores a message in each of the run's queues and takes
// it in ack mode, to hold until the run ends. The queues must be empty.
func holdSentinels(ctx context.Context, monitor *machq.Client, cfg Config) ([]*machq.Delivery, error) {
	payload := []byte("machq load sentinel " + strconv.FormatUint(cfg.Seed, 10))
	var held []*machq.Delivery
	for q := range cfg.Queues {
		name := ackQueue(q)
		if _, err := monitor.Send(ctx, name, payload); err != nil {
			return nil, fmt.Errorf("loadtest: store the sentinel of %s: %w", name, err)
		}
		d, err := monitor.Reserve(ctx, name, &machq.AckOptions{Lease: -1})
		if err != nil {
			return nil, fmt.Errorf("loadtest: take the sentinel of %s: %w", name, err)
		}
		ok := bytes.Equal(d.Bytes(), payload)
		d.Close()
		if !ok {
			return nil, fmt.Errorf("loadtest: queue %s already holds messages; the ack mode needs its queues (load-ack-0 to load-ack-%d) empty", name, cfg.Queues-1)
		}
		held = append(held, d)
	}
	return held, nil
}
