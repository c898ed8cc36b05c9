package integration_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/asuser"
	"github.com/machq/machq/internal/clienttest"
)

// impostor runs machqd as uid (another user) on socket, as an impostor
// would put a server where a victim's is expected.
// shared is a directory of sharedDir's, holding the binaries.
func impostor(t *testing.T, uid int, shared, socket string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(shared, "machqd"), "--socket", socket, "--log-level", "info", "--allow-uid", "65534")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	runUntilLogged(t, cmd, "msg=serving")
}

// TestIntegrationClientRefusesImpostor: a server run by another user is
// refused before anything is sent, found by path or by service name,
// unless that user is trusted (WithServerUID, --server-uid); a runtime
// directory another user owns, or that is a link or writable by others,
// is refused for a service name.
func TestIntegrationClientRefusesImpostor(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a server as another user")
	}
	const mallory = 65533
	// The impostor must not be root for the test to mean anything, and
	// root's client trusts only root: so the client here runs as 65534.
	const victim = 65534
	shared := sharedDir(t, 0o755)
	dir := filepath.Join(shared, "run")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, mallory, mallory); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "machq.sock")
	impostor(t, mallory, shared, socket)

	// The library says so with its sentinel, to root's client (which
	// trusts only root) and to the victim's.
	if c, err := machq.Dial(ctxT(t), socket); !errors.Is(err, machq.ErrUntrustedServer) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("root's Dial of uid %d's server: %v; want ErrUntrustedServer", mallory, err)
	}
	if err := asuser.Do(victim, victim, func() error {
		c, err := machq.Dial(ctxT(t), socket)
		if c != nil {
			c.Close()
		}
		return err
	}); !errors.Is(err, machq.ErrUntrustedServer) || !strings.Contains(err.Error(), fmt.Sprint("uid ", mallory)) {
		t.Fatalf("uid %d's Dial of uid %d's server: %v; want ErrUntrustedServer naming the server's uid", victim, mallory, err)
	}
	c, err := machq.Dial(ctxT(t), socket, machq.WithServerUID(mallory))
	if err != nil {
		t.Fatalf("Dial with WithServerUID(%d): %v", mallory, err)
	}
	c.Close()

	run := func(env []string, args ...string) (string, int) {
		c := exec.Command(filepath.Join(shared, "machq"), args...)
		c.Env = env
		c.Stdin = strings.NewReader("secret")
		return runAs(t, c, victim)
	}
	// By path: the server's credentials give it away.
	out, code := run(os.Environ(), "send", "--queue", "q", "--socket", socket)
	if code == 0 || !strings.Contains(out, "untrusted server") || !strings.Contains(out, fmt.Sprint("uid ", mallory)) || !strings.Contains(out, "nothing was sent") {
		t.Fatalf("send to another user's server: exit %d: %s; want a refusal naming its uid", code, out)
	}
	// By name, with the runtime directory another user's.
	env := append(os.Environ(), "MACHQ_RUNTIME_DIR="+dir)
	out, code = run(env, "send", "--queue", "q", "--name", "machq")
	if code == 0 || !strings.Contains(out, "runtime directory") {
		t.Fatalf("send by name through another user's runtime directory: exit %d: %s", code, out)
	}
	// Trusted on purpose, it is reached.
	if out, code := run(os.Environ(), "send", "--queue", "q", "--socket", socket, "--server-uid", fmt.Sprint(mallory)); code != 0 {
		t.Fatalf("send with --server-uid %d: exit %d: %s", mallory, code, out)
	}
	if st := (&daemon{t: t, socket: socket}).stats(machq.WithServerUID(mallory)); st.Messages != 1 {
		t.Fatalf("the trusted server holds %d messages, want 1", st.Messages)
	}

	// The library's own checks, as the victim.
	link := filepath.Join(shared, "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, runtime, want string
	}{
		{"runtime directory a link", link, "symbolic link"},
		{"runtime directory another user's", dir, "belongs to"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := run(append(os.Environ(), "MACHQ_RUNTIME_DIR="+tc.runtime), "stat", "--name", "machq")
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d: %s; want a refusal saying %q", code, out, tc.want)
			}
		})
	}
	// A writable runtime directory of the victim's own.
	writable := filepath.Join(shared, "writable")
	if err := os.Mkdir(writable, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(writable, 0o777); err != nil { // past the umask
		t.Fatal(err)
	}
	if err := os.Chown(writable, victim, victim); err != nil {
		t.Fatal(err)
	}
	if out, code := run(append(os.Environ(), "MACHQ_RUNTIME_DIR="+writable), "stat", "--name", "machq"); code == 0 || !strings.Contains(out, "writable by other users") {
		t.Fatalf("runtime directory writable by others: exit %d: %s", code, out)
	}
}

