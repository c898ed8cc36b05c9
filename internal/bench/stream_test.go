package bench

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/machq/machq"
)

// TestStreamFrames checks that fill writes every byte of a frame and that
// check reads every byte: a frame filled over garbage checks, and one
// byte changed anywhere, a frame of another number or of another length
// does not.
func TestStreamFrames(t *testing.T) {
	for _, size := range []int{1, 8, 9, 4096} {
		f := newStreamFrames(size)
		b := bytes.Repeat([]byte{0xa5}, size)
		f.fill(b, 7)
		if err := f.check(b, 7); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if size > 1 {
			if err := f.check(b, 8); err == nil {
				t.Errorf("size %d: frame 7 passed for frame 8", size)
			}
		}
		for _, i := range []int{0, size / 2, size - 1} {
			c := bytes.Clone(b)
			c[i] ^= 1
			if err := f.check(c, 7); err == nil {
				t.Errorf("size %d: a change at byte %d passed", size, i)
			}
		}
		if err := f.check(b[:size-1], 7); err == nil {
			t.Errorf("size %d: a short frame passed", size)
		}
	}
}

// TestStream runs the streaming part alone, small, with its producer and
// consumer in processes of their own, and checks its figures: every
// round of both variants measured, medians and their ratio, and the text
// and JSON reports.
func TestStream(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server and client processes")
	}
	const frames, rounds = 12, 3
	cfg := Config{
		Sizes: []int{64}, Time: 10 * time.Millisecond, Rounds: rounds, MinIters: 1, Systems: []string{sysMachq},
		SkipThroughput: true, SkipZeroCopy: true, SkipPhases: true, SkipMemory: true, SkipDurable: true,
		StreamSize: 1 << 20, StreamFrames: frames, Pin: PinUnpinned, PeerCommand: peerCommand,
	}
	var progress bytes.Buffer
	cfg.Progress = &progress
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := r.Stream
	if s == nil {
		t.Fatalf("no stream figures; notes %q", r.Notes)
	}
	if s.Size != 1<<20 || s.Frames != frames || s.Rounds != rounds || s.QueueDepth != streamQueueDepth || s.Target != StreamTarget {
		t.Errorf("stream %+v", s)
	}
	if len(s.Variants) != 2 || s.Variants[0].Variant != StreamPage || s.Variants[1].Variant != StreamSend {
		t.Fatalf("variants %+v", s.Variants)
	}
	for _, v := range s.Variants {
		if len(v.Runs) != rounds {
			t.Errorf("%s: %d runs, want %d", v.Variant, len(v.Runs), rounds)
		}
		var rates []float64
		for i, run := range v.Runs {
			if run.Round != i+1 || run.Elapsed <= 0 || run.Producer <= 0 || run.PerSecond <= 0 {
				t.Errorf("%s: run %+v", v.Variant, run)
			}
			if want := frames / time.Duration(run.Elapsed).Seconds(); run.PerSecond != want {
				t.Errorf("%s: %v frames/s for %d frames in %v", v.Variant, run.PerSecond, frames, run.Elapsed)
			}
			rates = append(rates, run.PerSecond)
		}
		if v.PerSecond != median(rates) || v.MBps != v.PerSecond*(1<<20)/1e6 {
			t.Errorf("%s: %v frames/s, %v MB/s from rounds %v", v.Variant, v.PerSecond, v.MBps, rates)
		}
	}
	if want := s.Variants[0].PerSecond / s.Variants[1].PerSecond; s.Ratio != want {
		t.Errorf("ratio %v, want %v", s.Ratio, want)
	}
	if !strings.Contains(progress.String(), "stream 1 MiB: page ") {
		t.Errorf("no summary line in the progress:\n%s", progress.String())
	}

	back, _, js := checkReport(t, r,
		`streaming 12 frames of 1 MiB`,
		`^ +page +NewPage \+ fill Bytes\(\) \+ SendPage +\d+ +\S+ +\d+ \d+ \d+`,
		`^ +send +fill a reused \[\]byte \+ Send +\d+ +\S+ +\d+ \d+ \d+`,
		`^page over send: \d+\.\d\d \(target 1\.30 or more: (met|missed)\)`,
	)
	if back.Stream == nil || back.Stream.Ratio != s.Ratio || len(back.Stream.Variants[1].Runs) != rounds {
		t.Errorf("JSON report does not read back the stream")
	}
	for _, key := range []string{`"ratio_page_to_send"`, `"frames_per_s"`} {
		if !strings.Contains(js, key) {
			t.Errorf("JSON report lacks %s", key)
		}
	}
}

// TestStreamConsumerChecks runs a stream consumer process against a
// server in the test and sends it frames out of order: it reports the
// frame that came in another's place on its control socket.
func TestStreamConsumerChecks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a client process")
	}
	ctx := context.Background()
	path := startServer(t)
	e := &environment{cfg: &Config{PeerCommand: peerCommand}}
	const size = 100 << 10
	cons, err := e.startStreamPeer(ctx, peerStreamConsumer, path, "q", "102400", "3", "none")
	if err != nil {
		t.Fatal(err)
	}
	defer cons.stop()
	if err := cons.begin(); err != nil {
		t.Fatal(err)
	}
	c, err := machq.Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f := newStreamFrames(size)
	for _, i := range []int{0, 2, 1} {
		b := make([]byte, size)
		f.fill(b, i)
		if _, err := c.Send(ctx, "q", b); err != nil {
			t.Fatal(err)
		}
	}
	_, err = cons.result(ctx, time.Now().Add(time.Minute))
	if err == nil || !strings.Contains(err.Error(), "frame 1: another frame came in its place") {
		t.Fatalf("consumer of frames out of order: %v", err)
	}
}

// TestStreamPeerFails checks that a stream peer that cannot connect
// fails to start, saying why, and that one stopped before its stream
// ends reports no result.
func TestStreamPeerFails(t *testing.T) {
	if testing.Short() {
		t.Skip("starts client processes")
	}
	ctx := context.Background()
	e := &environment{cfg: &Config{PeerCommand: peerCommand}}
	missing := filepath.Join(t.TempDir(), "none.sock")
	if p, err := e.startStreamPeer(ctx, peerStreamProducer, missing, "q", "64", "1", "none", StreamPage); err == nil {
		p.stop()
		t.Fatal("a producer without a server started")
	}

	cons, err := e.startStreamPeer(ctx, peerStreamConsumer, startServer(t), "q", "64", "1", "none")
	if err != nil {
		t.Fatal(err)
	}
	if err := cons.begin(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := cons.result(ctx, time.Now().Add(time.Minute))
		done <- err
	}()
	cons.stop() // it waits for a frame that never comes
	select {
	case err := <-done:
		if err == nil {
			t.Error("a consumer stopped before its frame reported a result")
		}
	case <-time.After(time.Minute):
		t.Fatal("the wait for a stopped consumer's result did not end")
	}
}
