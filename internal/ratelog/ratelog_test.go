package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

func TestFloodIsBoundedAndSummarised(t *testing.T) {
	var buf bytes.Buffer
	// The clock is read by the summary's timer too, on a goroutine of
	// its own.
	var clock atomic.Int64
	clock.Store(1000)
	h := newWithClock(slog.NewTextHandler(&lockedWriter{w: &buf}, nil), 10, func() time.Time { return time.Unix(clock.Load(), 0) })
	log := slog.New(h).With("conn", 1)
	for i := range 1000 {
		log.Warn("connection refused", "i", i)
	}
	log.Info("other message")
	if n := strings.Count(buf.String(), "connection refused"); n != 10 {
		t.Fatalf("%d of 1000 records passed in one second, want 10:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "other message") {
		t.Fatal("another message was held back by the first one's flood")
	}
	buf.Reset()
	clock.Add(1)
	log.Warn("connection refused", "i", 1000)
	out := buf.String()
	if !strings.Contains(out, "left_out=990") || !strings.Contains(out, `message="connection refused"`) {
		t.Fatalf("the next second's first record came without the summary of what was left out:\n%s", out)
	}
	if strings.Count(out, "i=1000") != 1 {
		t.Fatalf("the new second's record did not pass:\n%s", out)
	}
}

// TestSummaryComesWithoutALaterRecord: once the second of a flood is
// over, its summary is written even if nothing is logged after it.
func TestSummaryComesWithoutALaterRecord(t *testing.T) {
	out := &lockedWriter{w: new(bytes.Buffer)}
	log := slog.New(New(slog.NewTextHandler(out, nil), 5))
	for i := range 50 {
		log.Warn("closing connection: protocol violation", "i", i)
	}
	if n := strings.Count(out.String(), "protocol violation\" i="); n != 5 {
		t.Fatalf("%d of 50 records passed, want 5:\n%s", n, out.String())
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "left_out=45") {
		if time.Now().After(deadline) {
			t.Fatalf("no summary of the 45 records left out 5 s after the flood:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
