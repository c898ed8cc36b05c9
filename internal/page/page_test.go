package page_test

import (
	"bytes"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/machq/machq/internal/page"
	"golang.org/x/sys/unix"
)

// pattern returns n deterministic pseudo-random bytes.
func pattern(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// closeOnCleanup closes fd when the test (or subtest) ends.
func closeOnCleanup(t testing.TB, fd int) {
	t.Helper()
	t.Cleanup(func() { unix.Close(fd) })
}

// newMemfd returns an empty, unsealed, sealable memfd closed at cleanup.
func newMemfd(t testing.TB) int {
	t.Helper()
	fd, err := page.Create("machq-test")
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	closeOnCleanup(t, fd)
	return fd
}

// newPage returns a sealed memfd holding data, closed at cleanup.
func newPage(t testing.TB, data []byte) int {
	t.Helper()
	fd := newMemfd(t)
	if err := page.Write(fd, data); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := page.Seal(fd); err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return fd
}

// addSeals adds seals to fd with fcntl(F_ADD_SEALS).
func addSeals(t testing.TB, fd, seals int) {
	t.Helper()
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		t.Fatalf("F_ADD_SEALS %s: %v", page.SealString(seals), err)
	}
}

// fdIsOpen reports whether fd refers to an open descriptor.
func fdIsOpen(t testing.TB, fd int) bool {
	t.Helper()
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil && err != unix.EBADF {
		t.Fatalf("F_GETFD %d: %v", fd, err)
	}
	return err == nil
}

// openFDs returns the descriptors open in this process, each with what it
// refers to.
func openFDs(t testing.TB) map[int]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("read /proc/self/fd: %v", err)
	}
	out := make(map[int]string, len(ents))
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// The directory descriptor ReadDir used is closed by now; skip
		// it and anything else that went away.
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue
		}
		out[n] = target
	}
	return out
}

// checkNoLeak records the open descriptors now and fails the test at
// cleanup if more are open then. It must be called before any cleanup
// that closes descriptors is registered, so that it runs after them.
func checkNoLeak(t testing.TB) {
	t.Helper()
	// Start the network poller, which the runtime opens lazily, before
	// counting descriptors.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	w.Close()
	before := openFDs(t)
	t.Cleanup(func() {
		after := openFDs(t)
		if len(after) <= len(before) {
			return
		}
		var leaked []string
		for fd, target := range after {
			if _, ok := before[fd]; !ok {
				leaked = append(leaked, strconv.Itoa(fd)+" -> "+target)
			}
		}
		slices.Sort(leaked)
		t.Errorf("%d descriptors open before, %d after; new: %s", len(before), len(after), strings.Join(leaked, ", "))
	})
}

func TestCreate(t *testing.T) {
	fd := newMemfd(t)
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Error("Create: close-on-exec is not set")
	}
	seals, err := page.Seals(fd)
	if err != nil {
		t.Fatalf("Seals on a new page: %v", err)
	}
	if seals != 0 {
		t.Errorf("new page has seals %s, want none", page.SealString(seals))
	}
	if n, err := page.Size(fd); err != nil || n != 0 {
		t.Errorf("Size of a new page = %d, %v; want 0, nil", n, err)
	}
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(link, "memfd:machq-test") {
		t.Errorf("fd link %q does not name the memfd", link)
	}
}

