// Package asuser runs a function as another local user, for tests that
// connect to a server the way that user would: the kernel records the
// credentials of the thread that calls connect(2) or listen(2)
// (SO_PEERCRED), so only one locked thread takes the user's ids, and it
// ends with the call. It needs root.
package asuser

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do calls fn on a thread whose effective user and group ids are uid and
// gid, and returns what fn returns. The thread is never given back to the
// Go scheduler: it exits when fn returns, so no other goroutine ever runs
// with those ids.
func Do(uid, gid int, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, ^uintptr(0), uintptr(gid), ^uintptr(0)); e != 0 {
			done <- fmt.Errorf("setresgid(%d): %w", gid, e)
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			done <- fmt.Errorf("setresuid(%d): %w", uid, e)
			return
		}
		done <- fn()
	}()
	return <-done
}
