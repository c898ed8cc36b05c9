package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/machq/machq"
)

// TestDurableKillLoop SIGKILLs machqd at random moments while producers
// store and acknowledging consumers take from several durable queues,
// starting it again each time on the same data directory. After each
// restart:
//
//   - the recovery report machqd logs must agree with what the clients
//     saw: its messages, payload files, payload bytes and non-empty queues
//     at least what was acknowledged stored and not acknowledged taken,
//     at most that plus the stores and acknowledgements unanswered at the
//     kill; no damage; the payload directory holds the files it counts;
//   - STATS must give each queue as many messages as the report;
//   - every message in each queue, peeked, must be one stored, with its
//     bytes, never one whose acknowledgement was answered, in the order
//     each producer stored it; every acknowledged store not taken must be
//     there.
//
// A third of the servers run --sync lossy-interval, which answers once
// a record is written rather than synced: a SIGKILL must lose nothing
// answered under it either. What a restart found settles what was in doubt at the kill (a store or
// an acknowledgement sent and not answered), so each round's bounds are
// exact but for that round's operations in flight. Consumers acknowledge
// most deliveries, put some back with NAK, and sometimes close their
// connection while holding some, so that the log's deliveries and takes
// are exercised too; an eighth of the messages are pages, whose payloads
// are files of the data directory. Now and then machqd is killed while it
// recovers, before it answers anything. At the end the queues are drained
// and a server stopped with SIGTERM leaves nothing behind.
//
// MACHQ_KILL_ROUNDS sets the rounds (10 by default; scripts/test.sh runs
// 300 after the suite), MACHQ_KILL_SEED the random choices.
func TestDurableKillLoop(t *testing.T) {
	rounds := 10
	if v, err := strconv.Atoi(os.Getenv("MACHQ_KILL_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("MACHQ_KILL_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("MACHQ_KILL_ROUNDS=%d MACHQ_KILL_SEED=%d", rounds, seed)
	kl := &killLoop{
		t:      t,
		dir:    filepath.Join(t.TempDir(), "data"),
		socket: filepath.Join(t.TempDir(), "machq.sock"),
		rng:    rand.New(rand.NewPCG(seed, 0x6b696c6c)),
		msgs:   map[string]*kmsg{},
		live:   map[string]int{},
	}
	kl.cond = sync.NewCond(&kl.mu)
	t.Cleanup(func() {
		if kl.d != nil && kl.d.running() {
			kl.d.kill()
		}
		if t.Failed() && kl.d != nil {
			t.Logf("the last machqd's warnings, errors and durable log lines:\n%s", kl.d.logs)
		}
	})
	begin := time.Now()
	for round := range rounds {
		kl.round = round
		if kl.rng.IntN(25) == 0 {
			// Killed while it recovers: the next one must find the same.
			kl.killWhileRecovering()
		}
		kl.start()
		kl.load()
	}
	kl.round = rounds
	kl.start()
	kl.drain()
	kl.d.stop()
	if kl.d.err != nil {
		t.Fatalf("machqd exited with %v after SIGTERM", kl.d.err)
	}
	kl.round++
	rep := kl.start()
	if rep.Messages != 0 || rep.Queues != 0 || rep.PayloadFiles != 0 {
		t.Errorf("after draining every queue and a SIGTERM, the next server recovered %+v; want nothing", rep)
	}
	kl.d.stop()
	kl.summary(rounds, time.Since(begin))
}

// killQueues are the durable queues of the kill loop.
var killQueues = []string{"ka", "kb", "kc"}

const (
	killProducers = 3
	// killConsumers take in ack mode, consumer i from killQueues[i%3].
	killConsumers = 4
	// killBacklog bounds a queue's messages not yet known gone: a
	// producer waits for consumers past it, so that what each restart
	// peeks stays small.
	killBacklog = 150
	// killMaxOps bounds the answered operations before a kill.
	killMaxOps = 250
)

// kmsg is what the clients know of one message of the kill loop, under
// killLoop.mu. queue, size and page do not change.
type kmsg struct {
	queue string
	size  int
	page  bool
	// stored: its store was answered, or a restart found it.
	stored bool
	// acking: an ACK of it was sent and not answered; a restart settles
	// whether it took effect.
	acking bool
	// gone says why the message can be nowhere any more: "acknowledged"
	// (an ACK of it was answered) or "absent after a restart" (a store
	// or an acknowledgement in doubt, which the restart settled); "" while
	// it may be in its queue.
	gone string
}

// recovery is the report a machqd logged as "durable queues recovered".
type recovery struct {
	Queues       int    `json:"queues"`
	Messages     int    `json:"messages"`
	Bytes        int64  `json:"bytes"`
	PayloadFiles int    `json:"payload_files"`
	Segments     int    `json:"segments"`
	Records      int    `json:"records"`
	Took         int64  `json:"took"` // nanoseconds
	Report       string `json:"report"`
}

type killLoop struct {
	t      *testing.T
	dir    string
	socket string
	rng    *rand.Rand // the main goroutine's
	round  int
	d      *daemon // the current machqd
	sync   string  // its --sync

	// killed is set before each SIGKILL: a client's error before it is
	// a failure of the test.
	killed atomic.Bool

	mu       sync.Mutex
	cond     *sync.Cond // broadcast when a message is gone, or a round ends
	msgs     map[string]*kmsg
	live     map[string]int // per queue, messages not gone
	next     [killProducers]int
	ops      int           // operations answered this round
	target   int           // the kill comes once ops reaches it
	killNow  chan struct{} // closed then
	failures []string      // client errors before the kill, wrong deliveries

	// Figures for the summary.
	storesAcked, acksAcked, naks, abandoned, pages int
	verified, drained, recoveryKills, tornTails    int
	lossy                                          int // restarts under lossy-interval
	inDoubtFound, inDoubtGone                      int
	took, ready                                    []time.Duration
}

// killLogs keeps the lines of a JSON-logging machqd that matter here:
// those of the data directory and every warning and error (and anything
// not JSON, like a race report), not the per-message info lines.
type killLogs struct {
	mu      sync.Mutex
	partial []byte
	out     *syncBuffer
}

func (k *killLogs) Write(p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.partial = append(k.partial, p...)
	for {
		i := bytes.IndexByte(k.partial, '\n')
		if i < 0 {
			break
		}
		line := k.partial[:i+1]
		if !bytes.Contains(line, []byte(`"level":"INFO"`)) || bytes.Contains(line, []byte(`"msg":"durable`)) {
			k.out.Write(line)
		}
		k.partial = k.partial[i+1:]
	}
	k.partial = append(k.partial[:0:0], k.partial...)
	return len(p), nil
}

// spawn starts machqd on the loop's data directory without waiting for
// it.
// A third of them sync the log every 1, 10 or 100 ms rather than before
// each answer: a crash of the process must lose nothing answered either
// way.
func (kl *killLoop) spawn() *daemon {
	d := &daemon{t: kl.t, socket: kl.socket, logs: &syncBuffer{}, exited: make(chan struct{})}
	kl.sync = "every-store"
	if kl.rng.IntN(3) == 0 {
		kl.sync = "lossy-interval=" + []string{"1ms", "10ms", "100ms"}[kl.rng.IntN(3)]
	}
	d.cmd = exec.Command(bin.machqd, "--socket", kl.socket, "--data-dir", kl.dir, "--log-format", "json",
		"--max-deliveries", "1000000", "--sync", kl.sync)
	logs := &killLogs{out: d.logs}
	d.cmd.Stdout, d.cmd.Stderr = logs, logs
	if err := d.cmd.Start(); err != nil {
		kl.t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.exited) }()
	kl.d = d
	return d
}

// killWhileRecovering starts machqd and SIGKILLs it at once.
func (kl *killLoop) killWhileRecovering() {
	d := kl.spawn()
	d.kill()
	kl.recoveryKills++
}

// start starts machqd, waits until it answers and checks what it
// recovered against what the clients know, settling what was in doubt.
func (kl *killLoop) start() recovery {
	t := kl.t
	t.Helper()
	began := time.Now()
	d := kl.spawn()
	d.waitReady()
	kl.ready = append(kl.ready, time.Since(began))
	if kl.sync != "every-store" {
		kl.lossy++
	}
	rep := kl.report()
	kl.took = append(kl.took, time.Duration(rep.Took))
	kl.checkReport(rep)
	kl.checkContents(rep)
	return rep
}

// report waits for the recovery report in the current machqd's logs and
// checks the rest of them.
func (kl *killLoop) report() recovery {
	t, d := kl.t, kl.d
	t.Helper()
	var rep recovery
	found := false
	waitFor(t, "the recovery report in machqd's logs", func() bool {
		for line := range strings.Lines(d.logs.String()) {
			if strings.Contains(line, `"msg":"durable queues recovered"`) {
				if err := json.Unmarshal([]byte(line), &rep); err != nil {
					t.Fatalf("round %d: the recovery report %q: %v", kl.round, line, err)
				}
				found = true
			}
		}
		return found
	})
	kl.checkLogs()
	if strings.Contains(d.logs.String(), "torn tail cut") {
		// The kernel may cut a write short when SIGKILL comes in the
		// middle of it: a write never finished, so never answered (the
		// contents below show none was).
		kl.tornTails++
		t.Logf("round %d: %s", kl.round, rep.Report)
	}
	return rep
}

// checkLogs fails the test if the current machqd logged damage, an
// error or a data race.
func (kl *killLoop) checkLogs() {
	kl.t.Helper()
	logs := kl.d.logs.String()
	if strings.Contains(logs, "DAMAGE") || strings.Contains(logs, "DATA RACE") || strings.Contains(logs, `"level":"ERROR"`) {
		kl.t.Fatalf("round %d: machqd's logs:\n%s", kl.round, logs)
	}
}

// bounds are the least and most a restart may find, from what the
// clients know.
type bounds struct {
	messages, files [2]int
	bytes           [2]int64
	queues          map[string][2]int
}

func (kl *killLoop) bounds() bounds {
	kl.mu.Lock()
	defer kl.mu.Unlock()
	b := bounds{queues: map[string][2]int{}}
	for _, m := range kl.msgs {
		if m.gone != "" {
			continue
		}
		// A message surely there counts in both bounds, one in doubt
		// only in the upper.
		from := 1
		if m.stored && !m.acking {
			from = 0
		}
		q := b.queues[m.queue]
		for i := from; i < 2; i++ {
			b.messages[i]++
			b.bytes[i] += int64(m.size)
			q[i]++
			if m.page {
				b.files[i]++
			}
		}
		b.queues[m.queue] = q
	}
	return b
}

// checkReport compares the recovery report with what the clients know
// and with the data directory.
func (kl *killLoop) checkReport(rep recovery) {
	t := kl.t
	t.Helper()
	b := kl.bounds()
	var queues [2]int
	for _, q := range b.queues {
		for i := range 2 {
			if q[i] > 0 {
				queues[i]++
			}
		}
	}
	within := func(what string, got, lo, hi int64) {
		if got < lo || got > hi {
			t.Errorf("round %d: the recovery report gives %d %s; the clients saw %d for sure, at most %d with what was in flight at the kill (%s)",
				kl.round, got, what, lo, hi, rep.Report)
		}
	}
	within("messages", int64(rep.Messages), int64(b.messages[0]), int64(b.messages[1]))
	within("payload files", int64(rep.PayloadFiles), int64(b.files[0]), int64(b.files[1]))
	within("payload bytes", rep.Bytes, b.bytes[0], b.bytes[1])
	within("queues", int64(rep.Queues), int64(queues[0]), int64(queues[1]))
	ents, err := os.ReadDir(filepath.Join(kl.dir, "payloads"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != rep.PayloadFiles {
		t.Errorf("round %d: the payload directory holds %d files, the report counts %d", kl.round, len(ents), rep.PayloadFiles)
	}
	if q, _ := filepath.Glob(filepath.Join(kl.dir, "quarantine-*")); len(q) > 0 {
		t.Errorf("round %d: quarantined bytes after a SIGKILL: %v", kl.round, q)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// killName is the name a producer's message begins with.
func killName(p, n int) string { return fmt.Sprintf("p%d-%07d", p, n) }

// killPayload is the payload of the message name, size bytes: the name,
// a '|', then bytes that depend on both.
func killPayload(name string, size int) []byte {
	b := make([]byte, size)
	n := copy(b, name+"|")
	h := fnv.New32a()
	h.Write([]byte(name))
	x := h.Sum32()
	for i := n; i < size; i++ {
		x = x*1664525 + 1013904223
		b[i] = 'a' + byte(x>>24)%26
	}
	return b
}

// nameOf returns the message name a payload begins with.
func nameOf(payload []byte) string {
	name, _, _ := bytes.Cut(payload[:min(len(payload), 32)], []byte("|"))
	return string(name)
}

// checkPayload says what is wrong with payload, read from queue, or "".
// Called with kl.mu held.
func (kl *killLoop) checkPayload(queue string, payload []byte) (string, *kmsg) {
	name := nameOf(payload)
	m := kl.msgs[name]
	switch {
	case m == nil:
		return fmt.Sprintf("%q, never stored", payload[:min(len(payload), 32)]), nil
	case m.queue != queue:
		return fmt.Sprintf("%s, stored in %s", name, m.queue), m
	case m.gone == "acknowledged":
		return fmt.Sprintf("%s, whose acknowledgement was answered", name), m
	case m.gone != "":
		return fmt.Sprintf("%s, absent after an earlier restart", name), m
	case len(payload) != m.size || !bytes.Equal(payload, killPayload(name, m.size)):
		return fmt.Sprintf("%s, %d bytes, not the %d stored", name, len(payload), m.size), m
	}
	return "", m
}

// checkContents peeks at every message of each queue and checks it
// against STATS, the report and what the clients know; then settles each
// message in doubt.
func (kl *killLoop) checkContents(rep recovery) {
	t := kl.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := machq.Dial(ctx, kl.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if policy, _, _ := strings.Cut(kl.sync, "="); st.Durable == nil || st.Durable.Failed != "" || st.Durable.Sync != policy {
		t.Fatalf("round %d: STATS durable: %+v; want sync %s", kl.round, st.Durable, policy)
	}
	inLine, nonEmpty := map[string]int{}, 0
	for _, q := range st.Queues {
		if q.Messages == 0 && q.Pending == 0 && q.Delayed == 0 {
			continue
		}
		if !q.Durable || !slices.Contains(killQueues, q.Name) || q.Pending != 0 || q.Delayed != 0 {
			t.Errorf("round %d: after the restart STATS gives %+v", kl.round, q)
		}
		inLine[q.Name] = q.Messages
		nonEmpty++
	}
	if nonEmpty != rep.Queues {
		t.Errorf("round %d: STATS gives %d queues with messages, the report %d", kl.round, nonEmpty, rep.Queues)
	}
	present := map[*kmsg]bool{}
	var total int
	var bytesTotal int64
	for _, q := range killQueues {
		last := map[string]int{}
		var lastSeq uint64
		for i := 0; ; i++ {
			m, err := c.Peek(ctx, q, i)
			if errors.Is(err, machq.ErrEmpty) {
				if i != inLine[q] {
					t.Errorf("round %d: %s: %d messages peeked, STATS gives %d", kl.round, q, i, inLine[q])
				}
				break
			}
			if err != nil {
				t.Fatalf("round %d: peek %s %d: %v", kl.round, q, i, err)
			}
			payload := m.Bytes()
			kl.mu.Lock()
			bad, km := kl.checkPayload(q, payload)
			kl.mu.Unlock()
			name := nameOf(payload)
			if bad != "" {
				t.Errorf("round %d: %s holds %s", kl.round, q, bad)
			}
			if km != nil && km.page != m.OutOfLine() {
				t.Errorf("round %d: %s: %s out of line %v, want %v", kl.round, q, name, m.OutOfLine(), km.page)
			}
			if km != nil && present[km] {
				t.Errorf("round %d: %s: %s twice", kl.round, q, name)
			}
			present[km] = true
			total++
			bytesTotal += m.Len()
			prod, num, _ := strings.Cut(name, "-")
			n, _ := strconv.Atoi(num)
			if prev, ok := last[prod]; ok && n < prev {
				t.Errorf("round %d: %s: %s after %s-%07d: out of order", kl.round, q, name, prod, prev)
			}
			last[prod] = n
			if i > 0 && m.Seq <= lastSeq {
				t.Errorf("round %d: %s: seq %d after %d", kl.round, q, m.Seq, lastSeq)
			}
			lastSeq = m.Seq
			m.Close()
		}
	}
	if total != rep.Messages || bytesTotal != rep.Bytes {
		t.Errorf("round %d: %d messages of %d bytes peeked, the report gives %d of %d", kl.round, total, bytesTotal, rep.Messages, rep.Bytes)
	}
	// Settle what was in doubt.
	kl.mu.Lock()
	defer kl.mu.Unlock()
	lost := 0
	for name, m := range kl.msgs {
		switch {
		case m.gone != "":
		case present[m]:
			if !m.stored || m.acking {
				kl.inDoubtFound++
			}
			m.stored, m.acking = true, false
		case m.stored && !m.acking:
			if lost++; lost <= 5 {
				t.Errorf("round %d: %s, whose store was answered and which was never acknowledged taken, is not in %s", kl.round, name, m.queue)
			}
		default:
			kl.inDoubtGone++
			m.gone = "absent after a restart"
			kl.live[m.queue]--
		}
	}
	kl.verified += total
	if lost > 0 {
		t.Errorf("round %d: %d acknowledged stores lost", kl.round, lost)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// op counts an operation answered, and calls for the kill at the
// round's target. Called with kl.mu held.
func (kl *killLoop) op() {
	kl.ops++
	if kl.ops == kl.target {
		close(kl.killNow)
	}
}

// fail records a client's error, unless the kill caused it.
func (kl *killLoop) fail(who string, err error) {
	if kl.killed.Load() {
		return
	}
	kl.wrong(who, err)
}

// wrong records what a client found wrong, killed or not.
func (kl *killLoop) wrong(who string, err error) {
	kl.mu.Lock()
	defer kl.mu.Unlock()
	kl.failures = append(kl.failures, fmt.Sprintf("%s: %v", who, err))
}

// gone marks m gone. Called with kl.mu held.
func (kl *killLoop) gone(m *kmsg, why string) {
	m.gone = why
	kl.live[m.queue]--
	kl.cond.Broadcast()
}

// load runs producers and consumers until the round's target of
// operations, then SIGKILLs machqd and waits for the clients to end.
func (kl *killLoop) load() {
	t := kl.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopWaiting := context.AfterFunc(ctx, func() {
		kl.mu.Lock()
		kl.cond.Broadcast()
		kl.mu.Unlock()
	})
	defer stopWaiting()
	kl.mu.Lock()
	kl.ops, kl.killNow, kl.failures = 0, make(chan struct{}), nil
	kl.target = 1 + kl.rng.IntN(killMaxOps)
	if kl.rng.IntN(20) == 0 {
		kl.target = 0 // killed while the clients connect
		close(kl.killNow)
	}
	kl.mu.Unlock()
	kl.killed.Store(false)
	var wg sync.WaitGroup
	for p := range killProducers {
		rng := rand.New(rand.NewPCG(kl.rng.Uint64(), uint64(p)))
		wg.Go(func() { kl.produce(ctx, p, rng) })
	}
	for k := range killConsumers {
		rng := rand.New(rand.NewPCG(kl.rng.Uint64(), uint64(100+k)))
		wg.Go(func() { kl.consume(ctx, killQueues[k%len(killQueues)], k, rng) })
	}
	select {
	case <-kl.killNow:
	case <-time.After(time.Minute):
		kl.mu.Lock()
		ops, target := kl.ops, kl.target
		kl.mu.Unlock()
		t.Fatalf("round %d: %d operations answered in a minute, the kill waits for %d", kl.round, ops, target)
	}
	kl.killed.Store(true)
	kl.d.kill()
	cancel()
	wg.Wait()
	kl.checkLogs()
	if len(kl.failures) > 0 {
		t.Fatalf("round %d: clients failed before the kill:\n%s", kl.round, strings.Join(kl.failures, "\n"))
	}
}

// produce stores messages, an eighth of them pages, into queues chosen
// at random, until the connection fails or ctx ends.
func (kl *killLoop) produce(ctx context.Context, p int, rng *rand.Rand) {
	c, err := machq.Dial(ctx, kl.socket, machq.WithInlineThreshold(1024))
	if err != nil {
		kl.fail(fmt.Sprint("producer ", p), err)
		return
	}
	defer c.Close()
	for ctx.Err() == nil {
		q := killQueues[rng.IntN(len(killQueues))]
		page := rng.IntN(8) == 0
		size := 24 + rng.IntN(300)
		if page {
			size = 2048 + rng.IntN(46<<10)
		}
		kl.mu.Lock()
		for kl.live[q] >= killBacklog && ctx.Err() == nil {
			kl.cond.Wait()
		}
		if ctx.Err() != nil {
			kl.mu.Unlock()
			return
		}
		name := killName(p, kl.next[p])
		kl.next[p]++
		m := &kmsg{queue: q, size: size, page: page}
		kl.msgs[name] = m
		kl.live[q]++
		kl.mu.Unlock()
		if _, err := c.Send(ctx, q, killPayload(name, size)); err != nil {
			kl.fail(fmt.Sprintf("producer %d storing %s", p, name), err)
			return
		}
		kl.mu.Lock()
		m.stored = true
		kl.storesAcked++
		if page {
			kl.pages++
		}
		kl.op()
		kl.mu.Unlock()
	}
}

// consume takes from queue in ack mode: it acknowledges most deliveries,
// NAKs some, and now and then holds a few and closes its connection,
// which puts them back.
func (kl *killLoop) consume(ctx context.Context, queue string, k int, rng *rand.Rand) {
	who := fmt.Sprintf("consumer %d of %s", k, queue)
	c, err := machq.Dial(ctx, kl.socket)
	if err != nil {
		kl.fail(who, err)
		return
	}
	defer func() { c.Close() }()
	held := 0
	for ctx.Err() == nil {
		dv, err := c.ReserveWait(ctx, queue, nil)
		if err != nil {
			kl.fail(who, err)
			return
		}
		payload := dv.Bytes()
		kl.mu.Lock()
		bad, m := kl.checkPayload(queue, payload)
		if bad == "" {
			kl.op()
		}
		kl.mu.Unlock()
		dv.Close()
		if bad != "" {
			kl.wrong(who, fmt.Errorf("delivered %s", bad))
			return
		}
		switch r := rng.IntN(100); {
		case r < 6:
			if err := dv.Nak(ctx, time.Millisecond, "again"); err != nil {
				kl.fail(who+" NAKing", err)
				return
			}
			kl.mu.Lock()
			kl.naks++
			kl.op()
			kl.mu.Unlock()
		case r < 10:
			// Hold it; after a few, leave with them.
			if held++; held > rng.IntN(3) {
				c.Close()
				again, err := machq.Dial(ctx, kl.socket)
				if err != nil {
					kl.fail(who+" dialling again", err)
					return
				}
				c = again
				kl.mu.Lock()
				kl.abandoned += held
				kl.mu.Unlock()
				held = 0
			}
		default:
			kl.mu.Lock()
			m.acking = true
			kl.mu.Unlock()
			if err := dv.Ack(ctx); err != nil {
				kl.fail(who+" acknowledging", err)
				return
			}
			kl.mu.Lock()
			m.acking = false
			kl.gone(m, "acknowledged")
			kl.acksAcked++
			kl.op()
			kl.mu.Unlock()
		}
	}
}

// drain takes every message left, checking each against what the peek
// of the last restart found.
func (kl *killLoop) drain() {
	t := kl.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := machq.Dial(ctx, kl.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, q := range killQueues {
		for {
			dv, err := c.Reserve(ctx, q, nil)
			if errors.Is(err, machq.ErrEmpty) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			kl.mu.Lock()
			bad, m := kl.checkPayload(q, dv.Bytes())
			kl.mu.Unlock()
			dv.Close()
			if bad != "" {
				t.Fatalf("draining %s: %s", q, bad)
			}
			if err := dv.Ack(ctx); err != nil {
				t.Fatal(err)
			}
			kl.mu.Lock()
			kl.gone(m, "acknowledged")
			kl.drained++
			kl.mu.Unlock()
		}
	}
	kl.mu.Lock()
	defer kl.mu.Unlock()
	for name, m := range kl.msgs {
		if m.gone == "" {
			t.Errorf("%s was in %s at the last restart and not when draining", name, m.queue)
		}
	}
}

func (kl *killLoop) summary(rounds int, took time.Duration) {
	med := func(ds []time.Duration) (time.Duration, time.Duration) {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2], s[len(s)-1]
	}
	recMed, recMax := med(kl.took)
	readyMed, readyMax := med(kl.ready)
	kl.t.Logf("%d rounds in %v: %d stores acknowledged (%d pages), %d acknowledgements answered, %d NAKs, %d deliveries left with their connection; "+
		"%d messages verified in %d restarts (%d under lossy-interval; %d more killed while recovering), %d drained at the end; in doubt at a kill and then found: %d, gone: %d; torn tails: %d; "+
		"recovery (report) median %v, max %v; start to answering median %v, max %v",
		rounds, took.Round(time.Millisecond), kl.storesAcked, kl.pages, kl.acksAcked, kl.naks, kl.abandoned,
		kl.verified, len(kl.took), kl.lossy, kl.recoveryKills, kl.drained, kl.inDoubtFound, kl.inDoubtGone, kl.tornTails,
		recMed, recMax, readyMed.Round(time.Millisecond), readyMax.Round(time.Millisecond))
}