// TestIntegrationImpostorPrecreatesTempRuntimeDir is the case first
// reported: a user with neither XDG_RUNTIME_DIR nor MACHQ_RUNTIME_DIR,
// whose service sockets therefore live in $TMPDIR/machq-UID, and another
// user who got there first, creating that directory with a server
// listening on machq.sock in it. The victim's machq send (by the default
// service name) must refuse it, exit 1 with one line saying it is an
// untrusted server, whose directory it is and that nothing was sent, and
// the impostor must receive nothing; the library refuses it with
// ErrUntrustedServer.
func TestIntegrationImpostorPrecreatesTempRuntimeDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run processes as other users")
	}
	// The victim must not be root: root's runtime directory is
	// /run/machq, never under TMPDIR.
	const mallory, victim = 65534, 65533
	tmp := sharedDir(t, os.ModeSticky|0o777) // a TMPDIR like /tmp
	dir := filepath.Join(tmp, fmt.Sprint("machq-", victim))
	plantAs(t, mallory, `mkdir -m 0755 "$1"`, dir)
	socket := filepath.Join(dir, "machq.sock")
	srv := exec.Command(filepath.Join(tmp, "machqd"), "--socket", socket, "--log-level", "info", "--allow-uid", fmt.Sprint(victim))
	srv.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: mallory, Gid: mallory}}
	logs := runUntilLogged(t, srv, "msg=serving")

	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MACHQ_RUNTIME_DIR=") && !strings.HasPrefix(kv, "XDG_RUNTIME_DIR=") && !strings.HasPrefix(kv, "TMPDIR=") {
			env = append(env, kv)
		}
	}
	env = append(env, "TMPDIR="+tmp)
	const secret = "the victim's secret"
	send := exec.Command(filepath.Join(tmp, "machq"), "send", "--queue", "q")
	send.Env = env
	send.Stdin = strings.NewReader(secret)
	out, code := runAs(t, send, victim)
	for _, want := range []string{"untrusted server", "runtime directory " + dir, fmt.Sprint("belongs to uid ", mallory), "nothing was sent"} {
		if !strings.Contains(out, want) {
			t.Errorf("machq send's refusal does not say %q", want)
		}
	}
	if code != 1 || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.HasPrefix(out, "machq: ") {
		t.Errorf("machq send to the impostor: exit %d, output:\n%s\nwant exit 1 and one line", code, out)
	}

	// The library, as the victim with the same environment.
	t.Setenv("MACHQ_RUNTIME_DIR", "")
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("TMPDIR", tmp)
	err := asuser.Do(victim, victim, func() error {
		c, err := machq.Dial(ctxT(t), "machq")
		if c != nil {
			c.Send(ctxT(t), "q", []byte(secret))
			c.Close()
		}
		return err
	})
	if !errors.Is(err, machq.ErrUntrustedServer) {
		t.Errorf("the victim's Dial by service name: %v; want ErrUntrustedServer", err)
	}

	// The impostor saw no client, and holds nothing.
	if l := logs.String(); strings.Contains(l, "client connected") || strings.Contains(l, secret) {
		t.Fatalf("the impostor was reached:\n%s", l)
	}
	st := (&daemon{t: t, socket: socket}).stats(machq.WithServerUID(mallory))
	if st.Messages != 0 || len(st.Queues) != 0 || st.Clients != 1 {
		t.Fatalf("the impostor's server: %+v; want nothing stored and only this client", st)
	}
	// It does log a client that reaches it: the check above means something.
	waitFor(t, "the impostor to log the stat client", func() bool { return strings.Contains(logs.String(), "client connected") })
	t.Logf("the victim was told: %s", out)
}

