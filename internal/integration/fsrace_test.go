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
	"time"
)

// The tests in this file run machqd as root where another user can
// write, or under a runtime directory that is not safe, with that user's
// plants in place, and check that machqd refuses, says why and what to
// do, and changes nothing it was pointed at.

// rootVictim returns a file of root's, mode 0600, that machqd must never
// change, in a directory only root can enter.
func rootVictim(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(p, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// victimIntact fails unless the victim at p still has mode 0600 and its
// content.
func victimIntact(t *testing.T, p string) {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || st.Mode() != 0o600 || string(b) != "secret\n" {
		t.Fatalf("victim %s is now mode %v holding %q (%v); want 0600 holding %q", p, st.Mode(), b, err, "secret\n")
	}
}

// machqdRefuses runs cmd, a machqd that must refuse to start, and
// returns its one line of error. It fails unless machqd exits 1 within
// a minute.
func machqdRefuses(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("machqd %v did not refuse within a minute:\n%s", cmd.Args[1:], stderr.String())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("machqd %v: %v; want exit 1:\n%s", cmd.Args[1:], err, stderr.String())
	}
	msg := strings.TrimSpace(stderr.String())
	if strings.Contains(msg, "\n") {
		t.Errorf("machqd %v: more than one line on stderr:\n%s", cmd.Args[1:], msg)
	}
	return msg
}

// withRuntimeDir is the environment with MACHQ_RUNTIME_DIR set to dir.
func withRuntimeDir(dir string) []string {
	return append(os.Environ(), "MACHQ_RUNTIME_DIR="+dir)
}

// plantAs runs the shell command sh, with its arguments, as uid: what
// another user plants before machqd starts.
func plantAs(t *testing.T, uid uint32, sh string, args ...string) {
	t.Helper()
	cmd := exec.Command("/bin/sh", append([]string{"-c", sh, "sh"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("as uid %d, %s: %v: %s", uid, sh, err, out)
	}
}

// TestFSRaceWorldWritableSocketDir: root's machqd --socket --allow-uid in
// a directory every user may write to (no sticky bit), where another
// user has planted links to a file of root's at the lock and socket
// paths, refuses to start, saying the directory lets others write; the
// file, and the links, stay as they were.
func TestFSRaceWorldWritableSocketDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run machqd as root against another user")
	}
	const attacker = 65534
	v := rootVictim(t)
	dir := sharedDir(t, 0o777)
	socket := filepath.Join(dir, "s.sock")
	plantAs(t, attacker, `ln -s "$1" "$2.lock" && ln -s "$1" "$2"`, v, socket)

	msg := machqdRefuses(t, exec.Command(bin.machqd, "--socket", socket, "--allow-uid", fmt.Sprint(attacker), "--log-level", "warn"))
	for _, want := range []string{dir, "mode 0777", "lets other users write"} {
		if !strings.Contains(msg, want) {
			t.Errorf("machqd's refusal %q does not say %q", msg, want)
		}
	}
	victimIntact(t, v)
	for _, p := range []string{socket, socket + ".lock"} {
		if got, err := os.Readlink(p); err != nil || got != v {
			t.Errorf("%s is now %q (%v), want the planted link to %s", p, got, err, v)
		}
	}
}

// TestFSRaceStickySocketDirPlantedLock: in a sticky directory every user
// may write to, like /tmp, another user has planted a link to a file of
// root's where root's machqd --socket will put its lock file. machqd
// does not start, and the file keeps its mode and content (the lock file
// is opened without following links).
func TestFSRaceStickySocketDirPlantedLock(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run machqd as root against another user")
	}
	const attacker = 65534
	v := rootVictim(t)
	dir := sharedDir(t, os.ModeSticky|0o777)
	socket := filepath.Join(dir, "s.sock")
	plantAs(t, attacker, `ln -s "$1" "$2.lock"`, v, socket)

	msg := machqdRefuses(t, exec.Command(bin.machqd, "--socket", socket, "--allow-uid", fmt.Sprint(attacker), "--log-level", "warn"))
	if !strings.Contains(msg, dir) {
		t.Errorf("machqd's refusal %q does not name %s", msg, dir)
	}
	victimIntact(t, v)
	if got, err := os.Readlink(socket + ".lock"); err != nil || got != v {
		t.Errorf("the planted lock link is now %q (%v)", got, err)
	}
	if _, err := os.Lstat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("machqd left %s behind (%v)", socket, err)
	}
}

