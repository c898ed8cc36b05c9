package integration_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/internal/wiretest"
)

// reserveHugePages makes sure the kernel's pool holds at least n free
// huge pages for the test, raising vm.nr_hugepages and putting it back
// when the test ends; it skips the test where that cannot be done.
func reserveHugePages(t *testing.T, n int) {
	t.Helper()
	const knob = "/proc/sys/vm/nr_hugepages"
	old, err := os.ReadFile(knob)
	if err != nil {
		t.Skipf("no huge pages here: %v", err)
	}
	had, err := strconv.Atoi(strings.TrimSpace(string(old)))
	if err != nil {
		t.Fatalf("%s: %q", knob, old)
	}
	if err := os.WriteFile(knob, []byte(strconv.Itoa(had+n)), 0); err != nil {
		t.Skipf("cannot reserve huge pages: %v", err)
	}
	t.Cleanup(func() { os.WriteFile(knob, old, 0) })
	free := hugePagesFree(t)
	if free < n {
		t.Skipf("asked the kernel for %d more huge pages, %d are free", n, free)
	}
}

// hugePagesFree returns HugePages_Free from /proc/meminfo.
func hugePagesFree(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "HugePages_Free:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("/proc/meminfo: %q", line)
			}
			return n
		}
	}
	return 0
}

// hugePage returns a sealed MFD_HUGETLB memfd of size bytes; with fill,
// every huge page is allocated and holds fill's pattern, written
// through a mapping (hugetlbfs has no write(2)).
func hugePage(t *testing.T, size int64, fill func([]byte)) int {
	t.Helper()
	fd, err := unix.MemfdCreate("machq-huge", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_HUGETLB)
	if err != nil {
		t.Skipf("memfd_create(MFD_HUGETLB): %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatalf("ftruncate of a hugetlbfs memfd to %d: %v", size, err)
	}
	if fill != nil {
		mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			t.Fatalf("mapping a hugetlbfs memfd: %v", err)
		}
		fill(mem)
		if err := unix.Munmap(mem); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, page.RequiredSeals); err != nil {
		t.Fatalf("sealing a hugetlbfs memfd: %v", err)
	}
	return fd
}

// TestIntegrationHugetlbPages: machqd refuses a hugetlbfs page whose
// huge pages are not all allocated (a consumer touching the rest could
// be killed by SIGBUS once the pool runs out), and passes one that is
// fully allocated to a consumer, which reads it whole.
func TestIntegrationHugetlbPages(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to reserve huge pages")
	}
	const size = 4 << 20 // two huge pages
	reserveHugePages(t, 4)
	socket := filepath.Join(t.TempDir(), "machq.sock")
	startDaemon(t, socket, "--log-level", "warn")
	ctx := ctxT(t)
	raw := wiretest.DialHello(t, socket)

	empty := hugePage(t, size, nil)
	raw.Write(wire.AppendStore(nil, 1, wire.Store{Size: size, Queue: []byte("huge")}, nil, true), empty)
	if msg := raw.ExpectError(wire.CodeBadPage); !strings.Contains(msg, "hugetlbfs") {
		t.Fatalf("an unallocated hugetlbfs page was refused, but not for being one: %q", msg)
	}

	pattern := func(b []byte) {
		for i := range b {
			b[i] = byte(i*7 + i>>12)
		}
	}
	full := hugePage(t, size, pattern)
	raw.Write(wire.AppendStore(nil, 2, wire.Store{Size: size, Queue: []byte("huge")}, nil, true), full)
	if f := raw.Read(); f.Op != wire.OpStored {
		t.Fatalf("a fully allocated hugetlbfs page: got %s, want STORED", f.Op)
	}

	c := dial(t, socket)
	m, err := c.Retrieve(ctx, "huge")
	if err != nil {
		t.Fatalf("retrieve of the hugetlbfs page: %v", err)
	}
	defer m.Close()
	want := make([]byte, size)
	pattern(want)
	if !bytes.Equal(m.Bytes(), want) {
		t.Fatal("the hugetlbfs page came back with other bytes than were written")
	}
	if _, err := c.Retrieve(ctx, "huge"); err == nil {
		t.Fatal("the refused page was stored after all")
	}
}