func TestCreateWriteSealCheck(t *testing.T) {
	checkNoLeak(t)
	for _, n := range []int{1, 100, 4095, 4096, 4097, 1<<20 + 3} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			data := pattern(n, uint64(n))
			fd := newPage(t, data)
			if err := page.Check(fd, int64(n)); err != nil {
				t.Fatalf("Check(%d): %v", n, err)
			}
			if size, err := page.Size(fd); err != nil || size != int64(n) {
				t.Errorf("Size = %d, %v; want %d", size, err, n)
			}
			seals, err := page.Seals(fd)
			if err != nil {
				t.Fatal(err)
			}
			if want := page.RequiredSeals | unix.F_SEAL_SEAL; seals != want {
				t.Errorf("seals = %s, want %s", page.SealString(seals), page.SealString(want))
			}
			got := make([]byte, n)
			if k, err := page.ReadAt(fd, got, 0); err != nil || k != n {
				t.Fatalf("ReadAt = %d, %v", k, err)
			}
			if !bytes.Equal(got, data) {
				t.Error("page content differs from what was written")
			}
			// The seals hold: no more writes, growth or shrinking.
			if err := page.Write(fd, []byte("x")); !errors.Is(err, unix.EPERM) {
				t.Errorf("Write after Seal: %v, want EPERM", err)
			}
			if err := page.Truncate(fd, int64(n)+1); !errors.Is(err, unix.EPERM) {
				t.Errorf("growing after Seal: %v, want EPERM", err)
			}
			if err := page.Truncate(fd, int64(n)-1); !errors.Is(err, unix.EPERM) {
				t.Errorf("shrinking after Seal: %v, want EPERM", err)
			}
			// F_SEAL_SEAL is set, so Seal cannot run twice.
			if err := page.Seal(fd); !errors.Is(err, unix.EPERM) {
				t.Errorf("second Seal: %v, want EPERM", err)
			}
			if err := page.Check(fd, int64(n)); err != nil {
				t.Errorf("Check after refused changes: %v", err)
			}
		})
	}
}

func TestWriteEmpty(t *testing.T) {
	fd := newMemfd(t)
	if err := page.Write(fd, nil); err != nil {
		t.Fatalf("Write(nil): %v", err)
	}
	if err := page.Seal(fd); err != nil {
		t.Fatal(err)
	}
	if err := page.Check(fd, 0); err != nil {
		t.Errorf("Check(0): %v", err)
	}
}

func TestWriteBadFD(t *testing.T) {
	if err := page.Write(-1, []byte("x")); !errors.Is(err, unix.EBADF) {
		t.Errorf("Write(-1): %v, want EBADF", err)
	}
	if err := page.Truncate(-1, 1); !errors.Is(err, unix.EBADF) {
		t.Errorf("Truncate(-1): %v, want EBADF", err)
	}
	if err := page.Seal(-1); !errors.Is(err, unix.EBADF) {
		t.Errorf("Seal(-1): %v, want EBADF", err)
	}
	if _, err := page.Size(-1); !errors.Is(err, unix.EBADF) {
		t.Errorf("Size(-1): %v, want EBADF", err)
	}
}

func TestMapReadOnly(t *testing.T) {
	checkNoLeak(t)
	for _, populate := range []bool{false, true} {
		t.Run("populate="+strconv.FormatBool(populate), func(t *testing.T) {
			data := pattern(3*4096+17, 7)
			fd, err := page.Create("map")
			if err != nil {
				t.Fatal(err)
			}
			if err := page.Write(fd, data); err != nil {
				unix.Close(fd)
				t.Fatal(err)
			}
			if err := page.Seal(fd); err != nil {
				unix.Close(fd)
				t.Fatal(err)
			}
			b, err := page.MapReadOnly(fd, int64(len(data)), populate)
			if err != nil {
				unix.Close(fd)
				t.Fatalf("MapReadOnly: %v", err)
			}
			if !bytes.Equal(b, data) {
				t.Error("mapping differs from the bytes written")
			}
			// The mapping outlives the descriptor.
			if err := unix.Close(fd); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, data) {
				t.Error("mapping changed after the descriptor was closed")
			}
			if err := page.Unmap(b); err != nil {
				t.Errorf("Unmap: %v", err)
			}
		})
	}
}

func TestMapReadOnlyPrefix(t *testing.T) {
	data := pattern(10000, 8)
	fd := newPage(t, data)
	b, err := page.MapReadOnly(fd, 100, false)
	if err != nil {
		t.Fatal(err)
	}
	defer page.Unmap(b)
	if !bytes.Equal(b, data[:100]) {
		t.Error("short mapping differs from the start of the page")
	}
}

