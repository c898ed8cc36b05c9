package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/internal/wiretest"
)

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func dial(t testing.TB, socket string) *machq.Client {
	t.Helper()
	c, err := machq.Dial(ctxT(t), socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestIntegrationShellPiped(t *testing.T) {
	d := startDaemon(t, "")
	in := "1\nhello, machq\nsend\nsecond line\n2\nretrieve\n2\n9\n3\n"
	r := runCLI(t, strings.NewReader(in), "shell", "--socket", d.socket)
	if r.code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", r.code, r.stderr)
	}
	for _, want := range []string{
		"stored 12 bytes",
		"hello, machq\nintegrity confirmed",
		"second line\nintegrity confirmed",
		"nothing stored: the queue is empty",
		`unknown choice "9"`,
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	// The shell logs each step on stderr, as the original did.
	for _, want := range []string{"connected", "sending", "stored", "received", "integrity confirmed", "nothing stored", "quitting"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	// And so does the server.
	waitFor(t, "server to log the client leaving", func() bool { return strings.Contains(d.logs.String(), "client gone") })
	for _, want := range []string{"client connected", "received a message", "enqueued", "dequeued", "responded", "client gone"} {
		if !strings.Contains(d.logs.String(), want) {
			t.Errorf("server logs lack %q", want)
		}
	}

	// End of input without quit also exits 0; a 10 MB line is one payload.
	big := bytes.Repeat([]byte("x"), 10<<20)
	in2 := "1\n" + string(big) + "\n2\n"
	r = runCLI(t, strings.NewReader(in2), "shell", "--socket", d.socket, "--log-level", "warn")
	if r.code != 0 {
		t.Fatalf("exit %d on end of input; stderr:\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, fmt.Sprintf("stored %d bytes", len(big))) || !strings.Contains(r.stdout, string(big)+"\nintegrity confirmed") {
		t.Errorf("10 MB line did not round trip; stdout has %d bytes", len(r.stdout))
	}
}

func TestIntegrationPrivateQueuesAcrossProcesses(t *testing.T) {
	d := startDaemon(t, "")
	a := startShell(t, d.socket)
	a.send("1", "secret of a")
	a.expect("stored 11 bytes")

	// Another process sees nothing of a's private queue.
	r := runCLI(t, strings.NewReader("2\n3\n"), "shell", "--socket", d.socket)
	if !strings.Contains(r.stdout, "nothing stored") || strings.Contains(r.stdout, "secret") {
		t.Fatalf("second client saw:\n%s", r.stdout)
	}
	// a gets its own message back, verified.
	a.send("2")
	a.expect("secret of a")
	a.expect("integrity confirmed")
	a.send("3")
	<-a.done
}

func TestIntegrationNamedQueueFIFOAcrossProcesses(t *testing.T) {
	d := startDaemon(t, "")
	for i := range 5 {
		r := runCLI(t, strings.NewReader(fmt.Sprintf("message %d", i)), "send", "--socket", d.socket, "--queue", "jobs")
		if r.code != 0 {
			t.Fatalf("send %d: exit %d: %s", i, r.code, r.stderr)
		}
	}
	// A producer process and a consumer process at once, through a shell
	// on a named queue.
	prod := startShell(t, d.socket, "--queue", "jobs")
	prod.send("1", "message 5")
	prod.expect("stored")
	for i := range 6 {
		r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "jobs")
		if r.code != 0 || r.stdout != fmt.Sprintf("message %d", i) {
			t.Fatalf("retrieve %d: exit %d, stdout %q, stderr %s", i, r.code, r.stdout, r.stderr)
		}
	}
	r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "jobs")
	if r.code != 3 || !strings.Contains(r.stderr, "empty") {
		t.Fatalf("empty queue: exit %d, stderr %q; want exit 3 and a message", r.code, r.stderr)
	}

	// A consumer waiting in another process gets a message sent later.
	waiting := exec.Command(bin.machq, "retrieve", "--socket", d.socket, "--queue", "later", "--wait", "60s")
	var out bytes.Buffer
	waiting.Stdout = &out
	if err := waiting.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "consumer to wait", func() bool {
		for _, q := range d.stats().Queues {
			if q.Name == "later" && q.Waiting == 1 {
				return true
			}
		}
		return false
	})
	if r := runCLI(t, strings.NewReader("late"), "send", "--socket", d.socket, "--queue", "later"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	if err := waiting.Wait(); err != nil || out.String() != "late" {
		t.Fatalf("waiting consumer: %v, got %q", err, out.String())
	}
}

func TestIntegrationRoundTripSizes(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	dir := t.TempDir()
	for _, size := range []int{0, 1, 4095, 4096, 4097, 1 << 20, 64 << 20} {
		data := make([]byte, size)
		rand.Read(data)
		in := filepath.Join(dir, fmt.Sprintf("in-%d", size))
		out := filepath.Join(dir, fmt.Sprintf("out-%d", size))
		if err := os.WriteFile(in, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if r := runCLI(t, nil, "send", "--socket", d.socket, "--queue", "sizes", "--file", in); r.code != 0 {
			t.Fatalf("send %d bytes: exit %d: %s", size, r.code, r.stderr)
		}
		if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "sizes", "--out", out); r.code != 0 {
			t.Fatalf("retrieve %d bytes: exit %d: %s", size, r.code, r.stderr)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(got) != sha256.Sum256(data) {
			t.Errorf("%d bytes: digest of the retrieved payload differs", size)
		}
	}
	// And through the library, with stdin piped to send.
	data := make([]byte, 3<<20)
	rand.Read(data)
	if r := runCLI(t, bytes.NewReader(data), "send", "--socket", d.socket, "--queue", "piped"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	c := dial(t, d.socket)
	m, err := c.Retrieve(ctxT(t), "piped")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !m.OutOfLine() || !bytes.Equal(m.Bytes(), data) {
		t.Fatal("piped payload differs or travelled inline")
	}
}

func TestIntegrationZeroCopyKeepsServerMemorySmall(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	c := dial(t, d.socket)
	ctx := ctxT(t)
	before := d.rss()
	const n, size = 8, 64 << 20
	for i := range n {
		p, err := machq.NewPage(size)
		if err != nil {
			t.Fatal(err)
		}
		b := p.Bytes()
		for j := 0; j < len(b); j += 4096 {
			b[j] = byte(i + j)
		}
		if _, err := c.SendPage(ctx, "big", p); err != nil {
			t.Fatal(err)
		}
	}
	st := d.stats()
	if st.Messages != n || st.Bytes != n*size {
		t.Fatalf("stats %+v, want %d messages of %d bytes", st, n, size)
	}
	after := d.rss()
	t.Logf("server RSS %d MiB before, %d MiB with %d MiB stored", before>>20, after>>20, n*size>>20)
	if grown := after - before; grown > 32<<20 {
		t.Fatalf("server RSS grew by %d MiB while storing %d MiB out of line", grown>>20, n*size>>20)
	}
	for i := range n {
		m, err := c.Retrieve(ctx, "big")
		if err != nil {
			t.Fatal(err)
		}
		if m.Bytes()[4096] != byte(i+4096) {
			t.Fatalf("message %d: wrong content", i)
		}
		m.Close()
	}
}

func TestIntegrationKilledClientIsFreed(t *testing.T) {
	d := startDaemon(t, "")
	baseline := d.idleFDs()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server fds:\n%s", strings.Join(d.fdList(), "\n"))
		}
	})
	sh := startShell(t, d.socket, "--log-level", "warn")
	line := strings.Repeat("p", machq.DefaultInlineThreshold+1) // a page each
	for range 100 {
		sh.send("1", line)
	}
	waitFor(t, "100 pages stored", func() bool { return d.stats().Messages == 100 })
	if got := d.fds(); got < baseline+100 {
		t.Fatalf("server holds %d fds with 100 pages stored, baseline %d", got, baseline)
	}
	sh.cmd.Process.Signal(syscall.SIGKILL)
	<-sh.done
	waitFor(t, "server fds back to baseline", func() bool { return d.fds() == baseline })
	// The stat clients used above may still be leaving; once they have,
	// only the one asking remains, and nothing is stored.
	var st *machq.Stats
	waitFor(t, "stat to show only itself", func() bool { st = d.stats(); return st.Clients == 1 })
	if st.Messages != 0 || st.Bytes != 0 {
		t.Fatalf("after SIGKILL stats = %+v, want no messages", st)
	}
	if !strings.Contains(d.logs.String(), "private queue freed") || !strings.Contains(d.logs.String(), "messages=100") {
		t.Errorf("server did not log freeing 100 messages:\n%s", d.logs)
	}
}

func TestIntegrationBadPagesRefused(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	baseline := d.idleFDs() + 2 // and the two connections below
	other := dial(t, d.socket)
	ctx := ctxT(t)
	if _, err := other.Send(ctx, "", []byte("bystander data")); err != nil {
		t.Fatal(err)
	}
	raw := wiretest.DialHello(t, d.socket)

	unsealed, _ := page.Create("unsealed")
	page.Write(unsealed, []byte("abc"))
	raw.Write(wire.AppendStore(nil, 1, wire.Store{Size: 3, Queue: []byte("q")}, nil, true), unsealed)
	unix.Close(unsealed)
	if msg := raw.ExpectError(wire.CodeBadPage); !strings.Contains(msg, "not sealed") {
		t.Errorf("unsealed: %q", msg)
	}

	pr, pw, _ := os.Pipe()
	raw.Write(wire.AppendStore(nil, 2, wire.Store{Size: 3, Queue: []byte("q")}, nil, true), int(pr.Fd()))
	pr.Close()
	pw.Close()
	if msg := raw.ExpectError(wire.CodeBadPage); !strings.Contains(msg, "pipe") {
		t.Errorf("pipe: %q", msg)
	}

	sealed, _ := page.Create("sealed")
	page.Write(sealed, []byte("abc"))
	page.Seal(sealed)
	raw.Write(wire.AppendStore(nil, 3, wire.Store{Size: 4, Queue: []byte("q")}, nil, true), sealed)
	unix.Close(sealed)
	if msg := raw.ExpectError(wire.CodeBadPage); !strings.Contains(msg, "holds 3 bytes, request declared 4") {
		t.Errorf("size mismatch: %q", msg)
	}

	waitFor(t, "the server to hold only its listener and the two connections", func() bool { return d.fds() == baseline })
	m, err := other.Retrieve(ctx, "")
	if err != nil || string(m.Bytes()) != "bystander data" {
		t.Fatalf("bystander: %v", err)
	}
	m.Close()
}

func TestIntegrationServerRestart(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "restart.sock")
	d := startDaemon(t, socket, "--log-level", "warn")
	c, err := machq.Dial(ctxT(t), socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sh := startShell(t, socket)
	sh.send("1", "before restart")
	sh.expect("stored")

	d.stop()
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file left after SIGTERM: %v", err)
	}
	_, err = c.Send(ctxT(t), "", []byte("x"))
	if !errors.Is(err, machq.ErrClosed) || !strings.Contains(err.Error(), "Dial again") {
		t.Fatalf("send after the server stopped: %v; want ErrClosed telling to dial again", err)
	}
	if _, err := machq.Dial(ctxT(t), socket); !errors.Is(err, machq.ErrNoServer) {
		t.Fatalf("dial with no server: %v, want ErrNoServer", err)
	}

	startDaemon(t, socket, "--log-level", "warn")
	c2, err := machq.Dial(ctxT(t), socket)
	if err != nil {
		t.Fatalf("reconnect: %v", err)
	}
	defer c2.Close()
	if _, err := c2.Send(ctxT(t), "", []byte("after")); err != nil {
		t.Fatal(err)
	}
	// The shell notices, says so, reconnects and carries on.
	sh.send("2")
	sh.expect("connection lost")
	sh.expect("reconnected")
	sh.expect("nothing stored")
	sh.send("1", "after restart", "2")
	sh.expect("after restart")
	sh.expect("integrity confirmed")
}

