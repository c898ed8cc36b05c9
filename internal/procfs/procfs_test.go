package procfs_test

import (
	"os"
	"testing"

	"github.com/machq/machq/internal/procfs"
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