func TestMapErrors(t *testing.T) {
	fd := newPage(t, []byte("sealed"))
	if b, err := page.MapWritable(fd, 6, false); err == nil {
		page.Unmap(b)
		t.Error("MapWritable of a write-sealed page succeeded")
	} else if !errors.Is(err, unix.EPERM) {
		t.Errorf("MapWritable of a write-sealed page: %v, want EPERM", err)
	}
	if b, err := page.MapReadOnly(fd, -1, false); err == nil || b != nil {
		t.Errorf("MapReadOnly(size -1) = %v, %v; want an error", b, err)
	}
	if b, err := page.MapReadOnly(-1, 10, false); err == nil || b != nil {
		t.Errorf("MapReadOnly(fd -1) = %v, %v; want an error", b, err)
	}
}

func TestMapWritableUnmapSeal(t *testing.T) {
	checkNoLeak(t)
	data := pattern(2*4096+5, 9)
	fd := newMemfd(t)
	if err := page.Truncate(fd, int64(len(data))); err != nil {
		t.Fatalf("Truncate: %v", err)
	}
	w, err := page.MapWritable(fd, int64(len(data)), true)
	if err != nil {
		t.Fatalf("MapWritable: %v", err)
	}
	copy(w, data)

	// A writable shared mapping exists: the kernel refuses the write seal.
	err = page.Seal(fd)
	if !errors.Is(err, unix.EBUSY) {
		page.Unmap(w)
		t.Fatalf("Seal with a writable mapping: %v, want EBUSY", err)
	}
	if seals, err := page.Seals(fd); err != nil || seals != 0 {
		t.Errorf("refused Seal left seals %s (%v), want none", page.SealString(seals), err)
	}
	if err := page.Check(fd, int64(len(data))); !errors.Is(err, page.ErrNotSealed) {
		t.Errorf("Check of the unsealed page: %v, want ErrNotSealed", err)
	}

	if err := page.Unmap(w); err != nil {
		t.Fatalf("Unmap: %v", err)
	}
	if err := page.Seal(fd); err != nil {
		t.Fatalf("Seal after Unmap: %v", err)
	}
	if err := page.Check(fd, int64(len(data))); err != nil {
		t.Fatalf("Check: %v", err)
	}
	r, err := page.MapReadOnly(fd, int64(len(data)), false)
	if err != nil {
		t.Fatal(err)
	}
	defer page.Unmap(r)
	if !bytes.Equal(r, data) {
		t.Error("bytes written through the writable mapping were not kept")
	}
}

func TestMapZeroSize(t *testing.T) {
	fd := newPage(t, nil)
	if err := page.Check(fd, 0); err != nil {
		t.Fatalf("Check(0): %v", err)
	}
	b, err := page.MapReadOnly(fd, 0, true)
	if err != nil || b != nil {
		t.Errorf("MapReadOnly(0) = %v, %v; want nil, nil", b, err)
	}
	if err := page.Unmap(b); err != nil {
		t.Errorf("Unmap(nil): %v", err)
	}
	unsealed := newMemfd(t)
	b, err = page.MapWritable(unsealed, 0, false)
	if err != nil || b != nil {
		t.Errorf("MapWritable(0) = %v, %v; want nil, nil", b, err)
	}
}

// fdCase builds one descriptor for the Check table. Descriptors it opens
// must be closed through t.Cleanup.
type fdCase struct {
	name  string
	open  func(t *testing.T) int
	size  int64
	want  []error  // Check's error must wrap one of these
	words []string // the message must contain each of these
}

