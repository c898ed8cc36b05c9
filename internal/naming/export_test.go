package naming

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// UmaskFallback makes CheckInWith bind under the process's umask, as
// where unshare is refused, until t ends.
func UmaskFallback(t testing.TB) {
	old := unshareFS
	unshareFS = func() error { return unix.EPERM }
	t.Cleanup(func() { unshareFS = old })
}

// ThreadUmask reports whether a thread may have a umask of its own here.
func ThreadUmask() bool {
	ok := make(chan bool)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		ok <- unshareFS() == nil
	}()
	return <-ok
}
