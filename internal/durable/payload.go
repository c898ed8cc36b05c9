package durable

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/page"
)

// PayloadDir is the subdirectory of the data directory holding the
// payloads of page messages, one file each.
const PayloadDir = "payloads"

// writePayload copies size bytes of the page src into the new file path
// by kernel copy (page.CopyOut: the bytes never pass through this
// process), and makes the file durable.
func writePayload(path string, src int, size int64) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("durable: payload file: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	dst := int(f.Fd())
	if err := page.CopyOut(dst, src, size); err != nil {
		return fmt.Errorf("durable: writing payload %s: %w", path, err)
	}
	for {
		e := unix.Fdatasync(dst)
		if e == unix.EINTR {
			continue
		}
		if e != nil {
			return fmt.Errorf("durable: payload %s: %w", path, os.NewSyscallError("fdatasync", e))
		}
		return nil
	}
}

// OpenPayload returns a sealed page holding the payload file path, filled
// by the kernel (sendfile or copy_file_range: the bytes never pass
// through this process), and its size. The caller owns the descriptor.
func OpenPayload(path string) (int, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return -1, 0, fmt.Errorf("durable: payload: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return -1, 0, fmt.Errorf("durable: payload: %w", err)
	}
	fd, err := page.Create("machq-durable")
	if err != nil {
		return -1, 0, err
	}
	n, err := page.CopyFrom(fd, f, st.Size())
	if err == nil && n != st.Size() {
		err = fmt.Errorf("durable: payload %s: read %d of %d bytes", path, n, st.Size())
	}
	if err == nil {
		err = page.Seal(fd)
	}
	if err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	return fd, n, nil
}

// syncDir makes the entries of dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("durable: syncing %s: %w", dir, err)
	}
	return nil
}