func TestCheckRejects(t *testing.T) {
	checkNoLeak(t)

	sealedWith := func(data []byte, seals int) func(t *testing.T) int {
		return func(t *testing.T) int {
			fd := newMemfd(t)
			if err := page.Write(fd, data); err != nil {
				t.Fatal(err)
			}
			if seals != 0 {
				addSeals(t, fd, seals)
			}
			return fd
		}
	}
	hundred := pattern(100, 1)

	cases := []fdCase{
		{
			name: "bad descriptor",
			open: func(t *testing.T) int { return -1 },
			want: []error{page.ErrNotMemfd}, words: []string{"F_GETFL", unix.EBADF.Error()},
		},
		{
			name: "pipe",
			open: func(t *testing.T) int {
				var p [2]int
				if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
					t.Fatal(err)
				}
				closeOnCleanup(t, p[0])
				closeOnCleanup(t, p[1])
				return p[0]
			},
			want: []error{page.ErrNotMemfd}, words: []string{"pipe"},
		},
		{
			name: "pipe write end",
			open: func(t *testing.T) int {
				var p [2]int
				if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
					t.Fatal(err)
				}
				closeOnCleanup(t, p[0])
				closeOnCleanup(t, p[1])
				return p[1]
			},
			want: []error{page.ErrNotMemfd}, words: []string{"pipe"},
		},
		{
			name: "socketpair",
			open: func(t *testing.T) int {
				s, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				closeOnCleanup(t, s[0])
				closeOnCleanup(t, s[1])
				return s[0]
			},
			want: []error{page.ErrNotMemfd}, words: []string{"socket"},
		},
		{
			name: "dev null",
			open: func(t *testing.T) int {
				fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				closeOnCleanup(t, fd)
				return fd
			},
			want: []error{page.ErrNotMemfd}, words: []string{"character device"},
		},
		{
			name: "directory",
			open: func(t *testing.T) int {
				fd, err := unix.Open(t.TempDir(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				closeOnCleanup(t, fd)
				return fd
			},
			want: []error{page.ErrNotMemfd}, words: []string{"directory"},
		},
		{
			name: "O_PATH file",
			open: func(t *testing.T) int {
				p := filepath.Join(t.TempDir(), "f")
				if err := os.WriteFile(p, hundred, 0o600); err != nil {
					t.Fatal(err)
				}
				fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				closeOnCleanup(t, fd)
				return fd
			},
			size: 100,
			want: []error{page.ErrNotMemfd}, words: []string{"O_PATH"},
		},
		{
			// An O_PATH descriptor of a properly sealed page still cannot
			// carry data.
			name: "O_PATH of a sealed memfd",
			open: func(t *testing.T) int {
				pfd := newPage(t, hundred)
				fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(pfd), unix.O_PATH|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				closeOnCleanup(t, fd)
				return fd
			},
			size: 100,
			want: []error{page.ErrNotMemfd}, words: []string{"O_PATH"},
		},
		{
			name: "regular file on disk",
			open: func(t *testing.T) int {
				dir := t.TempDir()
				var sfs unix.Statfs_t
				if err := unix.Statfs(dir, &sfs); err != nil {
					t.Fatal(err)
				}
				if sfs.Type == unix.TMPFS_MAGIC || sfs.Type == unix.HUGETLBFS_MAGIC {
					t.Skipf("%s is on a filesystem with seals", dir)
				}
				p := filepath.Join(dir, "f")
				if err := os.WriteFile(p, hundred, 0o600); err != nil {
					t.Fatal(err)
				}
				fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				closeOnCleanup(t, fd)
				return fd
			},
			size: 100,
			want: []error{page.ErrNotMemfd}, words: []string{"regular file", "without seals"},
		},
		{
			// A tmpfs file is born with F_SEAL_SEAL and can never be
			// sealed. Check currently reports it as ErrNotSealed with
			// "carries seals SEAL" rather than ErrNotMemfd; either way it
			// must be refused and the message must say why.
			name: "tmpfs file in dev shm",
			open: func(t *testing.T) int {
				var sfs unix.Statfs_t
				if err := unix.Statfs("/dev/shm", &sfs); err != nil || sfs.Type != unix.TMPFS_MAGIC {
					t.Skip("/dev/shm is missing or not tmpfs")
				}
				f, err := os.CreateTemp("/dev/shm", "machq-page-test-*")
				if err != nil {
					t.Skipf("cannot create a file in /dev/shm: %v", err)
				}
				t.Cleanup(func() { os.Remove(f.Name()) })
				if _, err := f.Write(hundred); err != nil {
					t.Fatal(err)
				}
				f.Close()
				fd, err := unix.Open(f.Name(), unix.O_RDWR|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				closeOnCleanup(t, fd)
				// Nobody can seal it.
				if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, page.RequiredSeals); err == nil {
					t.Fatal("sealing a tmpfs file succeeded")
				}
				return fd
			},
			size: 100,
			want: []error{page.ErrNotMemfd, page.ErrNotSealed}, words: []string{"SEAL"},
		},
		{
			name: "memfd without MFD_ALLOW_SEALING",
			open: func(t *testing.T) int {
				fd, err := unix.MemfdCreate("nosealing", unix.MFD_CLOEXEC)
				if err != nil {
					t.Fatal(err)
				}
				closeOnCleanup(t, fd)
				if err := page.Write(fd, hundred); err != nil {
					t.Fatal(err)
				}
				return fd
			},
			size: 100,
			want: []error{page.ErrNotSealed}, words: []string{"seals SEAL only", "MFD_ALLOW_SEALING"},
		},
		{
			name: "unsealed memfd",
			open: sealedWith(hundred, 0),
			size: 100,
			want: []error{page.ErrNotSealed}, words: []string{"seals none;"},
		},
		{
			name: "unsealed empty memfd",
			open: sealedWith(nil, 0),
			size: 0,
			want: []error{page.ErrNotSealed}, words: []string{"seals none;"},
		},
		{
			name: "only F_SEAL_WRITE",
			open: sealedWith(hundred, unix.F_SEAL_WRITE),
			size: 100,
			want: []error{page.ErrNotSealed}, words: []string{"seals WRITE;"},
		},
		{
			name: "only F_SEAL_FUTURE_WRITE",
			open: sealedWith(hundred, unix.F_SEAL_FUTURE_WRITE),
			size: 100,
			want: []error{page.ErrNotSealed}, words: []string{"seals FUTURE_WRITE;"},
		},
		{
			name: "future write, grow and shrink",
			open: sealedWith(hundred, unix.F_SEAL_FUTURE_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL),
			size: 100,
			want: []error{page.ErrNotSealed}, words: []string{"seals SEAL|SHRINK|GROW|FUTURE_WRITE;"},
		},
		{
			name: "missing F_SEAL_SHRINK",
			open: sealedWith(hundred, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SEAL),
			size: 100,
			want: []error{page.ErrNotSealed}, words: []string{"seals SEAL|GROW|WRITE;"},
		},
		{
			name: "missing F_SEAL_GROW",
			open: sealedWith(hundred, unix.F_SEAL_WRITE|unix.F_SEAL_SHRINK),
			size: 100,
			want: []error{page.ErrNotSealed}, words: []string{"seals SHRINK|WRITE;"},
		},
		{
			name: "missing F_SEAL_WRITE",
			open: sealedWith(hundred, unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL),
			size: 100,
			want: []error{page.ErrNotSealed}, words: []string{"seals SEAL|SHRINK|GROW;"},
		},
		{
			name: "declared size bigger",
			open: sealedWith(hundred, page.RequiredSeals|unix.F_SEAL_SEAL),
			size: 101,
			want: []error{page.ErrSizeMismatch}, words: []string{"holds 100 bytes", "declared 101"},
		},
		{
			name: "declared size smaller",
			open: sealedWith(hundred, page.RequiredSeals|unix.F_SEAL_SEAL),
			size: 99,
			want: []error{page.ErrSizeMismatch}, words: []string{"holds 100 bytes", "declared 99"},
		},
		{
			name: "declared size zero",
			open: sealedWith(hundred, page.RequiredSeals),
			size: 0,
			want: []error{page.ErrSizeMismatch}, words: []string{"holds 100 bytes", "declared 0"},
		},
		{
			name: "declared size negative",
			open: sealedWith(nil, page.RequiredSeals),
			size: -1,
			want: []error{page.ErrSizeMismatch}, words: []string{"holds 0 bytes", "declared -1"},
		},
	}
	sentinels := []error{page.ErrNotMemfd, page.ErrNotSealed, page.ErrSizeMismatch}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fd := c.open(t)
			err := page.Check(fd, c.size)
			if err == nil {
				t.Fatalf("Check(%s, %d) = nil, want an error", c.name, c.size)
			}
			matched := 0
			for _, s := range sentinels {
				if errors.Is(err, s) {
					matched++
					if !slices.Contains(c.want, s) {
						t.Errorf("Check(%s) = %q: wraps %q, want one of %q", c.name, err, s, c.want)
					}
				}
			}
			if matched != 1 {
				t.Errorf("Check(%s) = %q wraps %d of the sentinels, want exactly 1", c.name, err, matched)
			}
			for _, w := range c.words {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Check(%s) = %q; the message should contain %q", c.name, err, w)
				}
			}
			// Check does not take ownership of fd.
			if fd >= 0 && !fdIsOpen(t, fd) {
				t.Errorf("Check closed the descriptor")
			}
		})
	}
}

