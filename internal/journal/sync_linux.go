package journal

import (
	"os"

	"golang.org/x/sys/unix"
)

// fdatasync makes f's data durable without its unrelated metadata.
func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = unix.Fdatasync(int(fd))
			if serr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}

// preallocate gives f its blocks up to size bytes (fallocate(2), mode 0:
// its length becomes size if it was shorter, the new part reading as
// zeros). Where the file system cannot, it does nothing.
func preallocate(f *os.File, size int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = unix.Fallocate(int(fd), 0, 0, size)
			if serr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	switch serr {
	case nil, unix.EOPNOTSUPP, unix.ENOSYS:
		return nil
	}
	return &os.PathError{Op: "fallocate", Path: f.Name(), Err: serr}
}