// TestIntegrationRequireDigest: a consumer requiring a digest refuses a
// message stored without one (exit status 5), which stays in the queue
// for a consumer that accepts it, and takes one stored with one.
func TestIntegrationRequireDigest(t *testing.T) {
	d := startDaemon(t, "")
	if r := runCLI(t, strings.NewReader("plain"), "send", "--socket", d.socket, "--queue", "q", "--digest", "none"); r.code != 0 {
		t.Fatalf("send: %+v", r)
	}
	r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "q", "--require-digest")
	if r.code != 5 || !strings.Contains(r.stderr, "carries no digest") || !strings.Contains(r.stderr, "stays in queue q") {
		t.Fatalf("retrieve --require-digest of a message without a digest: %+v; want exit 5 saying it carries none and stays", r)
	}
	if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "q", "--wait", "10s"); r.code != 0 || r.stdout != "plain" {
		t.Fatalf("the refused message, retrieved without --require-digest: %+v", r)
	}
	if r := runCLI(t, strings.NewReader("signed"), "send", "--socket", d.socket, "--queue", "q"); r.code != 0 {
		t.Fatalf("send: %+v", r)
	}
	if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "q", "--require-digest"); r.code != 0 || r.stdout != "signed" {
		t.Fatalf("retrieve --require-digest of a sha256 message: %+v", r)
	}
}

// TestIntegrationDisown: an owned queue is given up by its owner only
// when empty; another user may then create the name.
func TestIntegrationDisown(t *testing.T) {
	const alice, bob = 65534, 65533
	d := sharedDaemon(t, []int{alice, bob}, "--log-level", "warn")
	ctx := ctxT(t)
	a := dialUser(t, d.socket, alice, machq.WithOwnedQueues())
	b := dialUser(t, d.socket, bob, machq.WithOwnedQueues())
	if _, err := a.Send(ctx, "name", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := b.Disown(ctx, "name"); !errors.Is(err, machq.ErrDenied) {
		t.Fatalf("another user's disown: %v; want ErrDenied", err)
	}
	if err := a.Disown(ctx, "name"); !errors.Is(err, machq.ErrInUse) {
		t.Fatalf("disown of a queue holding a message: %v; want ErrInUse", err)
	}
	if _, err := a.Retrieve(ctx, "name"); err != nil {
		t.Fatal(err)
	}
	if err := a.Disown(ctx, "name"); err != nil {
		t.Fatalf("disown of the empty queue: %v", err)
	}
	if _, err := b.Send(ctx, "name", []byte("bob's now")); err != nil {
		t.Fatalf("another user's store after the disown: %v", err)
	}
	if _, err := a.Send(ctx, "name", []byte("x")); !errors.Is(err, machq.ErrDenied) {
		t.Fatalf("the old owner's store into the new owner's queue: %v; want ErrDenied", err)
	}
	// Root may disown any owned queue, with the CLI too.
	clienttest.ExpectMessage(t, ctx, b, "name", "bob's now", "bob's queue")
	if r := runCLI(t, nil, "disown", "--socket", d.socket, "--queue", "name"); r.code != 0 || !strings.Contains(r.stdout, "disowned") {
		t.Fatalf("machq disown as root: %+v", r)
	}
	if _, err := a.Send(ctx, "name", []byte("alice again")); err != nil {
		t.Fatalf("store after root disowned the queue: %v", err)
	}
}