func TestCheckSparseHuge(t *testing.T) {
	const tib = int64(1) << 40
	fd := newMemfd(t)
	if err := page.Truncate(fd, tib); err != nil {
		t.Skipf("cannot make a 1 TiB sparse memfd: %v", err)
	}
	if err := page.Seal(fd); err != nil {
		t.Fatal(err)
	}
	if err := page.Check(fd, tib); err != nil {
		t.Fatalf("Check(1 TiB): %v", err)
	}
	for _, size := range []int64{tib - 1, tib + 1, 0, 1 << 39} {
		if err := page.Check(fd, size); !errors.Is(err, page.ErrSizeMismatch) {
			t.Errorf("Check(%d) of a 1 TiB page: %v, want ErrSizeMismatch", size, err)
		}
	}
	// Check touched no page: nothing has been allocated.
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != tib {
		t.Errorf("size = %d, want %d", st.Size, tib)
	}
	if st.Blocks != 0 {
		t.Errorf("Check allocated %d blocks of a sparse page", st.Blocks)
	}
}

func TestSeals(t *testing.T) {
	fd := newMemfd(t)
	addSeals(t, fd, unix.F_SEAL_GROW)
	if s, err := page.Seals(fd); err != nil || s != unix.F_SEAL_GROW {
		t.Errorf("Seals = %s, %v; want GROW", page.SealString(s), err)
	}
	null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(null)
	if _, err := page.Seals(null); err == nil {
		t.Error("Seals of /dev/null succeeded")
	}
	if _, err := page.Seals(-1); !errors.Is(err, unix.EBADF) {
		t.Errorf("Seals(-1): %v, want EBADF", err)
	}
}

