package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/testtool"
)

// TestIntegrationSystemdBoot runs machqd under the units of
// contrib/systemd as they ship, sandboxing included, in a real systemd:
// systemd-nspawn boots the host's systemd as PID 1 of a container with a
// fresh tmpfs root and the host's /usr (--volatile=yes), the units in its
// /etc/systemd/system and the machqd and machq built for the tests as its
// /usr/local/bin. Inside, as the README installs them: systemctl enable
// --now machqd.socket; the first client starts machqd (socket activation),
// which systemd counts as started only on its READY=1 (Type=notify);
// systemctl reload restarts it in place (same pid), systemctl restart
// starts a new one that finds the durable queue in StateDirectory, and
// systemctl stop ends it with exit status 0. The running machqd is checked
// to be under the sandbox: no new privileges, no capabilities, seccomp
// filters, its own network and UTS namespaces, the file system read-only
// but for its state directory, /home and /root hidden, private /tmp and
// /dev. Then a drop-in makes the queues but d-* memory-only, with
// --fd-store (systemd before 254 does not set $FDSTORE): a memory-only
// queue must survive systemctl reload (handed across execve) and
// systemctl restart (parked in the file descriptor store), still
// sandboxed. Last, the drop-in contrib/systemd/metrics.conf serves
// metrics on loopback, which a client in the container scrapes.
//
// It needs root, systemd-nspawn (Debian's systemd-container) and nsenter.
func TestIntegrationSystemdBoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to boot systemd in a container with systemd-nspawn")
	}
	nspawn := testtool.Path(t, "systemd-nspawn", "apt-get install systemd-container")
	nsenter := testtool.Path(t, "nsenter", "apt-get install util-linux")
	if _, err := os.Stat("/usr/lib/systemd/systemd"); err != nil {
		testtool.Missing(t, "systemd", "apt-get install systemd")
	}

	c := bootContainer(t, nspawn, nsenter)

	// Installed as the README says.
	c.run("systemctl", "enable", "--now", "machqd.socket")
	c.expect("machqd.socket", map[string]string{"ActiveState": "active", "SubState": "listening"})
	c.expect("machqd.service", map[string]string{"ActiveState": "inactive"})

	// The first client starts machqd; a plain machq finds the socket by
	// the default service name.
	if out := c.machq("", "stat"); !strings.Contains(out, "/run/machq/machq.sock") {
		t.Fatalf("machq stat in the container:\n%s", out)
	}
	// ActiveState=active of a Type=notify service: READY=1 came, and
	// with it the status.
	c.expect("machqd.service", map[string]string{
		"ActiveState": "active", "SubState": "running", "StatusText": "serving",
		"NRestarts": "0", "Type": "notify",
		// The unit's sandbox as systemd read it.
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
		"PrivateTmp": "yes", "PrivateDevices": "yes", "PrivateNetwork": "yes",
		"MemoryDenyWriteExecute": "yes", "RestrictAddressFamilies": "AF_UNIX",
		"RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
		"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
		"ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
		"ProtectHostname": "yes", "SystemCallArchitectures": "native",
		"CapabilityBoundingSet": "", "UMask": "0077", "StateDirectory": "machq",
		"WatchdogUSec": "30s", "Restart": "on-failure",
		"RuntimeDirectory": "machq", "RuntimeDirectoryPreserve": "yes", "RuntimeDirectoryMode": "0700",
	})
	pid := c.mainPID()
	c.checkSandbox(pid, true)

	c.machq("durable-1", "send", "--queue", "jobs")
	c.reload(pid)
	c.run("systemctl", "restart", "machqd.service")
	c.expect("machqd.service", map[string]string{"ActiveState": "active", "StatusText": "serving"})
	if p := c.mainPID(); p == pid {
		t.Fatalf("systemctl restart kept pid %d", p)
	}
	if got := c.machq("", "retrieve", "--queue", "jobs"); got != "durable-1" {
		t.Fatalf("after systemctl restart, retrieve from the durable queue gave %q, want %q", got, "durable-1")
	}
	c.run("systemctl", "stop", "machqd.service")
	c.expectStopped()

	// Memory-only queues across reload and restart.
	dropIn := filepath.Join(c.units, "machqd.service.d")
	if err := os.Mkdir(dropIn, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := "[Service]\nExecStart=\nExecStart=/usr/local/bin/machqd --log-level warn --data-dir ${STATE_DIRECTORY} --durable d-* --fd-store 16384\n"
	if err := os.WriteFile(filepath.Join(dropIn, "fd-store.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	c.run("systemctl", "daemon-reload")
	c.machq("mem-1", "send", "--queue", "mem")
	c.machq("durable-2", "send", "--queue", "d-jobs")
	pid = c.mainPID()
	c.checkSandbox(pid, true)
	c.reload(pid)
	c.checkSandbox(pid, true)
	c.machq("mem-2", "send", "--queue", "mem")
	c.run("systemctl", "restart", "machqd.service")
	c.expect("machqd.service", map[string]string{"ActiveState": "active", "StatusText": "serving"})
	if p := c.mainPID(); p == pid {
		t.Fatalf("systemctl restart kept pid %d", p)
	}
	for _, q := range []struct{ queue, want string }{{"mem", "mem-1"}, {"mem", "mem-2"}, {"d-jobs", "durable-2"}} {
		if got := c.machq("", "retrieve", "--queue", q.queue); got != q.want {
			t.Fatalf("after systemctl reload and restart, retrieve from %s gave %q, want %q", q.queue, got, q.want)
		}
	}
	c.run("systemctl", "stop", "machqd.service")
	c.expectStopped()

	// Metrics with the shipped drop-in, on loopback only, still
	// sandboxed but for the network.
	b, err := os.ReadFile(filepath.Join("..", "..", "contrib", "systemd", "metrics.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dropIn, "fd-store.conf")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dropIn, "metrics.conf"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	c.run("systemctl", "daemon-reload")
	c.machq("metered", "send", "--queue", "metered")
	c.expect("machqd.service", map[string]string{"ActiveState": "active", "StatusText": "serving",
		"PrivateNetwork": "no", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "NoNewPrivileges": "yes"})
	var page string
	waitFor(t, "machqd's metrics in the container", func() bool {
		out, err := c.command(10*time.Second, "", "python3", "-c",
			"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9477/metrics', timeout=5).read().decode())")
		page = out
		return err == nil
	})
	if !strings.Contains(page, "\nmachq_queue_messages{queue=\"metered\"} 1\n") {
		t.Fatalf("the metrics served in the container lack machq_queue_messages of queue metered:\n%s", page)
	}
	c.checkSandbox(c.mainPID(), false)

	c.run("systemctl", "stop", "machqd.service", "machqd.socket")
	c.expectStopped()
	c.expect("machqd.socket", map[string]string{"ActiveState": "inactive"})
	var warnings []string
	for line := range strings.Lines(c.run("journalctl", "--no-pager", "-o", "cat", "-p", "warning", "-u", "machqd.service")) {
		// systemd in a container sometimes cannot write its cgroup's
		// cgroup.kill (EIO) after the service has exited, and says it
		// ignores that: the container's, not machqd's.
		if strings.Contains(line, "Failed to kill control group") && strings.Contains(line, "ignoring") {
			continue
		}
		if strings.TrimSpace(line) != "" {
			warnings = append(warnings, line)
		}
	}
	if len(warnings) > 0 {
		t.Errorf("the journal has warnings about machqd.service:\n%s", strings.Join(warnings, ""))
	}
}

// container is a systemd booted by systemd-nspawn for a test.
type container struct {
	t       *testing.T
	nsenter string
	leader  int    // the container's PID 1, as the host sees it
	units   string // the host directory that is its /etc/systemd/system
	console *syncBuffer
}

// bootContainer boots systemd in a container and waits until its startup
// is done. The container is halted, or killed, when the test ends.
func bootContainer(t *testing.T, nspawn, nsenter string) *container {
	t.Helper()
	dir := t.TempDir()
	c := &container{t: t, nsenter: nsenter, units: filepath.Join(dir, "system"), console: &syncBuffer{}}
	if err := os.Mkdir(c.units, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"machqd.socket", "machqd.service"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "contrib", "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.units, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var id [4]byte
	rand.Read(id[:])
	name := "machq-test-" + hex.EncodeToString(id[:])
	cmd := exec.Command(nspawn,
		"--quiet", "--console=read-only",
		// The host's /usr under an empty tmpfs root.
		"--directory=/", "--volatile=yes",
		// No machined or D-Bus needed on the host.
		"--register=no", "--keep-unit",
		// Its own network namespace, in which it may configure lo.
		"--private-network",
		"--machine="+name,
		"--bind="+c.units+":/etc/systemd/system",
		"--bind-ro="+filepath.Dir(bin.machqd)+":/usr/local/bin",
		"--boot", "--",
		// Only what basic.target pulls in; no first-boot wizard or presets.
		"systemd.unit=basic.target", "systemd.condition-first-boot=false")
	cmd.Stdout, cmd.Stderr = c.console, c.console
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// SIGTERM makes systemd-nspawn ask the container's systemd to
		// halt; a container that does not is killed.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			if waitErr != nil {
				t.Errorf("systemd-nspawn after halting the container: %v", waitErr)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("the container did not halt within 30s of SIGTERM; killing it")
			if c.leader > 0 {
				syscall.Kill(c.leader, syscall.SIGKILL)
			}
			cmd.Process.Kill()
			<-exited
		}
		// systemd-nspawn leaves this directory behind when /run is not a
		// tmpfs.
		os.RemoveAll(filepath.Join("/run/systemd/nspawn/propagate", name))
		if t.Failed() {
			t.Logf("container console:\n%s", c.console)
		}
	})

	// The container's PID 1 is systemd-nspawn's child once it has
	// executed systemd.
	deadline := time.Now().Add(30 * time.Second)
	for c.leader == 0 {
		select {
		case <-exited:
			t.Fatalf("systemd-nspawn exited: %v\n%s", waitErr, c.console)
		default:
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		for _, f := range strings.Fields(string(b)) {
			p, _ := strconv.Atoi(f)
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); strings.TrimSpace(string(comm)) == "systemd" {
				c.leader = p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no systemd in the container within 30s\n%s", c.console)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// systemctl can connect once systemd listens on its private socket;
	// --wait then waits for the end of startup.
	for {
		out, err := c.command(10*time.Second, "", "systemctl", "is-system-running", "--wait")
		state := strings.TrimSpace(out)
		if state == "running" {
			break
		}
		if state == "degraded" {
			// A unit of the host's /usr that cannot work here is no
			// concern of machqd's.
			failed, _ := c.command(10*time.Second, "", "systemctl", "--failed", "--no-legend", "--plain")
			t.Logf("the container's systemd is degraded; failed units:\n%s", failed)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container's systemd did not finish starting within 30s: %q %v", state, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return c
}

// command runs argv in the container's namespaces with a clean
// environment, stdin as its standard input, and returns its standard
// output; it is killed after timeout.
func (c *container) command(timeout time.Duration, stdin string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := append([]string{"--target", strconv.Itoa(c.leader), "--mount", "--pid", "--uts", "--ipc", "--net", "--"}, argv...)
	cmd := exec.CommandContext(ctx, c.nsenter, args...)
	cmd.Env = []string{
		"PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LC_ALL=C", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=",
		"GORACE=atexit_sleep_ms=0",
	}
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%v: %w\n%s", argv, err, stderr.String())
	}
	return stdout.String(), err
}

// run runs argv in the container and fails the test if it fails.
func (c *container) run(argv ...string) string {
	c.t.Helper()
	out, err := c.command(40*time.Second, "", argv...)
	if err != nil {
		c.journal()
		c.t.Fatal(err)
	}
	return out
}

// machq runs the CLI in the container with stdin and returns its output.
func (c *container) machq(stdin string, args ...string) string {
	c.t.Helper()
	out, err := c.command(30*time.Second, stdin, append([]string{"machq"}, args...)...)
	if err != nil {
		c.journal()
		c.t.Fatal(err)
	}
	return out
}

// journal logs what the container's journal holds about machqd.
func (c *container) journal() {
	c.t.Helper()
	out, _ := c.command(10*time.Second, "", "journalctl", "--no-pager", "-u", "machqd.service", "-u", "machqd.socket")
	c.t.Logf("journal of machqd:\n%s", out)
}

// show returns unit's properties.
func (c *container) show(unit string, props ...string) map[string]string {
	c.t.Helper()
	out := c.run(append([]string{"systemctl", "show", unit}, func() []string {
		var a []string
		for _, p := range props {
			a = append(a, "-p", p)
		}
		return a
	}()...)...)
	m := map[string]string{}
	for line := range strings.Lines(out) {
		if k, v, ok := strings.Cut(strings.TrimSuffix(line, "\n"), "="); ok {
			m[k] = v
		}
	}
	return m
}

// expect fails the test unless unit has the properties want.
func (c *container) expect(unit string, want map[string]string) {
	c.t.Helper()
	var props []string
	for k := range want {
		props = append(props, k)
	}
	slices.Sort(props)
	got := c.show(unit, props...)
	for _, k := range props {
		if v, ok := got[k]; !ok || v != want[k] {
			c.journal()
			c.t.Fatalf("%s: %s=%q, want %q", unit, k, v, want[k])
		}
	}
}

// reload runs systemctl reload machqd.service and waits until machqd,
// pid, has restarted in place: a connection made before ends, and the
// status is "serving" again. systemctl returns once ExecReload has sent
// SIGUSR2, which may be before the restart ends: machqd does not send
// RELOADING=1, so systemd has no READY=1 to wait for.
func (c *container) reload(pid int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The container's socket, reached from here through its root.
	watch, err := machq.Dial(ctx, fmt.Sprintf("/proc/%d/root/run/machq/machq.sock", c.leader))
	if err != nil {
		c.t.Fatal(err)
	}
	defer watch.Close()
	if _, err := watch.Stat(ctx); err != nil {
		c.t.Fatal(err)
	}
	c.run("systemctl", "reload", "machqd.service")
	waitFor(c.t, "systemctl reload to end the connection", func() bool {
		_, err := watch.Stat(ctx)
		return err != nil
	})
	waitFor(c.t, "machqd to serve again after systemctl reload", func() bool {
		return c.show("machqd.service", "StatusText")["StatusText"] == "serving"
	})
	c.expect("machqd.service", map[string]string{"ActiveState": "active", "SubState": "running", "MainPID": strconv.Itoa(pid)})
}

// expectStopped fails the test unless machqd.service stopped cleanly:
// its main process exited with status 0 within TimeoutStopSec.
func (c *container) expectStopped() {
	c.t.Helper()
	c.expect("machqd.service", map[string]string{
		"ActiveState": "inactive", "Result": "success",
		"ExecMainCode":   "1", // CLD_EXITED: it exited, no signal killed it
		"ExecMainStatus": "0",
	})
}

// mainPID returns machqd.service's main pid in the container.
func (c *container) mainPID() int {
	c.t.Helper()
	pid, err := strconv.Atoi(c.show("machqd.service", "MainPID")["MainPID"])
	if err != nil || pid <= 0 {
		c.t.Fatalf("machqd.service MainPID: %v", err)
	}
	return pid
}

// proc returns the path of a file of the container's /proc.
func (c *container) proc(pid int, name string) string {
	return fmt.Sprintf("/proc/%d/root/proc/%d/%s", c.leader, pid, name)
}

// mount is one line of /proc/PID/mountinfo.
type mount struct {
	dev, root, point, opts, fstype string
}

func (c *container) mounts(pid int) []mount {
	c.t.Helper()
	b, err := os.ReadFile(c.proc(pid, "mountinfo"))
	if err != nil {
		c.t.Fatal(err)
	}
	var ms []mount
	for line := range strings.Lines(string(b)) {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 6 || len(g) < 1 {
			c.t.Fatalf("mountinfo line %q", line)
		}
		ms = append(ms, mount{dev: f[2], root: unescapeMount(f[3]), point: unescapeMount(f[4]), opts: f[5], fstype: g[0]})
	}
	return ms
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// at returns the mount that path is on: the last mounted at path or at
// the nearest directory above it.
func at(ms []mount, path string) mount {
	var best mount
	for _, m := range ms {
		if m.point == path || m.point == "/" || strings.HasPrefix(path, m.point+"/") {
			if len(m.point) >= len(best.point) {
				best = m
			}
		}
	}
	return best
}

func (m mount) readOnly() bool { return slices.Contains(strings.Split(m.opts, ","), "ro") }

// checkSandbox fails the test unless machqd, pid in the container, runs
// in the sandbox its unit asks for, as far as /proc shows it. The
// options systemd enforces with seccomp filters (MemoryDenyWriteExecute,
// RestrictAddressFamilies, RestrictNamespaces, RestrictRealtime,
// RestrictSUIDSGID, LockPersonality, SystemCallArchitectures, and in part
// ProtectClock, ProtectHostname, ProtectKernelModules, ProtectKernelLogs)
// show as filters installed. privateNet says it has a network namespace
// of its own (PrivateNetwork=yes).
func (c *container) checkSandbox(pid int, privateNet bool) {
	c.t.Helper()
	b, err := os.ReadFile(c.proc(pid, "status"))
	if err != nil {
		c.t.Fatal(err)
	}
	status := map[string]string{}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok {
			status[k] = strings.TrimSpace(v)
		}
	}
	for k, want := range map[string]string{
		"NoNewPrivs": "1", // NoNewPrivileges=yes
		"CapEff":     "0000000000000000", "CapPrm": "0000000000000000",
		"CapBnd": "0000000000000000", "CapAmb": "0000000000000000", // CapabilityBoundingSet=
		"Seccomp": "2", // filters installed
		"Umask":   "0077",
	} {
		if status[k] != want {
			c.t.Errorf("machqd (pid %d in the container) %s: %q, want %q", pid, k, status[k], want)
		}
	}
	if n, _ := strconv.Atoi(status["Seccomp_filters"]); n < 1 {
		c.t.Errorf("machqd has %q seccomp filters", status["Seccomp_filters"])
	}
	// PrivateNetwork, ProtectHostname: namespaces of its own; the mount
	// namespace of the rest. The metrics drop-in lets it have the
	// network.
	own := []string{"uts", "mnt"}
	if privateNet {
		own = append(own, "net")
	}
	for _, ns := range own {
		mine, err1 := os.Readlink(c.proc(pid, "ns/"+ns))
		init, err2 := os.Readlink(c.proc(1, "ns/"+ns))
		if err1 != nil || err2 != nil || mine == init {
			c.t.Errorf("machqd's %s namespace %q is the container's %q (%v, %v)", ns, mine, init, err1, err2)
		}
	}
	ms, initMs := c.mounts(pid), c.mounts(1)
	// ProtectSystem=strict: read-only but for the state directory and
	// the API file systems. ProtectKernelTunables: /proc/sys read-only;
	// ProtectControlGroups: the cgroup file systems read-only.
	for _, p := range []string{"/", "/usr", "/usr/local/bin", "/etc", "/var", "/var/cache", "/var/log", "/srv", "/proc/sys", "/sys"} {
		if m := at(ms, p); !m.readOnly() {
			c.t.Errorf("%s is writable for machqd: %+v", p, m)
		}
	}
	for _, m := range ms {
		if strings.HasPrefix(m.point, "/sys/fs/cgroup") && !m.readOnly() {
			c.t.Errorf("%s is writable for machqd: %+v", m.point, m)
		}
	}
	if m := at(ms, "/var/lib/machq"); m.point != "/var/lib/machq" || m.readOnly() {
		c.t.Errorf("the state directory is not a writable mount of its own for machqd: %+v", m)
	}
	// ProtectHome=yes: empty, inaccessible, read-only.
	for _, p := range []string{"/home", "/root", "/run/user"} {
		if m := at(ms, p); m.point != p || !m.readOnly() {
			c.t.Errorf("%s is not hidden from machqd: %+v", p, m)
		}
	}
	// ProtectKernelLogs: /proc/kmsg hidden.
	if m := at(ms, "/proc/kmsg"); m.point != "/proc/kmsg" {
		c.t.Errorf("/proc/kmsg is not hidden from machqd: %+v", m)
	}
	// PrivateTmp: its own /tmp and /var/tmp.
	for _, p := range []string{"/tmp", "/var/tmp"} {
		if m := at(ms, p); m.point != p || !strings.Contains(m.root, "systemd-private-") || m.readOnly() {
			c.t.Errorf("%s is not private to machqd: %+v", p, m)
		}
	}
	// PrivateDevices: a /dev of its own, another file system than the
	// container's.
	if m, im := at(ms, "/dev"), at(initMs, "/dev"); m.point != "/dev" || m.dev == im.dev {
		c.t.Errorf("machqd's /dev %+v is the container's %+v", m, im)
	}
	devs, err := os.ReadDir(fmt.Sprintf("/proc/%d/root/proc/%d/root/dev", c.leader, pid))
	if err != nil {
		c.t.Fatal(err)
	}
	for _, d := range devs {
		if d.Type()&os.ModeDevice != 0 && !slices.Contains([]string{"null", "zero", "full", "random", "urandom", "tty", "ptmx"}, d.Name()) {
			c.t.Errorf("machqd's /dev has %s", d.Name())
		}
	}
}