func TestIntegrationNameCheckIn(t *testing.T) {
	rt := t.TempDir()
	t.Setenv("MACHQ_RUNTIME_DIR", rt)
	socket := filepath.Join(rt, "svc.sock")

	// Started by name, reachable by name.
	cmd := exec.Command(bin.machqd, "--name", "svc", "--log-level", "warn")
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitFor(t, "server by name", func() bool {
		c, err := net.Dial("unix", socket)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if r := runCLI(t, strings.NewReader("by name"), "send", "--name", "svc", "--queue", "n"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	if r := runCLI(t, nil, "retrieve", "--name", "svc", "--queue", "n"); r.stdout != "by name" {
		t.Fatalf("retrieve by name: %+v", r)
	}

	// A second server under the same name refuses to start.
	r2 := exec.Command(bin.machqd, "--name", "svc")
	out, err := r2.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") || !strings.Contains(string(out), fmt.Sprint(cmd.Process.Pid)) {
		t.Fatalf("second server: %v, %s; want a refusal naming pid %d", err, out, cmd.Process.Pid)
	}

	// A server that died leaves a stale socket; the next one replaces it.
	cmd.Process.Kill()
	<-exited
	if _, err := os.Stat(socket); err != nil {
		t.Fatalf("expected a stale socket file after SIGKILL: %v", err)
	}
	d := startDaemon(t, socket, "--log-level", "warn")
	// The replacement serves, and starts empty.
	if st := d.stats(); st.Messages != 0 || len(st.Queues) != 0 {
		t.Fatalf("stats from the replacement server: %+v", st)
	}
}

func TestIntegrationSocketActivation(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "activated.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	// LISTEN_PID must name the server itself: set it in a shell that then
	// execs machqd, as the service manager does.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=machq exec "$0" --socket /nonexistent/ignored.sock`, bin.machqd)
	cmd.ExtraFiles = []*os.File{f}
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := <-exited; err != nil {
			t.Errorf("activated machqd exited with %v; logs:\n%s", err, &logs)
		}
		// The manager owns the socket file: the server leaves it.
		if _, err := os.Stat(socket); err != nil {
			t.Errorf("socket activation: server removed the manager's socket: %v", err)
		}
	}()

	c := dial(t, socket)
	ctx := ctxT(t)
	if _, err := c.Send(ctx, "act", []byte("activated")); err != nil {
		t.Fatalf("send through the activated socket: %v\n%s", err, &logs)
	}
	m, err := c.Retrieve(ctx, "act")
	if err != nil || string(m.Bytes()) != "activated" {
		t.Fatalf("retrieve: %v", err)
	}
	m.Close()
	if !strings.Contains(logs.String(), "service manager") {
		t.Errorf("server did not log using the inherited socket:\n%s", &logs)
	}
}

func TestIntegrationCLIErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nobody.sock")
	absent := filepath.Join(t.TempDir(), "absent.bin")
	type errCase struct {
		name string
		args []string
		code int
		want string
	}
	cases := []errCase{
		{"no server", []string{"stat", "--socket", missing}, 4, "no server"},
		{"bad flag", []string{"stat", "--bogus"}, 2, "unknown flag --bogus"},
		{"bad flag of send", []string{"send", "--queue", "q", "--bogus", "1"}, 2, "'machq send --help'"},
		{"flag without value", []string{"retrieve", "--queue"}, 2, "--queue needs a value"},
		{"unexpected argument", []string{"stat", "extra"}, 2, `unexpected argument "extra"`},
		{"missing queue", []string{"retrieve", "--socket", missing}, 2, "--queue is required"},
		{"bad queue name", []string{"send", "--socket", missing, "--queue", "no/slashes"}, 2, "[A-Za-z0-9._-]"},
		{"unknown command", []string{"frobnicate"}, 2, "unknown command"},
		{"bad service name", []string{"stat", "--name", "bad name"}, 2, "--name"},
		{"service name with a slash", []string{"stat", "--name", "bad/name"}, 2, `--name: service name "bad/name"`},
		{"bad log level", []string{"stat", "--socket", missing, "--log-level", "loud"}, 2, "--log-level"},
		{"bad digest", []string{"send", "--socket", missing, "--queue", "q", "--digest", "md5"}, 2, "--digest"},
		{"a sender's flag on stat", []string{"stat", "--socket", missing, "--digest", "sha256"}, 2, "--digest"},
		{"wait garbage", []string{"retrieve", "--socket", missing, "--queue", "q", "--wait", "garbage"}, 2, `--wait "garbage": not a duration`},
		{"wait without unit", []string{"retrieve", "--socket", missing, "--queue", "q", "--wait", "5"}, 2, "500ms"},
		{"negative wait", []string{"retrieve", "--socket", missing, "--queue", "q", "--wait", "-1s"}, 2, "--wait -1s: must not be negative"},
		{"negative inline", []string{"send", "--socket", missing, "--queue", "q", "--inline", "-4"}, 2, "--inline -4"},
		{"inline too large", []string{"send", "--socket", missing, "--queue", "q", "--inline", "9999999"}, 2, "--inline 9999999"},
		{"inline not a number", []string{"shell", "--socket", missing, "--inline", "4k"}, 2, `--inline "4k": not a whole number`},
		{"bad bool", []string{"stat", "--socket", missing, "--json=maybe"}, 2, "--json"},
		{"file missing", []string{"send", "--socket", missing, "--queue", "q", "--file", absent}, 1, "--file " + absent + ": no such file"},
		{"load bad clients", []string{"load", "--clients", "-3"}, 2, "--clients -3"},
		{"bench bad time", []string{"bench", "--time", "0s"}, 2, "--time"},
		{"help of unknown command", []string{"help", "frobnicate"}, 2, "unknown command"},
	}
	d := startDaemon(t, "", "--log-level", "warn")
	cases = append(cases, errCase{"bad queue name with server", []string{"retrieve", "--socket", d.socket, "--queue", "a b"}, 2, "queue name"})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, strings.NewReader(""), tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", r.code, r.stderr, tc.code, tc.want)
			}
			// One line: what is wrong and what to do, perhaps followed by
			// one short line saying where the usage is. Never the whole
			// flag listing, and nothing on stdout.
			lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
			if len(lines) > 2 || len(lines) == 2 && (len(lines[1]) > 80 || !strings.Contains(lines[1], "help")) {
				t.Errorf("error is %d lines, want one (or one and a hint):\n%s", len(lines), r.stderr)
			}
			if !strings.HasPrefix(lines[0], "machq") {
				t.Errorf("error does not start with machq: %q", lines[0])
			}
			for _, leak := range []string{"Usage", "flag provided", "parse error", "naming:", "-bogus\n"} {
				if strings.Contains(r.stderr, leak) {
					t.Errorf("stderr has %q: %q", leak, r.stderr)
				}
			}
			if r.stdout != "" {
				t.Errorf("stdout on an error: %q", r.stdout)
			}
		})
	}
	// An --out that cannot be written is refused before the message is
	// taken: it stays in the queue.
	if r := runCLI(t, strings.NewReader("keep"), "send", "--socket", d.socket, "--queue", "kept"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "kept", "--out", filepath.Join(t.TempDir(), "missing", "f"))
	if r.code != 1 || !strings.Contains(r.stderr, "--out") {
		t.Fatalf("retrieve to an unwritable --out: exit %d, %q", r.code, r.stderr)
	}
	if r := runCLI(t, nil, "stat", "--socket", d.socket, "--json"); r.code != 0 || !strings.Contains(r.stdout, `"clients":`) || !strings.Contains(r.stdout, `"queues":[{"name":"kept","messages":1,"bytes":4`) {
		t.Fatalf("stat --json: %+v", r)
	}
	if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "kept"); r.stdout != "keep" {
		t.Fatalf("message lost after a failed --out: %+v", r)
	}
	out, err := exec.Command(bin.machqd, "--log-level", "loud").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--log-level") {
		t.Fatalf("machqd with a bad flag: %v, %s", err, out)
	}
}