func TestSealString(t *testing.T) {
	cases := []struct {
		seals int
		want  string
	}{
		{0, "none"},
		{unix.F_SEAL_SEAL, "SEAL"},
		{unix.F_SEAL_SHRINK, "SHRINK"},
		{unix.F_SEAL_GROW, "GROW"},
		{unix.F_SEAL_WRITE, "WRITE"},
		{unix.F_SEAL_FUTURE_WRITE, "FUTURE_WRITE"},
		{unix.F_SEAL_WRITE | unix.F_SEAL_GROW, "GROW|WRITE"},
		{page.RequiredSeals, "SHRINK|GROW|WRITE"},
		{page.RequiredSeals | unix.F_SEAL_SEAL, "SEAL|SHRINK|GROW|WRITE"},
		{page.RequiredSeals | unix.F_SEAL_SEAL | unix.F_SEAL_FUTURE_WRITE, "SEAL|SHRINK|GROW|WRITE|FUTURE_WRITE"},
		{unix.F_SEAL_SEAL | unix.F_SEAL_FUTURE_WRITE, "SEAL|FUTURE_WRITE"},
	}
	for _, c := range cases {
		if got := page.SealString(c.seals); got != c.want {
			t.Errorf("SealString(%#x) = %q, want %q", c.seals, got, c.want)
		}
	}
}

func TestReadAt(t *testing.T) {
	checkNoLeak(t)
	data := pattern(10000, 3)
	fd := newPage(t, data)

	for _, c := range []struct{ off, n int }{{0, 10000}, {0, 1}, {1, 9999}, {4096, 4096}, {9999, 1}, {5000, 0}} {
		b := make([]byte, c.n)
		n, err := page.ReadAt(fd, b, int64(c.off))
		if err != nil || n != c.n {
			t.Errorf("ReadAt(off %d, len %d) = %d, %v", c.off, c.n, n, err)
			continue
		}
		if !bytes.Equal(b, data[c.off:c.off+c.n]) {
			t.Errorf("ReadAt(off %d, len %d) returned wrong bytes", c.off, c.n)
		}
	}

	// Past the end: the bytes that exist, then ErrUnexpectedEOF.
	b := make([]byte, 100)
	n, err := page.ReadAt(fd, b, 9950)
	if !errors.Is(err, io.ErrUnexpectedEOF) || n != 50 {
		t.Errorf("ReadAt across the end = %d, %v; want 50, ErrUnexpectedEOF", n, err)
	}
	if !bytes.Equal(b[:50], data[9950:]) {
		t.Error("ReadAt across the end returned wrong bytes")
	}
	n, err = page.ReadAt(fd, b, 20000)
	if !errors.Is(err, io.ErrUnexpectedEOF) || n != 0 {
		t.Errorf("ReadAt beyond the end = %d, %v; want 0, ErrUnexpectedEOF", n, err)
	}
	if _, err := page.ReadAt(-1, b, 0); !errors.Is(err, unix.EBADF) {
		t.Errorf("ReadAt(-1): %v, want EBADF", err)
	}
	if _, err := page.ReadAt(fd, b, -1); !errors.Is(err, unix.EINVAL) {
		t.Errorf("ReadAt(off -1): %v, want EINVAL", err)
	}
}

