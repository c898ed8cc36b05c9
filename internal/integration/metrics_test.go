package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machq/machq/internal/metrics/metricstest"
	"github.com/machq/machq/internal/testtool"
)

// scrapeWhenUp scrapes machqd's metrics at addr, waiting until they are
// served.
func scrapeWhenUp(t *testing.T, addr string) metricstest.Families {
	t.Helper()
	var fams metricstest.Families
	var last error
	waitFor(t, "machqd's metrics at "+addr, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		fams, last = metricstest.Scrape(ctx, addr)
		return last == nil
	})
	return fams
}

func wantMetric(t *testing.T, f metricstest.Families, want float64, name string, labels ...string) {
	t.Helper()
	got, ok := f.Value(name, labels...)
	switch {
	case !ok:
		t.Errorf("%s%v: no such series", name, labels)
	case got != want:
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// metricsAddress returns the address machqd says it serves metrics on,
// waiting for the n-th such log line (n from 1).
func metricsAddress(t *testing.T, d *daemon, n int) string {
	t.Helper()
	re := regexp.MustCompile(`msg="serving metrics" address=(\S+)`)
	var addr string
	waitFor(t, "machqd to serve metrics", func() bool {
		m := re.FindAllStringSubmatch(d.logs.String(), -1)
		if len(m) < n {
			return false
		}
		addr = m[n-1][1]
		return true
	})
	return addr
}

// TestIntegrationMetricsUnixSocket scrapes machqd --metrics on a Unix
// socket and checks, with Prometheus's text parser, that requests,
// errors, limit refusals, what the queues hold and the durable log's
// syncs are counted.
func TestIntegrationMetricsUnixSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "metrics.sock")
	d := startDaemon(t, "", "--metrics", sock, "--max-queue-messages", "2", "--data-dir", filepath.Join(dir, "data"), "--log-level", "warn")
	scrapeWhenUp(t, sock)
	for i, refused := range []bool{false, false, true} {
		if r := runCLI(t, strings.NewReader(fmt.Sprint("job ", i)), "send", "--socket", d.socket, "--queue", "jobs"); (r.code != 0) != refused {
			t.Fatalf("send %d exited %d (refusal expected: %v): %s", i, r.code, refused, r.stderr)
		}
	}
	if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "nothing"); r.code == 0 {
		t.Fatal("retrieve of an empty queue succeeded")
	}
	// What the server holds is read at most once a second.
	var f metricstest.Families
	waitFor(t, "the metrics to show queue jobs", func() bool {
		f = scrapeWhenUp(t, sock)
		v, _ := f.Value("machq_queue_messages", "queue", "jobs")
		return v == 2
	})
	wantMetric(t, f, 3, "machq_request_duration_seconds", "op", "STORE")
	wantMetric(t, f, 1, "machq_request_duration_seconds", "op", "RETRIEVE")
	wantMetric(t, f, 1, "machq_errors_total", "code", "LIMIT")
	wantMetric(t, f, 1, "machq_errors_total", "code", "EMPTY")
	wantMetric(t, f, 1, "machq_limit_refusals_total", "limit", "max-queue-messages")
	wantMetric(t, f, 2, "machq_queue_messages", "queue", "jobs")
	wantMetric(t, f, 2, "machq_messages", "state", "in_line")
	wantMetric(t, f, 1, "machq_queues")
	wantMetric(t, f, 2, "machq_limit", "limit", "max-queue-messages")
	wantMetric(t, f, 0, "machq_journal_failed")
	if n, _ := f.Value("machq_journal_sync_duration_seconds"); n < 2 {
		t.Errorf("%v syncs of the durable log after 2 durable stores", n)
	}
	if n, _ := f.Value("process_open_fds"); n < 3 {
		t.Errorf("process_open_fds %v", n)
	}
	st, err := os.Stat(sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("metrics socket: %v, mode %v; want 0600", err, st.Mode())
	}
	d.stop()
	if _, err := os.Lstat(sock); err == nil {
		t.Error("the metrics socket is left after machqd stopped")
	}
}

