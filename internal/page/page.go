// Package page creates, fills, seals, checks and maps the sealed memfds
// that carry machq payloads out of line.
//
// A page is an anonymous shared-memory file (memfd_create(2)) sealed
// against writing, growing and shrinking, so that once it is sealed its
// contents are an immutable snapshot every holder can trust. Pages are
// passed between processes as descriptors; nobody copies their bytes.
//
// Functions here take and return raw descriptors (int) because the server
// stores hundreds of thousands of them and an *os.File per page would cost
// memory and a finalizer each. Ownership is stated on every function.
package page

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// RequiredSeals are the seals a page must carry: no writes, no growth,
// no shrinking. F_SEAL_SEAL is recommended but not required.
const RequiredSeals = unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK

// Errors returned by Check, so callers can tell the reasons apart.
var (
	ErrNotMemfd     = errors.New("page: descriptor is not a memfd")
	ErrNotSealed    = errors.New("page: memfd is not sealed against write, grow and shrink")
	ErrSizeMismatch = errors.New("page: memfd size differs from the declared size")
)

// Create returns a new, empty, sealable memfd with close-on-exec set. The
// caller owns the descriptor. name appears in /proc/PID/fd links only.
func Create(name string) (int, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, os.NewSyscallError("memfd_create", err)
	}
	return fd, nil
}

// Truncate sets the size of the memfd fd, which must not be sealed yet.
func Truncate(fd int, size int64) error {
	if err := unix.Ftruncate(fd, size); err != nil {
		return os.NewSyscallError("ftruncate", err)
	}
	return nil
}

// Write writes all of data to fd at offset 0 with pwrite(2), which fills
// the page cache in the kernel without faulting pages into this process.
func Write(fd int, data []byte) error {
	return writeAt(fd, data, 0)
}

// writeAt writes all of data to fd at off with pwrite(2).
func writeAt(fd int, data []byte, off int64) error {
	for len(data) > 0 {
		n, err := unix.Pwrite(fd, data, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("pwrite", err)
		}
		data = data[n:]
		off += int64(n)
	}
	return nil
}

// Seal applies the write, grow, shrink and seal seals to fd. Every
// writable shared mapping of fd must have been unmapped first, or the
// kernel refuses with EBUSY.
//
// The kernel also refuses F_SEAL_WRITE with EBUSY while something holds
// a page of the file for a moment beyond the ~75 ms it waits itself
// (memory reclaim or compaction isolating it, a monitor such as DAMON
// sampling it): Seal tries again sealRetries times, a few milliseconds
// apart, before it gives up.
func Seal(fd int) error {
	var err error
	for try := 0; ; try++ {
		if _, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, RequiredSeals|unix.F_SEAL_SEAL); err != unix.EBUSY || try == sealRetries {
			break
		}
		time.Sleep(time.Duration(1<<try) * time.Millisecond)
	}
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("fcntl(F_ADD_SEALS): %w: the memfd is still mapped for writing, or the kernel kept its pages in use", err)
	}
	if err != nil {
		return os.NewSyscallError("fcntl(F_ADD_SEALS)", err)
	}
	return nil
}

// sealRetries is how many more times Seal tries after EBUSY: 1 to 32 ms
// apart, 63 ms in all.
const sealRetries = 6

// Check reports whether fd is a memfd carrying RequiredSeals whose size is
// exactly size. It neither reads nor maps the page. The returned error
// wraps ErrNotMemfd, ErrNotSealed or ErrSizeMismatch and says what the
// descriptor really is. Check does not take ownership of fd.
func Check(fd int, size int64) error {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("%w: fcntl(F_GETFL): %v", ErrNotMemfd, err)
	}
	if fl&unix.O_PATH != 0 {
		return fmt.Errorf("%w: it is an O_PATH descriptor, which cannot carry data", ErrNotMemfd)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("%w: fstat: %v", ErrNotMemfd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: it is a %s", ErrNotMemfd, kind(st.Mode))
	}
	if fl&unix.O_ACCMODE == unix.O_WRONLY {
		return fmt.Errorf("%w: it is open write-only, so no receiver could read it; pass the descriptor memfd_create returned", ErrNotMemfd)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("%w: it is a regular file on a filesystem without seals (create pages with memfd_create(MFD_ALLOW_SEALING))", ErrNotMemfd)
	}
	if seals == unix.F_SEAL_SEAL {
		return fmt.Errorf("%w: it carries seals SEAL only, so it can never be sealed (a tmpfs file, or a memfd created without MFD_ALLOW_SEALING)", ErrNotSealed)
	}
	if seals&RequiredSeals != RequiredSeals {
		return fmt.Errorf("%w: it carries seals %s; add F_SEAL_WRITE|F_SEAL_GROW|F_SEAL_SHRINK with fcntl(F_ADD_SEALS) after the last write", ErrNotSealed, SealString(seals))
	}
	if st.Size != size {
		return fmt.Errorf("%w: memfd holds %d bytes, request declared %d", ErrSizeMismatch, st.Size, size)
	}
	return checkBacking(fd, &st)
}

