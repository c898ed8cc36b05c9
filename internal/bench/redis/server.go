package redis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNotInstalled is returned, wrapped, by Start when no redis-server
// executable is on the PATH.
var ErrNotInstalled = errors.New("redis-server is not installed")

const (
	// startTimeout bounds how long Start waits for the server to answer.
	startTimeout = 10 * time.Second
	// stopTimeout bounds how long Close waits after SIGTERM before SIGKILL.
	stopTimeout = 10 * time.Second
	// maxSocketPath is the longest path that fits in a sockaddr_un.
	maxSocketPath = 107
	// logTail is how much of the log an error quotes.
	logTail = 2 << 10
)

// Server is a redis-server process started by Start.
type Server struct {
	cmd     *exec.Cmd
	sock    string
	log     string
	version string
	done    chan struct{} // closed when the process has exited
	waitErr error         // the process's exit status, set before done closes
	stop    sync.Once
	stopErr error
}

// Options configures a server beyond what Start gives every one.
type Options struct {
	// AppendFsyncAlways turns the append-only file on with appendfsync
	// always: every write command is appended to the file and the file
	// fsynced before the command is answered (Redis syncs once per pass
	// of its event loop, for every command that pass ran). Off, the
	// server keeps nothing on disk.
	AppendFsyncAlways bool
	// DataDir, when set, is the server's working directory (--dir), where
	// the append-only file goes; default the directory given to Start. It
	// must exist.
	DataDir string
}

// Start runs redis-server with its Unix socket, working directory and log
// in dir, which must exist, and returns once it answers PING. ctx bounds
// only the start: cancelling it later does not stop the server; Close does.
// The server is also killed if the thread that started it exits, which for
// a Go program means when the program ends. It keeps nothing on disk.
func Start(ctx context.Context, dir string) (*Server, error) {
	return StartWith(ctx, dir, Options{})
}

// StartWith is Start with options: with o.AppendFsyncAlways, a server
// that answers a write only once it is on disk.
func StartWith(ctx context.Context, dir string, o Options) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("%w (install it with: apt-get install redis-server): %v", ErrNotInstalled, err)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	sock := filepath.Join(dir, "redis.sock")
	if len(sock) > maxSocketPath {
		return nil, fmt.Errorf("redis: socket path %s is too long (%d bytes; a Unix socket allows %d): use a shorter directory", sock, len(sock), maxSocketPath)
	}
	dataDir := dir
	if o.DataDir != "" {
		if dataDir, err = filepath.Abs(o.DataDir); err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
	}
	aof := []string{"--appendonly", "no"}
	if o.AppendFsyncAlways {
		aof = []string{"--appendonly", "yes", "--appendfsync", "always"}
	}
	logPath := filepath.Join(dir, "redis.log")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	defer logFile.Close()

	args := []string{
		"--port", "0",
		"--unixsocket", sock,
		"--unixsocketperm", "700",
		"--save", "",
	}
	args = append(args, aof...)
	args = append(args,
		"--dir", dataDir,
		"--daemonize", "no",
		"--proto-max-bulk-len", "512mb",
		"--client-query-buffer-limit", "1gb",
	)
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Its own process group keeps a terminal's ^C for the benchmark, which
	// then stops the server with Close; Pdeathsig stops it if we die.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("redis: starting %s: %w", bin, err)
	}
	s := &Server{cmd: cmd, sock: sock, log: logPath, done: make(chan struct{})}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	if err := s.waitReady(ctx); err != nil {
		s.kill()
		return nil, err
	}
	return s, nil
}

// waitReady polls the socket until the server answers PING, then reads its
// version.
func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	backoff := time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last error
	for {
		select {
		case <-s.done:
			return fmt.Errorf("redis: redis-server exited during start (%v); log:\n%s", s.waitErr, s.logTail())
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return fmt.Errorf("redis: redis-server did not answer PING on %s (%w; last error: %v); log:\n%s", s.sock, ctx.Err(), last, s.logTail())
		case <-timer.C:
		}
		v, err := s.probe(ctx)
		if err == nil {
			s.version = v
			return nil
		}
		last = err
		timer.Reset(backoff)
		backoff = min(2*backoff, 50*time.Millisecond)
	}
}

// probe connects, sends PING and INFO server, and returns the version.
func (s *Server) probe(ctx context.Context) (string, error) {
	deadline, _ := ctx.Deadline()
	t, err := dialNet(s.sock, time.Until(deadline))
	if err != nil {
		return "", err
	}
	defer t.Close()
	if err := t.SetDeadline(deadline); err != nil {
		return "", err
	}
	c := newClient(t)
	r, err := c.do("PING")
	if err != nil {
		return "", err
	}
	if r.kind != kindSimple || string(r.data) != "PONG" {
		return "", fmt.Errorf("redis: PING answered with %q", r.data)
	}
	r, err = c.do("INFO", "server")
	if err != nil {
		return "", err
	}
	if r.kind != kindBulk {
		return "", fmt.Errorf("redis: INFO answered with a %q reply", r.kind)
	}
	for line := range strings.Lines(string(r.data)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return v, nil
		}
	}
	return "", errors.New("redis: INFO server has no redis_version")
}

// Path returns the path of the server's Unix socket.
func (s *Server) Path() string { return s.sock }

// PID returns the server's process ID.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Version returns the server's version, as INFO server's redis_version
// reports it, such as "7.0.15".
func (s *Server) Version() string { return s.version }

// Close stops the server: SIGTERM, then SIGKILL if it has not exited within
// 10 s. It returns once the process has exited and been reaped, with an
// error if it had to be killed or had already exited on its own. Close
// removes nothing; the server itself removes its socket. Calls after the
// first return the first call's result.
func (s *Server) Close() error {
	s.stop.Do(func() { s.stopErr = s.terminate() })
	return s.stopErr
}

// terminate stops the process for Close.
func (s *Server) terminate() error {
	select {
	case <-s.done:
		return fmt.Errorf("redis: redis-server had exited before Close (%v); log:\n%s", s.waitErr, s.logTail())
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.kill()
		return fmt.Errorf("redis: sending SIGTERM to redis-server: %w", err)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-s.done:
		if s.waitErr != nil && !terminated(s.waitErr) {
			return fmt.Errorf("redis: redis-server exited with %v; log:\n%s", s.waitErr, s.logTail())
		}
		return nil
	case <-timer.C:
		s.kill()
		return fmt.Errorf("redis: redis-server did not exit within %v of SIGTERM and was killed; log:\n%s", stopTimeout, s.logTail())
	}
}

// kill sends SIGKILL and waits for the process to be reaped.
func (s *Server) kill() {
	_ = s.cmd.Process.Kill()
	<-s.done
}

// terminated reports whether err is an exit by SIGTERM.
func terminated(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM
}

// logTail returns the last lines of the server's log.
func (s *Server) logTail() string {
	f, err := os.Open(s.log)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	var b []byte
	if fi, err := f.Stat(); err == nil && fi.Size() > logTail {
		if _, err := f.Seek(-logTail, io.SeekEnd); err != nil {
			return "(unreadable log: " + err.Error() + ")"
		}
		b, err = io.ReadAll(f)
		if err != nil {
			return "(unreadable log: " + err.Error() + ")"
		}
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	} else if b, err = io.ReadAll(f); err != nil {
		return "(unreadable log: " + err.Error() + ")"
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return "(log is empty)"
	}
	return string(bytes.TrimRight(b, "\n"))
}
