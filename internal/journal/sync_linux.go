package journal

import (
	"os"

	"golang.org/x/sys/unix"
)

// fdatasync makes f's data durable without its unrelated metadata.
func fdatasync(f *os.File) error {
	return fileCall(f, "fdatasync", func(fd int) error { return unix.Fdatasync(fd) })
}

// preallocate gives f its blocks up to size bytes (fallocate(2), mode 0:
// its length becomes size if it was shorter, the new part reading as
// zeros). Where the file system cannot, it does nothing.
func preallocate(f *os.File, size int64) error {
	err := fileCall(f, "fallocate", func(fd int) error { return unix.Fallocate(fd, 0, 0, size) })
	if pe, ok := err.(*os.PathError); ok && (pe.Err == unix.EOPNOTSUPP || pe.Err == unix.ENOSYS) {
		return nil
	}
	return err
}

// fileCall calls the system call call on f's descriptor, again while it
// is interrupted (EINTR), and names op and f in its error.
func fileCall(f *os.File, op string, call func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			if serr = call(int(fd)); serr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: op, Path: f.Name(), Err: serr}
	}
	return nil
}
