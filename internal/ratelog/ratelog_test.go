package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestFloodIsBoundedAndSummarised(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	h := newWithClock(slog.NewTextHandler(&buf, nil), 10, func() time.Time { return now })
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
	now = now.Add(time.Second)
	log.Warn("connection refused", "i", 1000)
	out := buf.String()
	if !strings.Contains(out, "left_out=990") || !strings.Contains(out, `message="connection refused"`) {
		t.Fatalf("the next second's first record came without the summary of what was left out:\n%s", out)
	}
	if strings.Count(out, "i=1000") != 1 {
		t.Fatalf("the new second's record did not pass:\n%s", out)
	}
}