// checkBacking accepts the filesystems a memfd lives on when every byte of
// it can be read without failing: shmem (tmpfs), where a hole reads as
// zeros, and hugetlbfs only if every huge page is already allocated. A
// hugetlbfs page not yet faulted in is allocated on first touch, and when
// the pool is empty that touch is a SIGBUS: in the server's, or an
// innocent consumer's, process. Anything else is refused.
func checkBacking(fd int, st *unix.Stat_t) error {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return fmt.Errorf("%w: fstatfs: %v", ErrNotMemfd, err)
	}
	switch fs.Type {
	case unix.TMPFS_MAGIC:
		return nil
	case unix.HUGETLBFS_MAGIC:
		huge := fs.Bsize
		if huge <= 0 {
			huge = 1 << 21
		}
		need := (st.Size + huge - 1) / huge * huge
		if st.Blocks*512 < need {
			return fmt.Errorf("%w: it is a hugetlbfs memfd (MFD_HUGETLB) with %d of its %d bytes allocated; a receiver touching the rest could be killed by SIGBUS when the huge page pool runs out: write every page before sealing, or use a plain memfd", ErrNotMemfd, st.Blocks*512, need)
		}
		return nil
	}
	return fmt.Errorf("%w: it lives on a filesystem of type %#x, not tmpfs or hugetlbfs; create pages with memfd_create", ErrNotMemfd, fs.Type)
}

// Size returns the size of the file fd refers to.
func Size(fd int) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, os.NewSyscallError("fstat", err)
	}
	return st.Size, nil
}

// Seals returns the seals set on fd; an error means fd cannot carry seals.
func Seals(fd int) (int, error) {
	s, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return 0, os.NewSyscallError("fcntl(F_GET_SEALS)", err)
	}
	return s, nil
}

// SealString names the seals in s, such as "WRITE|GROW".
func SealString(s int) string {
	names := []struct {
		bit  int
		name string
	}{
		{unix.F_SEAL_SEAL, "SEAL"},
		{unix.F_SEAL_SHRINK, "SHRINK"},
		{unix.F_SEAL_GROW, "GROW"},
		{unix.F_SEAL_WRITE, "WRITE"},
		{unix.F_SEAL_FUTURE_WRITE, "FUTURE_WRITE"},
	}
	out := ""
	for _, n := range names {
		if s&n.bit != 0 {
			if out != "" {
				out += "|"
			}
			out += n.name
		}
	}
	if out == "" {
		return "none"
	}
	return out
}

func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "pipe"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symbolic link"
	}
	return "file of unknown type"
}

// MapReadOnly maps size bytes of fd read-only and shared. A size of 0
// returns a nil slice and no error. populate asks the kernel to fault the
// pages in up front (MAP_POPULATE), which is far cheaper than taking one
// fault per page on first touch. The mapping stays valid after fd is
// closed; release it with Unmap.
func MapReadOnly(fd int, size int64, populate bool) ([]byte, error) {
	return mmap(fd, size, unix.PROT_READ, populate)
}

// MapWritable maps size bytes of fd for reading and writing. The memfd
// cannot be sealed against writing until the mapping is unmapped.
func MapWritable(fd int, size int64, populate bool) ([]byte, error) {
	return mmap(fd, size, unix.PROT_READ|unix.PROT_WRITE, populate)
}

func mmap(fd int, size int64, prot int, populate bool) ([]byte, error) {
	if size == 0 {
		return nil, nil
	}
	if size < 0 || size != int64(int(size)) {
		return nil, fmt.Errorf("page: cannot map %d bytes", size)
	}
	flags := unix.MAP_SHARED
	if populate {
		flags |= unix.MAP_POPULATE
	}
	b, err := unix.Mmap(fd, 0, int(size), prot, flags)
	if err != nil {
		return nil, os.NewSyscallError("mmap", err)
	}
	return b, nil
}

// Unmap releases a mapping returned by MapReadOnly or MapWritable.
func Unmap(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if err := unix.Munmap(b); err != nil {
		return os.NewSyscallError("munmap", err)
	}
	return nil
}

