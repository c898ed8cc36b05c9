package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/activation"
	"github.com/machq/machq/internal/handoff"
	"github.com/machq/machq/internal/sdnotify"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/server"
)

// Restarts without a disk (docs/RESTART.md). machqd hands its listening
// sockets and its memory-only named queues to the machqd that follows it
// in one of two ways:
//
//   - SIGUSR2: machqd checks that its executable (as it is on disk now:
//     an upgrade may have replaced it) starts with the same flags and
//     reads this state, then stops serving, describes what it holds in a
//     memfd and execve(2)s that executable in its own process, passing
//     the descriptors across and naming the memfd in handoffEnv. The
//     pid stays; a service manager sees no stop. If execve fails, this
//     machqd takes its state back and goes on serving.
//   - Under systemd with a file descriptor store (FileDescriptorStoreMax=,
//     which systemd announces in $FDSTORE; --fd-store says it on older
//     versions), SIGTERM parks the state and its descriptors in the
//     store (FDSTORE=1) before exiting; the next start gets them back
//     with the sockets (LISTEN_FDS, named activation.StateName and
//     activation.HandoffName), takes them over, and removes them from
//     the store.

// handoffEnv names the state's descriptor across execve(2); stopEnv, a
// stop signal that came during the restart, for the successor to act on.
const (
	handoffEnv = "MACHQ_HANDOFF_FD"
	stopEnv    = "MACHQ_HANDOFF_STOP"
)

// pendingStop returns the stop signal a predecessor passed on (stopEnv),
// or nil.
func pendingStop() os.Signal {
	v, ok := os.LookupEnv(stopEnv)
	os.Unsetenv(stopEnv)
	n, err := strconv.Atoi(v)
	if !ok || err != nil || (syscall.Signal(n) != syscall.SIGINT && syscall.Signal(n) != syscall.SIGTERM) {
		return nil
	}
	return syscall.Signal(n)
}

// restartFlag makes machqd check its flags, print the state versions it
// reads, and exit: the predecessor's probe.
const restartFlag = "check-restart"

// inheritedState returns what a predecessor handed over, if anything:
// across execve(2) (handoffEnv), or parked in the service manager's store
// (p). fromStore says which, for the caller to empty the store once the
// state is taken over.
func inheritedState(p *activation.Passed, log *slog.Logger) (st *handoff.State, fromStore bool, err error) {
	if v, ok := os.LookupEnv(handoffEnv); ok {
		os.Unsetenv(handoffEnv)
		fd, err := strconv.Atoi(v)
		if err != nil || fd < 0 {
			return nil, false, fmt.Errorf("%s=%q is not a descriptor", handoffEnv, v)
		}
		defer unix.Close(fd)
		// The descriptors came across execve: they are among those open.
		var fds []int
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			return nil, false, fmt.Errorf("list the descriptors handed over: %w", err)
		}
		for _, e := range ents {
			n, err := strconv.Atoi(e.Name())
			if err != nil || n == fd || n <= 2 {
				continue
			}
			if _, err := unix.FcntlInt(uintptr(n), unix.F_GETFD, 0); err == nil { // not the listing's own
				fds = append(fds, n)
			}
		}
		st, _, err := handoff.Read(fd, fds) // the others are not the state's
		if err != nil {
			// Let go of what it names, the lock above all, so that this
			// machqd can check in afresh.
			handoff.Discard(fd, fds)
		}
		return st, false, err
	}
	if p.State == nil {
		for _, f := range p.Handoff {
			f.Close()
		}
		if len(p.Handoff) > 0 {
			log.Warn("the service manager passed descriptors of a restart without its state; they are dropped", "descriptors", len(p.Handoff))
			return nil, true, nil // the store must forget them
		}
		return nil, false, nil
	}
	stateFD := dupFile(p.State)
	defer unix.Close(stateFD)
	fds := make([]int, 0, len(p.Handoff))
	for _, f := range p.Handoff {
		fds = append(fds, dupFile(f))
	}
	st, unused, err := handoff.Read(stateFD, fds)
	if err != nil {
		wire.CloseFDs(fds)
		return nil, true, err
	}
	wire.CloseFDs(unused)
	return st, true, nil
}

// dupFile returns a duplicate of f's descriptor and closes f.
func dupFile(f *os.File) int {
	defer f.Close()
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// probe runs the executable at exe with args and restartFlag, and checks
// that it accepts them and reads this machqd's state version.
func probe(exe string, args []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, append(append([]string{}, args...), "--"+restartFlag)...)
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "NOTIFY_SOCKET" && k != handoffEnv && !strings.HasPrefix(k, "LISTEN_") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s with the same flags: %w: %s", exe, err, strings.TrimSpace(errOut.String()))
	}
	// "machqd reads restart states 1 to N"
	var lo, hi int
	if _, err := fmt.Sscanf(strings.TrimSpace(out.String()), "machqd reads restart states %d to %d", &lo, &hi); err != nil {
		return fmt.Errorf("%s says %q, not which restart states it reads", exe, strings.TrimSpace(out.String()))
	}
	if handoff.Version < lo || handoff.Version > hi {
		return fmt.Errorf("%s reads restart states %d to %d, not %d", exe, lo, hi, handoff.Version)
	}
	return nil
}