// TestIntegrationMetricsRefusesOtherHosts checks that machqd will not
// serve its metrics beyond loopback, and says why.
func TestIntegrationMetricsRefusesOtherHosts(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:9477", ":9477"} {
		cmd := exec.Command(bin.machqd, "--socket", filepath.Join(t.TempDir(), "s.sock"), "--metrics", addr)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "loopback") {
			t.Errorf("machqd --metrics %s: %v, %q; want exit 2 asking for a loopback address", addr, err, out)
		}
	}
}

// TestIntegrationMetricsAcrossRestart restarts machqd in place (SIGUSR2)
// while it serves metrics on a TCP port: the successor serves them on
// the same port.
func TestIntegrationMetricsAcrossRestart(t *testing.T) {
	addr := freeLoopbackAddr(t)
	d := startDaemon(t, "", "--metrics", addr)
	metricsAddress(t, d, 1)
	runCLI(t, strings.NewReader("kept"), "send", "--socket", d.socket, "--queue", "kept")
	wantMetric(t, scrapeWhenUp(t, addr), 1, "machq_request_duration_seconds", "op", "STORE")
	if err := d.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	metricsAddress(t, d, 2)
	f := scrapeWhenUp(t, addr)
	wantMetric(t, f, 1, "machq_queue_messages", "queue", "kept")
	wantMetric(t, f, 0, "machq_request_duration_seconds", "op", "STORE") // a new process
}

// freeLoopbackAddr returns a loopback TCP address nothing listens on
// now.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestIntegrationPrometheusScrapesMachqd runs a real Prometheus server
// that scrapes machqd --metrics, and asks it, over its HTTP API, for a
// machq metric.
func TestIntegrationPrometheusScrapesMachqd(t *testing.T) {
	prom := testtool.Path(t, "prometheus", "scripts/install-test-tools.sh installs Debian's prometheus package")
	d := startDaemon(t, "", "--metrics", "127.0.0.1:0")
	target := metricsAddress(t, d, 1)
	for i := range 3 {
		if r := runCLI(t, strings.NewReader(fmt.Sprint("order ", i)), "send", "--socket", d.socket, "--queue", "orders"); r.code != 0 {
			t.Fatalf("send: %s", r.stderr)
		}
	}

	dir := t.TempDir()
	config := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(config, fmt.Appendf(nil, `global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: machqd
    static_configs:
      - targets: [%q]
`, target), 0o644); err != nil {
		t.Fatal(err)
	}
	var api string
	var logs syncBuffer
	var cmd *exec.Cmd
	// The port is chosen free, then taken by Prometheus: another
	// program may take it in between, so a few are tried.
	for try := 0; ; try++ {
		api = freeLoopbackAddr(t)
		cmd = exec.Command(prom, "--config.file="+config, "--storage.tsdb.path="+filepath.Join(dir, fmt.Sprint("data", try)),
			"--web.listen-address="+api, "--log.level=warn")
		logs = syncBuffer{}
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		})
		up := false
		waitFor(t, "Prometheus to serve its API", func() bool {
			select {
			case <-exited:
				return true
			default:
			}
			resp, err := http.Get("http://" + api + "/-/ready")
			if err != nil {
				return false
			}
			resp.Body.Close()
			up = resp.StatusCode == http.StatusOK
			return up
		})
		if up {
			break
		}
		if try == 2 {
			t.Fatalf("Prometheus did not start:\n%s", logs.String())
		}
	}

	var got string
	deadline := time.Now().Add(60 * time.Second)
	for {
		got = promQuery(t, api, `machq_queue_messages{job="machqd",queue="orders"}`)
		if got == "3" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus answers %q for machq_queue_messages{queue=\"orders\"}, want 3; its logs:\n%s", got, logs.String())
		}
		time.Sleep(200 * time.Millisecond) // polling Prometheus's API for its next scrape
	}
	if up := promQuery(t, api, `up{job="machqd"}`); up != "1" {
		t.Errorf("up{job=\"machqd\"} = %q", up)
	}
}

// promQuery runs an instant PromQL query and returns the value of its
// single sample, "" if it has none.
func promQuery(t *testing.T, api, query string) string {
	t.Helper()
	resp, err := http.Get("http://" + api + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Status != "success" {
		t.Fatalf("query %s: %v: %s", query, err, body)
	}
	if len(r.Data.Result) != 1 {
		return ""
	}
	v, _ := r.Data.Result[0].Value[1].(string)
	return v
}