// copyAndCheck copies src into a new page, seals it and checks that it
// holds exactly want.
func copyAndCheck(t testing.TB, src *os.File, want []byte) {
	t.Helper()
	fd := newMemfd(t)
	n, err := page.CopyFrom(fd, src, math.MaxInt64-1)
	if err != nil {
		t.Fatalf("CopyFrom: %v", err)
	}
	if n != int64(len(want)) {
		t.Errorf("CopyFrom copied %d bytes, want %d", n, len(want))
	}
	if err := page.Seal(fd); err != nil {
		t.Fatal(err)
	}
	if err := page.Check(fd, int64(len(want))); err != nil {
		t.Fatalf("Check after CopyFrom: %v", err)
	}
	got, err := page.MapReadOnly(fd, int64(len(want)), true)
	if err != nil {
		t.Fatal(err)
	}
	defer page.Unmap(got)
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && got[i] == want[i] {
			i++
		}
		t.Errorf("copied content differs from the source at byte %d", i)
	}
}

// diskFile writes data to a file in a temporary directory and opens it.
func diskFile(t testing.TB, data []byte) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// memfdFile returns an *os.File on a new memfd holding data.
func memfdFile(t testing.TB, data []byte) *os.File {
	t.Helper()
	fd, err := page.Create("src")
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "memfd-src")
	t.Cleanup(func() { f.Close() })
	if err := page.Write(fd, data); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestCopyFromRegularFile(t *testing.T) {
	checkNoLeak(t)
	data := pattern(5<<20+12345, 11)
	t.Run("disk", func(t *testing.T) {
		copyAndCheck(t, diskFile(t, data), data)
	})
	t.Run("memfd", func(t *testing.T) {
		copyAndCheck(t, memfdFile(t, data), data)
	})
	t.Run("empty", func(t *testing.T) {
		copyAndCheck(t, diskFile(t, nil), nil)
	})
}

func TestCopyFromOffset(t *testing.T) {
	checkNoLeak(t)
	data := pattern(1<<20+777, 12)
	const skip = 12345
	t.Run("disk", func(t *testing.T) {
		f := diskFile(t, data)
		if _, err := f.Seek(skip, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		copyAndCheck(t, f, data[skip:])
	})
	t.Run("memfd", func(t *testing.T) {
		f := memfdFile(t, data)
		if _, err := f.Seek(skip, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		copyAndCheck(t, f, data[skip:])
	})
	t.Run("after read", func(t *testing.T) {
		f := diskFile(t, data)
		head := make([]byte, 100)
		if _, err := io.ReadFull(f, head); err != nil {
			t.Fatal(err)
		}
		copyAndCheck(t, f, data[100:])
	})
	t.Run("at end", func(t *testing.T) {
		f := diskFile(t, data)
		if _, err := f.Seek(0, io.SeekEnd); err != nil {
			t.Fatal(err)
		}
		copyAndCheck(t, f, nil)
	})
}

func TestCopyFromPipe(t *testing.T) {
	checkNoLeak(t)
	data := pattern(3<<20+7, 13)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan error, 1)
	go func() {
		defer w.Close()
		// Odd-sized writes so reads see partial chunks.
		rest := data
		for len(rest) > 0 {
			n := min(len(rest), 65537)
			if _, err := w.Write(rest[:n]); err != nil {
				done <- err
				return
			}
			rest = rest[n:]
		}
		done <- nil
	}()
	copyAndCheck(t, r, data)
	if err := <-done; err != nil {
		t.Fatalf("writer: %v", err)
	}
}

func TestCopyFromPipePartlyRead(t *testing.T) {
	checkNoLeak(t)
	data := pattern(200000, 14)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan error, 1)
	go func() {
		_, err := w.Write(data)
		w.Close()
		done <- err
	}()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	copyAndCheck(t, r, data[1000:])
	if err := <-done; err != nil {
		t.Fatalf("writer: %v", err)
	}
}