// restartInPlace hands srv over to the executable at exe, run in this
// process with args. It returns only if that failed: with the state to
// take back.
//
// A stop signal (SIGINT, SIGTERM) that came meanwhile, which execve would
// discard, is passed on in stopEnv: the successor stops as soon as it
// has taken over.
func restartInPlace(srv *server.Server, exe string, args []string, timeout time.Duration, sigs chan os.Signal, log *slog.Logger) (*handoff.State, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := srv.Handoff(ctx)
	if err != nil {
		return nil, err
	}
	stateFD, err := handoff.Write(st)
	if err != nil {
		return st, err
	}
	defer unix.Close(stateFD)
	fds := append(st.Descriptors(), stateFD)
	for _, fd := range fds {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			setCloseOnExec(fds)
			return st, fmt.Errorf("pass descriptor %d on: %w", fd, err)
		}
	}
	env := []string{handoffEnv + "=" + strconv.Itoa(stateFD)}
	var pending os.Signal
	select {
	case pending = <-sigs:
		if s, ok := pending.(syscall.Signal); ok && s != syscall.SIGUSR2 {
			env = append(env, stopEnv+"="+strconv.Itoa(int(s)))
		}
	default:
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, handoffEnv+"=") && !strings.HasPrefix(kv, stopEnv+"=") {
			env = append(env, kv)
		}
	}
	log.Info("restarting in place", "executable", exe, "descriptors", len(fds))
	err = syscall.Exec(exe, append([]string{os.Args[0]}, args...), env)
	// Still here: execve failed, and this process goes on, with the
	// signal it took.
	setCloseOnExec(fds)
	if pending != nil {
		select {
		case sigs <- pending:
		default:
		}
	}
	return st, fmt.Errorf("execve %s: %w", exe, err)
}

func setCloseOnExec(fds []int) {
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
}

// fdStoreMax returns how many descriptors the service manager keeps for
// machqd: --fd-store if given, else $FDSTORE (systemd 254 and later set
// it to FileDescriptorStoreMax=); 0 when there is no store.
func fdStoreMax(flagValue int, notify *sdnotify.Notifier) int {
	if !notify.Enabled() {
		return 0
	}
	if flagValue > 0 {
		return flagValue
	}
	n, _ := strconv.Atoi(os.Getenv("FDSTORE"))
	return max(n, 0)
}

// park hands srv over to the service manager's file descriptor store,
// which keeps at most limit descriptors. Sockets the manager passed are
// not parked: it passes them again. It reports whether srv stopped: if
// the handoff itself failed, srv serves on (for a plain shutdown). On a
// later error nothing is parked that the next start would take (the
// state goes last), and what srv holds is lost with this process.
func park(srv *server.Server, notify *sdnotify.Notifier, limit int, timeout time.Duration, log *slog.Logger) (stopped bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := srv.Handoff(ctx)
	if err != nil {
		return false, err
	}
	own := st.Listeners[:0]
	for _, l := range st.Listeners {
		if l.Managed {
			unix.Close(l.FD)
			continue
		}
		own = append(own, l)
	}
	st.Listeners = own
	fds := st.Descriptors()
	if len(fds)+1 > limit {
		return true, fmt.Errorf("%d descriptors to park (%d listening sockets and their locks, %d pages) and the state, but the store keeps %d: raise FileDescriptorStoreMax= above --max-stored-pages", len(fds), len(st.Listeners), len(fds)-3*len(st.Listeners), limit)
	}
	stateFD, err := handoff.Write(st)
	if err != nil {
		return true, err
	}
	defer unix.Close(stateFD)
	forgetParked(notify) // whatever an earlier stop left is replaced
	if err := notify.StoreFDs(activation.HandoffName, fds...); err != nil {
		notify.RemoveFDs(activation.HandoffName)
		return true, err
	}
	if err := notify.StoreFDs(activation.StateName, stateFD); err != nil {
		notify.RemoveFDs(activation.HandoffName)
		return true, err
	}
	log.Info("parked in the service manager's file descriptor store for the next start", "descriptors", len(fds)+1)
	return true, nil
}

// forgetParked asks the service manager to drop what a stop parked in its
// store: taken over, unusable, or about to be replaced.
func forgetParked(notify *sdnotify.Notifier) {
	notify.RemoveFDs(activation.StateName)
	notify.RemoveFDs(activation.HandoffName)
}
