package loadtest

import (
	"strings"
	"testing"
)

func TestLoadAckObservationRoundTrip(t *testing.T) {
	for _, o := range []observation{
		{queue: 3, seq: 1 << 40, producer: 17, number: 1999, deliveries: 1},
		{held: true, queue: 0, seq: 2, producer: 0, number: 0, deliveries: 20},
	} {
		line := string(o.append(nil))
		if !strings.HasSuffix(line, "\n") {
			t.Fatalf("%q does not end its line", line)
		}
		got, err := parseObservation(strings.TrimSuffix(line, "\n"))
		if err != nil || got != o {
			t.Fatalf("%q parsed as %+v, %v; want %+v", line, got, err, o)
		}
	}
	for _, bad := range []string{"", "held", "x 1 2 3 4 5", "a 1 2 3 4", "a 1 2 3 4 z"} {
		if _, err := parseObservation(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestLoadAckPayload(t *testing.T) {
	q1, s1 := ackShape(7, 3, 99, 8, 1<<20)
	q2, s2 := ackShape(7, 3, 99, 8, 1<<20)
	if q1 != q2 || s1 != s2 || q1 < 0 || q1 >= 8 || s1 < 16 || s1 > 1<<20 {
		t.Fatalf("ackShape: %d %d then %d %d", q1, s1, q2, s2)
	}
	b := make([]byte, 300)
	fill(b, 3, 99)
	if !matches(b, 3, 99) {
		t.Fatal("a filled payload does not match")
	}
	if matches(b, 3, 98) || matches(b, 2, 99) || matches(b[:15], 3, 99) {
		t.Fatal("a payload matches another message")
	}
	b[200]++
	if matches(b, 3, 99) {
		t.Fatal("a changed payload matches")
	}
}

// TestLoadAckOrderCheck: a first delivery behind one seen is a violation; a
// redelivery behind is counted; the same message twice is a violation.
func TestLoadAckOrderCheck(t *testing.T) {
	var c orderCheck
	steps := []struct {
		seq        uint64
		deliveries int
		bad        bool
	}{
		{5, 1, false},
		{9, 1, false},
		{7, 2, false}, // a redelivery behind 9
		{10, 1, false},
		{8, 1, true},  // a first delivery behind 10
		{10, 2, true}, // 10 again
		{11, 3, false},
	}
	for i, s := range steps {
		got := c.observe(observation{seq: s.seq, deliveries: s.deliveries})
		if (got != "") != s.bad {
			t.Fatalf("step %d (#%d, delivery %d): %q", i, s.seq, s.deliveries, got)
		}
	}
	if c.behind != 1 {
		t.Fatalf("behind %d, want 1", c.behind)
	}
}

// TestLoadAckTally: the checks at the end of a run find a loss, a duplicate, a
// message out of its producer's order, one in the wrong queue, and a
// held delivery acknowledged as a first delivery, and pass a run with
// none of them.
func TestLoadAckTally(t *testing.T) {
	const seed, queues, maxSize = 1, 2, 1 << 10
	cfg := Config{Seed: seed, Queues: queues, MaxSize: maxSize}
	obs := func(p, n int, seq uint64, deliveries int) observation {
		q, _ := ackShape(seed, p, n, queues, maxSize)
		return observation{queue: q, seq: seq, producer: p, number: n, deliveries: deliveries}
	}
	run := func(edit func(l *ledger, victim *ackProc)) *Report {
		rep := &Report{Ack: &AckReport{}, Clients: 3}
		l := newLedger(1, 4, rep.Ack)
		producer := &ackProc{name: RoleProducer, report: &ClientReport{Stored: 4}}
		victim := &ackProc{name: RoleConsumer, id: 1, victim: true, killed: true}
		survivor := &ackProc{name: RoleConsumer, id: 2}
		seqs := make([]uint64, queues)
		for n := range 4 {
			o := obs(0, n, 0, 1)
			seqs[o.queue]++
			o.seq = seqs[o.queue]
			if n == 2 {
				o.held = true
				victim.held = append(victim.held, o)
				o.held, o.deliveries = false, 2
			}
			if edit == nil || n != 3 {
				l.ack(survivor.id, o)
			}
		}
		if edit != nil {
			edit(l, victim)
		}
		tally(cfg, rep, l, []*ackProc{producer}, []*ackProc{victim, survivor})
		return rep
	}
	rep := run(nil)
	if rep.Losses != 0 || rep.Duplicates != 0 || rep.Ack.Mismatches != 0 || rep.Ack.OrderViolations != 0 ||
		rep.Ack.Held != 1 || rep.Killed != 1 || rep.Survivors != 2 || rep.Ack.Acked != 4 || rep.Ack.Redelivered != 1 {
		t.Fatalf("a good run: %+v %+v", rep, rep.Ack)
	}
	if rep := run(func(*ledger, *ackProc) {}); rep.Losses != 1 {
		t.Errorf("message 3 not acknowledged: %d losses", rep.Losses)
	}
	if rep := run(func(l *ledger, _ *ackProc) {
		l.ack(2, obs(0, 3, 100, 1))
		l.ack(3, obs(0, 3, 100, 1))
	}); rep.Duplicates != 1 || rep.Ack.Acks != 5 || rep.Ack.Acked != 4 {
		t.Errorf("message 3 acknowledged twice: %d duplicates, %d acks of %d messages", rep.Duplicates, rep.Ack.Acks, rep.Ack.Acked)
	}
	if rep := run(func(l *ledger, _ *ackProc) { l.ack(2, obs(0, 3, 0, 1)) }); rep.Ack.OrderViolations != 1 {
		t.Errorf("message 3 before the others in its queue: %d order violations", rep.Ack.OrderViolations)
	}
	if rep := run(func(l *ledger, _ *ackProc) {
		o := obs(0, 3, 100, 1)
		o.queue = 1 - o.queue
		l.ack(2, o)
	}); rep.Ack.Mismatches != 1 {
		t.Errorf("message 3 from the wrong queue: %d mismatches", rep.Ack.Mismatches)
	}
	if rep := run(func(l *ledger, victim *ackProc) {
		l.ack(2, obs(0, 3, 100, 1))
		o := obs(0, 3, 100, 1)
		o.held = true
		victim.held = append(victim.held, o)
	}); rep.Ack.Mismatches != 1 {
		t.Errorf("a held message acknowledged at its first delivery: %d mismatches", rep.Ack.Mismatches)
	}
	if rep := run(func(l *ledger, _ *ackProc) {
		l.ack(2, obs(0, 3, 100, 1))
		l.ack(2, observation{producer: 5, number: 0, deliveries: 1})
	}); rep.Ack.Mismatches != 1 {
		t.Errorf("a message never stored acknowledged: %d mismatches", rep.Ack.Mismatches)
	}
}