func TestIntegrationShellWarnsOfTampering(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	// A client that lies about the digest of what it stores.
	raw := wiretest.DialHello(t, d.socket)
	bogus := bytes.Repeat([]byte{0xEE}, 32)
	raw.Write(wire.AppendStore(nil, 1, wire.Store{Size: 8, DigestAlg: wire.DigestSHA256, Digest: bogus, Queue: []byte("shared")}, []byte("tampered"), false))
	if f := raw.Read(); f.Op != wire.OpStored {
		t.Fatalf("store: %s", f.Op)
	}
	r := runCLI(t, strings.NewReader("2\n3\n"), "shell", "--socket", d.socket, "--queue", "shared")
	if r.code != 0 || !strings.Contains(r.stdout, "tampered\nWARNING: integrity check failed") || strings.Contains(r.stdout, "integrity confirmed") {
		t.Fatalf("shell on a tampered message: exit %d\n%s", r.code, r.stdout)
	}
	// Not acknowledged, not lost: a dead letter, with its reason.
	if !strings.Contains(r.stdout, "the message was moved to the dead-letter queue shared.dlq") {
		t.Errorf("the shell does not say where the tampered message went:\n%s", r.stdout)
	}
	deadLetters := func(n int) {
		t.Helper()
		q := counts(t, d, "shared")
		dlq, ok := cliQueue(t, d, "shared.dlq")
		if q.Messages != 0 || q.Delivered != uint64(n) || q.Acked != 0 || q.DeadLettered != uint64(n) || !ok || dlq.Messages != n {
			t.Fatalf("after %d tampered messages: shared %+v, shared.dlq %+v (listed %v); want each dead-lettered, none acknowledged", n, q, dlq, ok)
		}
		p := runCLI(t, nil, "peek", "--socket", d.socket, "--queue", "shared.dlq", "--list")
		if got := strings.Count(p.stdout, "terminated (after 1)"); got != n || strings.Count(p.stdout, "integrity check failed") != n {
			t.Fatalf("peek --list of shared.dlq shows %d terminated messages, want %d, each saying its integrity check failed:\n%s", got, n, p.stdout)
		}
	}
	deadLetters(1)
	// The scriptable retrieve refuses it with its own exit status.
	raw.Write(wire.AppendStore(nil, 2, wire.Store{Size: 8, DigestAlg: wire.DigestSHA256, Digest: bogus, Queue: []byte("shared")}, []byte("tampered"), false))
	raw.Read()
	r = runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "shared")
	if r.code != 5 || r.stdout != "" || !strings.Contains(r.stderr, "WARNING") || !strings.Contains(r.stderr, "moved to the dead-letter queue shared.dlq") {
		t.Fatalf("retrieve of a tampered message: exit %d, stdout %q, stderr %q; want 5, nothing, a warning saying where it went", r.code, r.stdout, r.stderr)
	}
	deadLetters(2)
	// Both go back to the queue from the dead-letter queue.
	if r := runCLI(t, nil, "kick", "--socket", d.socket, "--queue", "shared"); r.code != 0 || !strings.Contains(r.stdout, "2 dead letters moved") {
		t.Fatalf("kick: %+v", r)
	}
	if r := runCLI(t, nil, "peek", "--socket", d.socket, "--queue", "shared", "--list"); r.code != 0 || strings.Count(r.stdout, "\n") != 3 {
		t.Fatalf("peek --list after the kick: %+v; want both messages back", r)
	}
}

