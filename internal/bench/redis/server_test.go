package redis

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machq/machq/internal/testtool"
)

// startServer starts a redis-server for t in a short temporary directory,
// skipping t when redis-server is not installed (see package testtool).
func startServer(t testing.TB) *Server {
	t.Helper()
	dir := shortTempDir(t)
	s, err := Start(context.Background(), dir)
	if errors.Is(err, ErrNotInstalled) {
		testtool.Missing(t, "redis-server", "scripts/install-redis.sh, or apt-get install redis-server")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// shortTempDir returns a directory short enough for a Unix socket path,
// which t.TempDir's long names may not be.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// dial opens a Client on s, closed when t ends.
func dial(t testing.TB, s *Server) *Client {
	t.Helper()
	c, err := Dial(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// waitFor polls cond with a short backoff until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	backoff := 100 * time.Microsecond
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so after %v", what, d)
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 20*time.Millisecond)
	}
}

func TestServerVersion(t *testing.T) {
	s := startServer(t)
	if !regexp.MustCompile(`^\d+\.\d+\.\d+`).MatchString(s.Version()) {
		t.Errorf("Version() = %q, want a version number", s.Version())
	}
	if s.PID() <= 0 {
		t.Errorf("PID() = %d", s.PID())
	}
	t.Logf("redis-server %s, pid %d, socket %s", s.Version(), s.PID(), s.Path())
}

func TestServerConfig(t *testing.T) {
	s := startServer(t)
	c := dial(t, s)
	for section, want := range map[string][]string{
		"server":      {"tcp_port:0\r\n"},
		"persistence": {"aof_enabled:0\r\n"},
	} {
		r, err := c.do("INFO", section)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if !bytes.Contains(r.data, []byte(w)) {
				t.Errorf("INFO %s lacks %q:\n%s", section, w, r.data)
			}
		}
	}
}

// TestServerAppendFsyncAlways starts a server with its append-only file
// synced always, in a data directory of its own: Redis says so, and a
// payload Push has stored is in a file of that directory when Push
// returns.
func TestServerAppendFsyncAlways(t *testing.T) {
	startServer(t) // skips when not installed
	dir, data := shortTempDir(t), t.TempDir()
	s, err := StartWith(context.Background(), dir, Options{AppendFsyncAlways: true, DataDir: data})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	c := dial(t, s)
	r, err := c.do("INFO", "persistence")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(r.data, []byte("aof_enabled:1\r\n")) {
		t.Errorf("INFO persistence lacks aof_enabled:1:\n%s", r.data)
	}
	r, err = c.do("CONFIG", "GET", "appendfsync")
	if err != nil {
		t.Fatal(err)
	}
	if r.kind != kindArray || r.n != 2 {
		t.Fatalf("CONFIG GET appendfsync: a %q reply of %d", r.kind, r.n)
	}
	// The array's elements follow as replies of their own.
	var got []string
	for range 2 {
		e, err := c.rd.next()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(e.data))
	}
	if got[1] != "always" {
		t.Errorf("CONFIG GET appendfsync = %q, want always", got)
	}
	want := []byte("durable-payload-0123456789")
	if err := c.Push(want); err != nil {
		t.Fatal(err)
	}
	found := false
	filepath.WalkDir(data, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, want) {
				found = true
			}
		}
		return nil
	})
	if !found {
		t.Errorf("no file of the data directory %s holds the payload Push stored", data)
	}
	if _, err := os.Stat(filepath.Join(dir, "redis.sock")); err != nil {
		t.Errorf("the socket is not in %s: %v", dir, err)
	}
}

func TestServerCloseEndsProcess(t *testing.T) {
	dir := shortTempDir(t)
	s, err := Start(context.Background(), dir)
	if errors.Is(err, ErrNotInstalled) {
		testtool.Missing(t, "redis-server", "scripts/install-redis.sh, or apt-get install redis-server")
	}
	if err != nil {
		t.Fatal(err)
	}
	pid := s.PID()
	c, err := Dial(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RoundTrip([]byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	waitFor(t, 10*time.Second, "redis-server process gone", func() bool {
		return !isRedisProcess(pid)
	})
	if _, err := os.Stat(s.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Close: %v", err)
	}
	if _, err := Dial(s.Path()); err == nil {
		t.Error("Dial after Close succeeded")
	}
}

func TestServerCloseAfterCrash(t *testing.T) {
	startServer(t) // skips when not installed
	s, err := Start(context.Background(), shortTempDir(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(s.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = s.Close()
	if err == nil {
		t.Fatal("Close of a killed server reported no error")
	}
	t.Log(err)
	if isRedisProcess(s.PID()) {
		t.Error("redis-server still running")
	}
}

// isRedisProcess reports whether pid is a live process running
// redis-server: an existing pid that is a zombie or another program (the pid
// reused) does not count.
func isRedisProcess(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// pid (comm) state ...
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	if stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return false
	}
	return bytes.Contains(stat[:i], []byte("redis-server"))
}

func TestStartNotInstalled(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := Start(context.Background(), t.TempDir())
	if !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("Start with no redis-server on PATH: %v, want ErrNotInstalled", err)
	}
	if !strings.Contains(err.Error(), "apt-get install redis-server") {
		t.Errorf("error %q does not say how to install redis-server", err)
	}
}

func TestStartFailureQuotesLog(t *testing.T) {
	startServer(t) // skips when not installed
	dir := shortTempDir(t)
	// A directory where the socket should go makes listening fail.
	if err := os.Mkdir(filepath.Join(dir, "redis.sock"), 0o700); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := Start(context.Background(), dir)
	if err == nil {
		t.Fatal("Start succeeded with a directory in the socket's place")
	}
	t.Logf("Start failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if !strings.Contains(err.Error(), "exited") || !strings.Contains(strings.ToLower(err.Error()), "unix socket") {
		t.Errorf("error does not report the exit and quote the log: %v", err)
	}
}

func TestStartCanceled(t *testing.T) {
	startServer(t) // skips when not installed
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Start(ctx, shortTempDir(t))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Start with a cancelled context: %v, want context.Canceled", err)
	}
}

func TestStartSocketPathTooLong(t *testing.T) {
	startServer(t) // skips when not installed
	dir := filepath.Join(shortTempDir(t), strings.Repeat("d", 120))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := Start(context.Background(), dir)
	if err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("Start with a %d-byte directory: %v, want a too-long error", len(dir), err)
	}
}
