package integration_test

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestIntegrationLoadAckWithKills runs machq load --ack at a reduced
// size: producer processes store into three shared queues, consumer
// processes take the messages in acknowledged delivery, holding up to
// four at once, and a quarter of the consumers are killed with SIGKILL
// while they hold deliveries. Every message stored must be acknowledged
// exactly once, those the killed consumers held by other consumers as
// redeliveries; a consumer may see a smaller sequence number after a
// larger one only for a redelivery; the server's acknowledgements must
// match the consumers' and leave no message queued or pending, nothing
// dead-lettered, and its descriptors and goroutines back to idle.
// scripts/load.sh --ack runs the full size.
func TestIntegrationLoadAckWithKills(t *testing.T) {
	if testing.Short() {
		t.Skip("runs dozens of processes")
	}
	const consumers, producers, messages = 40, 8, 250
	r := runCLI(t, nil, "load", "--ack", "--clients", "40", "--producers", "8", "--messages", "250",
		"--queues", "3", "--credit", "4", "--max-size", "2097152",
		"--kill", "0.25", "--kill-window", "300ms", "--json", "--quiet")
	var rep struct {
		Clients, Killed, Survivors, Losses, Duplicates int
		Failures                                       []string
		Messages                                       int64
		Ack                                            struct {
			Victims, Spared, Held, Mismatches int
			Acked, Acks, Redelivered, Behind  int64
			OrderViolations                   int      `json:"order_violations"`
			ServerAcked                       int64    `json:"server_acked"`
			ServerRedelivered                 int64    `json:"server_redelivered"`
			ServerDeadLettered                int64    `json:"server_dead_lettered"`
			Stalled                           bool     `json:"stalled"`
			QueuesLeft                        []string `json:"queues_left"`
			Problems                          []string `json:"problems"`
		}
		Baseline, After struct {
			FDs        int   `json:"fds"`
			Goroutines int   `json:"goroutines"`
			Messages   int64 `json:"messages"`
			Pending    int64 `json:"pending"`
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("machq load --ack exited %d, output not a report: %v\n%s\n%s", r.code, err, r.stdout, r.stderr)
	}
	a := rep.Ack
	if r.code != 0 || rep.Losses != 0 || rep.Duplicates != 0 || len(rep.Failures) != 0 || a.Mismatches != 0 ||
		a.OrderViolations != 0 || a.Stalled || len(a.QueuesLeft) != 0 {
		t.Fatalf("machq load --ack exited %d: %d lost, %d duplicated, %d mismatched, %d out of order, stalled %v, failures %q, left %q, problems %q",
			r.code, rep.Losses, rep.Duplicates, a.Mismatches, a.OrderViolations, a.Stalled, rep.Failures, a.QueuesLeft, a.Problems)
	}
	if rep.Clients != consumers+producers || rep.Survivors+rep.Killed != rep.Clients {
		t.Errorf("%d processes, %d killed, %d survived; want %d in all", rep.Clients, rep.Killed, rep.Survivors, consumers+producers)
	}
	if a.Victims != consumers/4 || rep.Killed+a.Spared != a.Victims || rep.Killed < 1 || a.Held < rep.Killed {
		t.Errorf("%d consumers chosen to be killed, %d killed holding %d deliveries, %d spared", a.Victims, rep.Killed, a.Held, a.Spared)
	}
	if rep.Messages != producers*messages || a.Acked != rep.Messages || a.Acks != rep.Messages || a.ServerAcked != rep.Messages {
		t.Errorf("%d stored, %d acknowledged in %d acks, %d by the server's count; want %d each", rep.Messages, a.Acked, a.Acks, a.ServerAcked, producers*messages)
	}
	// Each held delivery went back to its queue and was delivered again
	// (a message may be held by more than one killed consumer in turn).
	if a.Redelivered < 1 || a.ServerRedelivered < int64(a.Held) || a.ServerRedelivered < a.Redelivered || a.ServerDeadLettered != 0 {
		t.Errorf("%d held, %d acknowledged as redeliveries, %d redeliveries by the server's count, %d dead letters",
			a.Held, a.Redelivered, a.ServerRedelivered, a.ServerDeadLettered)
	}
	if rep.After.FDs > rep.Baseline.FDs || rep.After.Goroutines > rep.Baseline.Goroutines || rep.After.Messages != 0 || rep.After.Pending != 0 {
		t.Errorf("server not back to idle: before %+v, after %+v", rep.Baseline, rep.After)
	}
	t.Logf("%d killed holding %d deliveries; %d redelivered, %d behind a later message", rep.Killed, a.Held, a.Redelivered, a.Behind)
}

// TestIntegrationLoadAckUsage: machq load --ack refuses what it cannot
// run, in one line naming the flag, before starting anything.
func TestIntegrationLoadAckUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--sigterm", "1s"}, "--ack and --sigterm"},
		{[]string{"--producers", "0"}, "--producers 0"},
		{[]string{"--queues", "-1"}, "--queues -1"},
		{[]string{"--clients", "3", "--queues", "4"}, "--clients 3"},
		{[]string{"--credit", "0"}, "--credit 0"},
	} {
		r := runCLI(t, nil, append([]string{"load", "--ack"}, tc.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) || r.stdout != "" || strings.Count(strings.TrimSpace(r.stderr), "\n") > 1 {
			t.Errorf("load --ack %q: exit %d, stdout %q, stderr %q; want 2 and a line mentioning %q", tc.args, r.code, r.stdout, r.stderr, tc.want)
		}
	}
}