// TestDaemonLimitFlags checks that machqd's limit flags take effect and
// that the CLI reports a refusal in one line naming the flag.
func TestDaemonLimitFlags(t *testing.T) {
	d := startDaemon(t, "", "--max-queue-messages", "2")
	for i := range 2 {
		if r := runCLI(t, strings.NewReader("job"), "send", "--socket", d.socket, "--queue", "jobs"); r.code != 0 {
			t.Fatalf("send %d: exit %d: %s", i, r.code, r.stderr)
		}
	}
	r := runCLI(t, strings.NewReader("one too many"), "send", "--socket", d.socket, "--queue", "jobs")
	if r.code != 6 || !strings.Contains(r.stderr, "--max-queue-messages") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Fatalf("third send: exit %d, stderr %q; want 6 (refused by a limit) and one line naming --max-queue-messages", r.code, r.stderr)
	}
	if st := d.stats(); st.Messages != 2 {
		t.Fatalf("server holds %d messages after the refusal, want 2", st.Messages)
	}
}

// TestIntegrationLoadWithKills runs machq load at a reduced size: client
// processes store and retrieve through private and named queues while a
// quarter of them are killed with SIGKILL; every survivor's messages must
// come back exactly once, and the server must return to idle. scripts/load.sh
// runs the full size.
func TestIntegrationLoadWithKills(t *testing.T) {
	if testing.Short() {
		t.Skip("runs dozens of processes")
	}
	r := runCLI(t, nil, "load", "--clients", "16", "--messages", "150", "--max-size", "2097152",
		"--kill", "0.25", "--kill-window", "50ms", "--json", "--quiet")
	var rep struct {
		Clients, Killed, Survivors, Losses, Duplicates int
		Failures                                       []string
		Messages                                       int64
		Baseline, After                                struct {
			FDs        int   `json:"fds"`
			Goroutines int   `json:"goroutines"`
			Messages   int64 `json:"messages"`
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("machq load exited %d, output not a report: %v\n%s\n%s", r.code, err, r.stdout, r.stderr)
	}
	if r.code != 0 || rep.Losses != 0 || rep.Duplicates != 0 || len(rep.Failures) != 0 {
		t.Fatalf("machq load exited %d: %d lost, %d duplicated, failures %q", r.code, rep.Losses, rep.Duplicates, rep.Failures)
	}
	if rep.Killed < 1 || rep.Survivors+rep.Killed != 16 {
		t.Errorf("%d killed, %d survived of 16", rep.Killed, rep.Survivors)
	}
	if want := int64(rep.Survivors) * 150; rep.Messages != want {
		t.Errorf("survivors stored %d messages, want %d", rep.Messages, want)
	}
	if rep.After.FDs > rep.Baseline.FDs || rep.After.Goroutines > rep.Baseline.Goroutines || rep.After.Messages != 0 {
		t.Errorf("server not back to idle: before %+v, after %+v", rep.Baseline, rep.After)
	}
}

// TestIntegrationSigtermUnderLoad sends machqd SIGTERM while client
// processes store and retrieve: every answer a client received before the
// server stopped is whole and right (no loss, no duplicate, no
// half-written frame), machqd exits 0, and its socket file is gone.
func TestIntegrationSigtermUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs dozens of processes")
	}
	d := startDaemon(t, "")
	r := runCLI(t, nil, "load", "--socket", d.socket, "--clients", "12", "--messages", "400", "--max-size", "1048576",
		"--kill", "0.1", "--kill-window", "1s", "--sigterm", "150ms", "--json", "--quiet")
	var rep struct {
		Losses, Duplicates, Stopped int
		Failures                    []string
		ServerExited                bool `json:"server_exited"`
		SocketRemoved               bool `json:"socket_removed"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("machq load exited %d, output not a report: %v\n%s\n%s", r.code, err, r.stdout, r.stderr)
	}
	if r.code != 0 || rep.Losses != 0 || rep.Duplicates != 0 || len(rep.Failures) != 0 || !rep.ServerExited || !rep.SocketRemoved {
		t.Fatalf("SIGTERM under load: exit %d, report %+v", r.code, rep)
	}
	<-d.exited
	if d.err != nil {
		t.Fatalf("machqd exited with %v after SIGTERM under load; logs:\n%s", d.err, d.logs)
	}
	t.Logf("%d clients stopped by the shutdown", rep.Stopped)
}

// TestIntegrationShellNeverGluesLogsToPayloads: with the shell's stdout
// and stderr one stream, as on a terminal, a payload that does not end
// its line is ended before anything else is written or logged, and one
// that does gets no blank line.
func TestIntegrationShellNeverGluesLogsToPayloads(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	store(t, d.socket, "lines", []byte("no newline"))
	store(t, d.socket, "lines", []byte("ends its line\n"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin.machq, "shell", "--socket", d.socket, "--queue", "lines", "--log-level", "info")
	cmd.Stdin = strings.NewReader("2\n2\n3\n")
	var both syncBuffer
	cmd.Stdout, cmd.Stderr = &both, &both
	if err := cmd.Run(); err != nil {
		t.Fatalf("shell: %v\n%s", err, both.String())
	}
	out := both.String()
	if !strings.Contains(out, "no newline\n") {
		t.Errorf("a payload without a newline was not ended before what follows:\n%s", out)
	}
	if !strings.Contains(out, "ends its line\n") || strings.Contains(out, "ends its line\n\n") {
		t.Errorf("a payload ending its line was not followed by exactly its own newline:\n%s", out)
	}
}