// TestFSRaceRuntimeDirRefused: for a service name, machqd refuses a
// runtime directory that is a link, that belongs to another user, or
// that others may write to (sticky or not), saying what it found and to
// set MACHQ_RUNTIME_DIR, and creates nothing.
func TestFSRaceRuntimeDirRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	const other = 65534
	for _, c := range []struct {
		name string
		make func(t *testing.T) (runtime, target string)
		want []string
	}{
		{"link", func(t *testing.T) (string, string) {
			target := t.TempDir()
			link := filepath.Join(t.TempDir(), "run")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			return link, target
		}, []string{"is a symbolic link (to TARGET", "remove the link"}},
		{"another user's", func(t *testing.T) (string, string) {
			dir := filepath.Join(t.TempDir(), "run")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(dir, other, other); err != nil {
				t.Fatal(err)
			}
			return dir, dir
		}, []string{"owner 65534", "mode 0700", "remove it"}},
		{"writable by others", func(t *testing.T) (string, string) {
			dir := sharedDir(t, 0o777)
			return dir, dir
		}, []string{"mode 0777", "lets other users write"}},
		{"sticky", func(t *testing.T) (string, string) {
			dir := sharedDir(t, os.ModeSticky|0o777)
			return dir, dir
		}, []string{"mode 1777", "lets other users write"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			runtime, target := c.make(t)
			before, err := os.ReadDir(target)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin.machqd, "--name", "svc", "--log-level", "warn")
			cmd.Env = withRuntimeDir(runtime)
			msg := machqdRefuses(t, cmd)
			for _, want := range append(c.want, runtime, "MACHQ_RUNTIME_DIR") {
				if want = strings.ReplaceAll(want, "TARGET", target); !strings.Contains(msg, want) {
					t.Errorf("machqd's refusal %q does not say %q", msg, want)
				}
			}
			after, err := os.ReadDir(target)
			if err != nil {
				t.Fatal(err)
			}
			if len(after) != len(before) {
				t.Errorf("machqd created files in %s: %v, was %v", target, after, before)
			}
		})
	}
}

// TestFSRaceSocketModeWhateverTheUmask: machqd's socket is 0600, or 0666
// with --allow-uid, whatever umask it was started with (the mode is set
// at the bind, not by a chmod of the path afterwards), and it serves.
func TestFSRaceSocketModeWhateverTheUmask(t *testing.T) {
	for _, c := range []struct {
		umask string
		args  []string
		mode  os.FileMode
	}{
		{"000", nil, 0o600},
		{"777", []string{"--allow-uid", "65534"}, 0o666},
		{"077", []string{"--allow-uid", "65534"}, 0o666},
	} {
		t.Run(c.umask+strings.Join(c.args, ""), func(t *testing.T) {
			dir := t.TempDir()
			socket := filepath.Join(dir, "s.sock")
			// The umask is set in a shell that then runs machqd, so that
			// this process's umask stays as it is for the other tests.
			cmd := exec.Command("/bin/sh", append([]string{"-c", `umask "$0" && exec "$@"`, c.umask, bin.machqd, "--socket", socket, "--log-level", "warn"}, c.args...)...)
			d := &daemon{t: t, cmd: cmd, socket: socket, logs: &syncBuffer{}, exited: make(chan struct{})}
			cmd.Stderr = d.logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { d.err = cmd.Wait(); close(d.exited) }()
			t.Cleanup(func() {
				d.stop()
				if d.err != nil {
					t.Errorf("machqd exited with %v after SIGTERM; logs:\n%s", d.err, d.logs)
				}
				if _, err := os.Lstat(socket); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("machqd left %s behind (%v)", socket, err)
				}
			})
			d.waitReady()
			st, err := os.Lstat(socket)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != c.mode {
				t.Errorf("under umask %s, machqd %v made %s with mode %v, want a socket with %v", c.umask, c.args, socket, st.Mode(), c.mode)
			}
			d.stats() // fails the test unless machqd answers
		})
	}
}
