package procfs_test

import (
	"os"
	"testing"

	"github.com/machq/machq/internal/procfs"
	"golang.org/x/sys/unix"
)

// TestStatus checks the figures for this process against what opening a
// file must change.
func TestStatus(t *testing.T) {
	rss, fds, err := procfs.Status(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if rss <= 0 {
		t.Fatalf("RSS %d", rss)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, more, err := procfs.Status(os.Getpid()); err != nil || more != fds+1 {
		t.Fatalf("after opening a file: %d descriptors (%v), want %d", more, err, fds+1)
	}
	if _, _, err := procfs.Status(-1); err == nil {
		t.Fatal("no error for a process that cannot exist")
	}
}

// TestPeak checks that memory touched and released shows in the peak
// after a reset, and not before it.
func TestPeak(t *testing.T) {
	pid := os.Getpid()
	if err := procfs.ResetPeak(pid); err != nil {
		t.Skipf("cannot reset the peak: %v", err)
	}
	before, err := procfs.PeakRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		t.Fatal(err)
	}
	unix.Munmap(b)
	after, err := procfs.PeakRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	if after-before < size/2 {
		t.Errorf("peak rose %d MiB over 64 MiB touched and released", (after-before)>>20)
	}
	if err := procfs.ResetPeak(pid); err != nil {
		t.Fatal(err)
	}
	if reset, _ := procfs.PeakRSS(pid); reset >= after {
		t.Errorf("peak %d MiB after reset, was %d MiB", reset>>20, after>>20)
	}
}
