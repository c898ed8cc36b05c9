package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"
)

// ErrAddress reports a --metrics address that is refused: neither a
// loopback TCP address nor a Unix socket path.
var ErrAddress = errors.New("metrics: serve on a loopback address (127.0.0.1:PORT, [::1]:PORT, localhost:PORT) or a Unix socket path")

// CheckAddr reports whether addr is an address metrics may be served on:
// a Unix socket path (it has a slash) or host:port with a loopback host.
// Every local user can read metrics served on TCP (queue names, user ids,
// counts; never a payload), so they are not offered to other hosts: a
// scraper elsewhere goes through a proxy its operator controls.
func CheckAddr(addr string) error {
	if strings.Contains(addr, "/") {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrAddress, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%w; %q is not loopback", ErrAddress, host)
	}
	return nil
}

// Listen opens the listener of addr (see CheckAddr). A Unix socket is
// made readable and writable by the server's user alone. A stale socket
// file at the path (one nothing listens on, of the same owner) is
// replaced; any other file there is an error.
func Listen(addr string) (net.Listener, error) {
	if err := CheckAddr(addr); err != nil {
		return nil, err
	}
	if !strings.Contains(addr, "/") {
		return net.Listen("tcp", addr)
	}
	l, err := net.Listen("unix", addr)
	if errors.Is(err, syscall.EADDRINUSE) && stale(addr) {
		os.Remove(addr)
		l, err = net.Listen("unix", addr)
	}
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(addr, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// stale reports whether path is a socket of this process's user that
// nothing listens on.
func stale(path string) bool {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket {
		return false
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != uint32(os.Geteuid()) {
		return false
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// Serve serves the metrics on l, at /metrics, until ctx ends; then it
// closes l (and removes a Unix socket's file) and returns nil. It
// returns the error that stops it otherwise.
func (m *Metrics) Serve(ctx context.Context, l net.Listener, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, "machqd serves its metrics at /metrics\n")
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	srv.Shutdown(shut)
	<-errc
	return nil
}