// CopyFrom fills the empty memfd dst with the rest of src, copying inside
// the kernel where it can: copy_file_range(2), then sendfile(2), and only
// for pipes and the like a read/write loop. It copies at most limit+1
// bytes, so that a caller can tell a source longer than limit without
// copying all of it, and returns the bytes copied.
func CopyFrom(dst int, src *os.File, limit int64) (int64, error) {
	if limit < 0 {
		return 0, fmt.Errorf("page: negative copy limit %d", limit)
	}
	st, err := src.Stat()
	if err == nil && st.Mode().IsRegular() {
		if n, ok, err := kernelCopy(dst, src, limit+1); ok || err != nil {
			return n, err
		}
	}
	return streamCopy(dst, src, limit+1)
}

// CopyStream is CopyFrom for any reader: the bytes go through a buffer.
func CopyStream(dst int, src io.Reader, limit int64) (int64, error) {
	if limit < 0 {
		return 0, fmt.Errorf("page: negative copy limit %d", limit)
	}
	return streamCopy(dst, src, limit+1)
}

// kernelCopy copies up to max bytes of src into dst with copy_file_range,
// falling back to sendfile. ok is false when neither applies and nothing
// was copied.
func kernelCopy(dst int, src *os.File, max int64) (n int64, ok bool, err error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	var opErr error
	cerr := rc.Read(func(sfd uintptr) bool {
		n, ok, opErr = copyFD(dst, int(sfd), nil, max)
		return true
	})
	if cerr != nil && opErr == nil {
		opErr = cerr
	}
	return n, ok || opErr != nil, opErr
}

// CopyOut writes size bytes of the page src, from its start, to the end
// of dst by kernel copy: copy_file_range where the two files share a
// file system, else sendfile (copy_file_range from tmpfs to another file
// system fails with EXDEV, and a copy through user memory is what this
// must not do). It reads at explicit offsets, leaving src's file
// position, which every holder of the page shares, alone.
func CopyOut(dst, src int, size int64) error {
	var off int64
	n, ok, err := copyFD(dst, src, &off, size)
	switch {
	case err != nil:
		return err
	case !ok:
		return errors.New("page: neither copy_file_range nor sendfile can copy this page")
	case n != size:
		return fmt.Errorf("page: the page ended at %d of %d bytes", n, size)
	}
	return nil
}

// copyFD copies up to max bytes from src (at *off, advanced, or at its
// file position when off is nil) to dst with copy_file_range, falling
// back to sendfile. ok is false when neither applies and nothing was
// copied.
func copyFD(dst, src int, off *int64, max int64) (n int64, ok bool, err error) {
	useSendfile := false
	for n < max {
		chunk := int(min(max-n, 1<<30))
		var c int
		var e error
		if useSendfile {
			c, e = unix.Sendfile(dst, src, off, chunk)
		} else {
			c, e = unix.CopyFileRange(src, off, dst, nil, chunk, 0)
		}
		switch {
		case e == unix.EINTR || e == unix.EAGAIN:
			continue
		case e != nil && n == 0 && !useSendfile && (e == unix.EXDEV || e == unix.EINVAL || e == unix.ENOSYS || e == unix.EOPNOTSUPP):
			useSendfile = true
			continue
		case e != nil && n == 0 && useSendfile && (e == unix.EINVAL || e == unix.ENOSYS):
			return 0, false, nil // neither works
		case e != nil && useSendfile:
			return n, true, os.NewSyscallError("sendfile", e)
		case e != nil:
			return n, true, os.NewSyscallError("copy_file_range", e)
		case c == 0:
			return n, true, nil
		}
		n += int64(c)
	}
	return n, true, nil
}

func streamCopy(dst int, src io.Reader, max int64) (int64, error) {
	buf := make([]byte, 1<<20)
	var off int64
	for off < max {
		n, err := src.Read(buf[:min(int64(len(buf)), max-off)])
		if n > 0 {
			if werr := writeAt(dst, buf[:n], off); werr != nil {
				return off, werr
			}
			off += int64(n)
		}
		if err == io.EOF {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
	return off, nil
}

// ReadAt reads len(b) bytes of fd at off with pread(2).
func ReadAt(fd int, b []byte, off int64) (int, error) {
	total := 0
	for len(b) > 0 {
		n, err := unix.Pread(fd, b, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return total, os.NewSyscallError("pread", err)
		}
		if n == 0 {
			return total, io.ErrUnexpectedEOF
		}
		total += n
		b = b[n:]
		off += int64(n)
	}
	return total, nil
}
