package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/machq/machq/server"
	"golang.org/x/sys/unix"
)

// TestMemoryBeyondDefaultByteLimit runs the memory test with more large
// messages than the server's default byte limit (half of this machine's
// memory) admits by their declared sizes: the test's server is started
// with limits sized to what it stores, so it passes whatever the
// machine's memory.
func TestMemoryBeyondDefaultByteLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	half := describeMachine().MemoryBytes / 2
	if half <= 0 {
		t.Fatal("no MemTotal in /proc/meminfo")
	}
	n := int(half/largeMessageSize) + 1
	if err := checkDescriptors(n); err != nil {
		t.Skipf("this machine's memory needs %d large messages to pass half of it, more descriptors than its limit allows: %v", n, err)
	}
	cfg := Config{
		Sizes: []int{64}, Time: 10 * time.Millisecond, Rounds: 1, MinIters: 1, Systems: []string{sysMachq},
		SkipThroughput: true, SkipZeroCopy: true, SkipPhases: true, SkipDurable: true, SkipStream: true, Pin: PinUnpinned,
		SmallMessages: 1000, LargeMessages: n, PeerCommand: peerCommand,
	}
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Memory) != 2 {
		t.Fatalf("memory rows: %+v", r.Memory)
	}
	large := r.Memory[1]
	if large.Messages != n || large.PayloadBytes <= half || large.FDs < n {
		t.Errorf("large messages: %d stored (want %d), %d payload bytes (want above %d), %d descriptors open", large.Messages, n, large.PayloadBytes, half, large.FDs)
	}
}

// TestMemoryDescriptorLimit checks that a memory test asking for more
// pages than the descriptor limit allows is refused before it starts,
// naming the flag that sizes it.
func TestMemoryDescriptorLimit(t *testing.T) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Max == unix.RLIM_INFINITY {
		t.Skip("no descriptor limit")
	}
	e := &environment{cfg: &Config{PeerCommand: peerCommand}, dir: t.TempDir(), report: &Report{}}
	defer e.close()
	_, err := e.memoryRun(context.Background(), "memory-large", int(rl.Max), largeMessageSize)
	if err == nil || !strings.Contains(err.Error(), "--large-messages") {
		t.Fatalf("memory test beyond the descriptor limit: %v", err)
	}
	if len(e.peers) != 0 {
		t.Errorf("a server was started for a test that cannot run")
	}
}

// TestPeerLimits checks the limits and the spin a machqd peer reads from
// its arguments: those given are set, the rest keep their defaults, and
// an unknown flag or a stray argument is refused.
func TestPeerLimits(t *testing.T) {
	cfg, err := parseMachqdFlags(memoryLimits(10, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	lim := cfg.Limits
	if cfg.Spin != 0 || cfg.SpinReaders != 0 {
		t.Errorf("spin %v, %d readers, without --spin", cfg.Spin, cfg.SpinReaders)
	}
	held := int64(10 + memoryHeadroom)
	if lim.MaxStoredMessages != held || lim.MaxPrivateMessages != held || lim.MaxStoredPages != held ||
		lim.MaxStoredBytes != held<<20 || lim.MaxPrivateBytes != held<<20 || lim.MaxQueueMessages != 0 || lim.MaxConnections != 0 {
		t.Errorf("limits %+v", lim)
	}
	if cfg, err := parseMachqdFlags(memoryLimits(10, 0)); err != nil || cfg.Limits.MaxStoredBytes != 1 || cfg.Limits.MaxStoredPages != 0 {
		t.Errorf("limits of empty messages: %+v, %v", cfg.Limits, err)
	}
	if cfg, err := parseMachqdFlags([]string{"--spin=" + (50 * time.Microsecond).String(), "--spin-readers", "3"}); err != nil ||
		cfg.Spin != 50*time.Microsecond || cfg.SpinReaders != 3 || cfg.Limits != (server.Limits{}) {
		t.Errorf("--spin 50µs --spin-readers 3: %+v, %v", cfg, err)
	}
	for _, bad := range [][]string{{"--max-nothing", "1"}, {"--max-stored-bytes", "x"}, {"--max-queue-messages", "1", "extra"}, {"--spin", "soon"}} {
		if _, err := parseMachqdFlags(bad); err == nil {
			t.Errorf("flags %q accepted", bad)
		}
	}
}