func TestCopyFromIntoSealedPage(t *testing.T) {
	checkNoLeak(t)
	fd := newPage(t, nil)
	t.Run("file", func(t *testing.T) {
		n, err := page.CopyFrom(fd, diskFile(t, []byte("payload")), math.MaxInt64-1)
		if err == nil || n != 0 {
			t.Errorf("CopyFrom into a sealed page = %d, %v; want 0 and an error", n, err)
		}
	})
	t.Run("pipe", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if _, err := w.Write([]byte("payload")); err != nil {
			t.Fatal(err)
		}
		w.Close()
		n, err := page.CopyFrom(fd, r, math.MaxInt64-1)
		if !errors.Is(err, unix.EPERM) || n != 0 {
			t.Errorf("CopyFrom into a sealed page = %d, %v; want 0, EPERM", n, err)
		}
	})
	if err := page.Check(fd, 0); err != nil {
		t.Errorf("failed copies changed the page: %v", err)
	}
}

// hugeMemfd returns a sealable MFD_HUGETLB memfd of one huge page, or
// skips the test where the kernel has no hugetlbfs.
func hugeMemfd(t *testing.T) (fd int, size int64) {
	t.Helper()
	fd, err := unix.MemfdCreate("machq-huge", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_HUGETLB)
	if err != nil {
		t.Skipf("memfd_create(MFD_HUGETLB): %v", err)
	}
	closeOnCleanup(t, fd)
	size = 2 << 20
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Skipf("ftruncate of a hugetlbfs memfd: %v", err)
	}
	return fd, size
}

func TestCheckHugetlbUnallocated(t *testing.T) {
	fd, size := hugeMemfd(t)
	// Sealed before any huge page was allocated: touching it may SIGBUS.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, page.RequiredSeals); err != nil {
		t.Skipf("sealing a hugetlbfs memfd: %v", err)
	}
	err := page.Check(fd, size)
	if !errors.Is(err, page.ErrNotMemfd) || !strings.Contains(err.Error(), "hugetlbfs") {
		t.Fatalf("Check of an unallocated hugetlbfs memfd: %v; want ErrNotMemfd naming hugetlbfs", err)
	}
}

func TestCheckHugetlbAllocated(t *testing.T) {
	fd, size := hugeMemfd(t)
	// Allocating needs a free huge page; where the pool is empty the
	// reservation fails cleanly (no page is touched).
	if err := unix.Fallocate(fd, 0, 0, size); err != nil {
		t.Skipf("no huge page to allocate (vm.nr_hugepages): %v", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, page.RequiredSeals); err != nil {
		t.Skipf("sealing a hugetlbfs memfd: %v", err)
	}
	if err := page.Check(fd, size); err != nil {
		t.Fatalf("Check of a fully allocated hugetlbfs memfd: %v", err)
	}
}

// TestSealRefusedWhileMapped: a memfd still mapped for writing cannot be
// sealed; Seal says why (after trying again, in case the kernel only held
// a page for a moment), and succeeds once the mapping is gone.
func TestSealRefusedWhileMapped(t *testing.T) {
	fd, err := page.Create("test")
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := page.Truncate(fd, 4096); err != nil {
		t.Fatal(err)
	}
	b, err := page.MapWritable(fd, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	err = page.Seal(fd)
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "mapped for writing") {
		t.Fatalf("sealing a mapped memfd: %v", err)
	}
	if err := page.Unmap(b); err != nil {
		t.Fatal(err)
	}
	if err := page.Seal(fd); err != nil {
		t.Fatalf("sealing once unmapped: %v", err)
	}
}
