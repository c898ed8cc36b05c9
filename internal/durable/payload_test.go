package durable

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/page"
)

// sealedPage returns a sealed page holding data.
func sealedPage(t *testing.T, data []byte) int {
	t.Helper()
	fd, err := page.Create("test")
	must(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	must(t, page.Write(fd, data))
	must(t, page.Seal(fd))
	return fd
}

func readPage(t *testing.T, fd int, size int64) []byte {
	t.Helper()
	b := make([]byte, size)
	if _, err := page.ReadAt(fd, b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func payloadFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, PayloadDir))
	must(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestPageMessagesSurviveAndGo(t *testing.T) {
	dir := t.TempDir()
	s, _, _ := mustOpen(t, Options{Dir: dir})
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	fd := sealedPage(t, data)
	// The page's file position, shared with every holder, is left alone.
	if _, err := unix.Seek(fd, 123, 0); err != nil {
		t.Fatal(err)
	}
	must(t, s.StoreFile(ctx, "big", 1, 0, Attrs{}, fd, int64(len(data))))
	must(t, s.StoreFile(ctx, "big", 2, 0, Attrs{}, fd, int64(len(data))))
	if off, _ := unix.Seek(fd, 0, 1); off != 123 {
		t.Errorf("the page's file position moved to %d", off)
	}
	must(t, s.Store(ctx, "big", 3, 0, Attrs{}, []byte("small")))
	must(t, s.Close())
	// A payload file whose record a crash took: an orphan.
	must(t, os.WriteFile(filepath.Join(dir, PayloadDir, "0123.page"), []byte("orphan"), 0o600))

	s, qs, rep := mustOpen(t, Options{Dir: dir})
	big := qs["big"]
	if len(big.Messages) != 3 || rep.PayloadFiles != 2 || rep.OrphansRemoved != 1 {
		t.Fatalf("recovered %+v, report %v: want 3 messages, 2 in files, 1 orphan removed", big.Messages, rep)
	}
	if rep.PayloadBytes != 2*int64(len(data))+5 {
		t.Errorf("report counts %d payload bytes", rep.PayloadBytes)
	}
	m := big.Messages[0]
	if m.Payload != nil || m.Size != int64(len(data)) {
		t.Fatalf("message 1: %d inline bytes, size %d", len(m.Payload), m.Size)
	}
	pfd, size, err := OpenPayload(m.File)
	must(t, err)
	defer unix.Close(pfd)
	if size != int64(len(data)) || !bytes.Equal(readPage(t, pfd, size), data) {
		t.Fatal("the payload read back differs from the page stored")
	}
	if err := page.Check(pfd, size); err != nil {
		t.Fatalf("the page made from a payload file: %v", err)
	}
	if got := payloadFiles(t, dir); len(got) != 2 {
		t.Fatalf("payload files %v, want the two referenced", got)
	}
	// Taken, their files go once the take is durable.
	must(t, s.Take(ctx, "big", 1))
	if got := payloadFiles(t, dir); len(got) != 1 {
		t.Fatalf("after one take the payload files are %v", got)
	}
	must(t, s.Drop(ctx, "big"))
	if got := payloadFiles(t, dir); len(got) != 0 {
		t.Fatalf("after the queue is dropped the payload files are %v", got)
	}
}

// procIO returns syscr and syscw of /proc/self/io: read and write system
// calls, sendfile(2) and copy_file_range(2) counting one whatever they
// move.
func procIO(t *testing.T) (r, w int64) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("no /proc/self/io: %v", err)
	}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(line, ":")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "syscr":
			r = n
		case "syscw":
			w = n
		}
	}
	return r, w
}

// peakRise runs fn and returns how far the resident memory's peak
// (VmHWM, reset first) rose above its level before.
func peakRise(t *testing.T, fn func()) int64 {
	t.Helper()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Skipf("cannot reset the peak: %v", err)
	}
	hwm := func() int64 {
		b, err := os.ReadFile("/proc/self/status")
		must(t, err)
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				return kb << 10
			}
		}
		t.Fatal("no VmHWM")
		return 0
	}
	before := hwm()
	fn()
	return hwm() - before
}

// TestPayloadBytesNeverPassThroughTheProcess stores a 64 MiB page and
// reads it back: a handful of system calls each way, and no rise of the
// resident memory, where a copy through user memory would make thousands
// of reads and writes or map the whole payload.
func TestPayloadBytesNeverPassThroughTheProcess(t *testing.T) {
	const size = 64 << 20
	dir := t.TempDir()
	s, _, _ := mustOpen(t, Options{Dir: dir})
	src, err := page.Create("big")
	must(t, err)
	defer unix.Close(src)
	must(t, page.Truncate(src, size))
	must(t, page.Write(src, []byte("head")))
	must(t, page.Seal(src))

	var calls [2]int64
	rise := peakRise(t, func() {
		r0, w0 := procIO(t)
		must(t, s.StoreFile(ctx, "big", 1, 0, Attrs{}, src, size))
		r1, w1 := procIO(t)
		calls[0] = (r1 - r0) + (w1 - w0)
	})
	if calls[0] > 64 {
		t.Errorf("storing 64 MiB made %d read and write calls: the bytes went through the process", calls[0])
	}
	if rise > 16<<20 {
		t.Errorf("storing 64 MiB raised the resident memory by %d bytes", rise)
	}
	must(t, s.Close())

	_, qs, _ := mustOpen(t, Options{Dir: dir})
	m := qs["big"].Messages[0]
	var fd int
	rise = peakRise(t, func() {
		r0, w0 := procIO(t)
		var err error
		fd, _, err = OpenPayload(m.File)
		must(t, err)
		r1, w1 := procIO(t)
		calls[1] = (r1 - r0) + (w1 - w0)
	})
	defer unix.Close(fd)
	if calls[1] > 64 {
		t.Errorf("reading 64 MiB back made %d read and write calls", calls[1])
	}
	if rise > 16<<20 {
		t.Errorf("reading 64 MiB back raised the resident memory by %d bytes", rise)
	}
	head := make([]byte, 4)
	if _, err := page.ReadAt(fd, head, 0); err != nil || string(head) != "head" {
		t.Fatalf("the page read back begins %q (%v)", head, err)
	}
	t.Logf("64 MiB: %d calls to store, %d to read back", calls[0], calls[1])
}
