package handoff

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/naming"
	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/queue"
)

// newPage returns a page holding data: sealed unless unsealed is set.
func newPage(t testing.TB, data []byte, unsealed bool) int {
	t.Helper()
	fd, err := page.Create("handoff-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := page.Write(fd, data); err != nil {
		t.Fatal(err)
	}
	if !unsealed {
		if err := page.Seal(fd); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

// dup duplicates the descriptor of c, closed at the end of the test.
func dup(t testing.TB, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	if cerr := rc.Control(func(f uintptr) { fd, err = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// open reports whether fd is an open descriptor.
func open(t testing.TB, fd int) bool {
	t.Helper()
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil && err != unix.EBADF {
		t.Fatalf("F_GETFD %d: %v", fd, err)
	}
	return err == nil
}

// contents returns the bytes of the page fd.
func contents(t testing.TB, fd int) []byte {
	t.Helper()
	size, err := page.Size(fd)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size)
	if n, err := page.ReadAt(fd, b, 0); err != nil || int64(n) != size {
		t.Fatalf("read page %d: %d bytes, %v", fd, n, err)
	}
	return b
}

// fixture is a state to hand over, and what its pages hold.
type fixture struct {
	state *State
	pages map[int][]byte // payload index: bytes
}

// newFixture returns a state naming real descriptors: a socket checked
// in at a path with its lock and directory, a managed socket, pages and
// inline payloads in queues with consumer groups.
func newFixture(t testing.TB) fixture {
	t.Helper()
	dir := t.TempDir()
	reg, err := naming.CheckInWith(filepath.Join(dir, "machq.sock"), naming.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Release)
	h, err := reg.Handover()
	if err != nil {
		t.Fatal(err)
	}
	managed, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "managed.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { managed.Close() })

	f := fixture{state: &State{}, pages: make(map[int][]byte)}
	f.state.Listeners = []Listener{
		{Path: h.Path, FD: dup(t, h.Listener), LockFD: dup(t, h.Lock), DirFD: dup(t, h.Dir), Name: h.Name,
			SockID: ID{h.SockID[0], h.SockID[1]}, LockID: ID{h.LockID[0], h.LockID[1]}},
		{Managed: true, Path: managed.Addr().String(), FD: dup(t, managed), LockFD: -1, DirFD: -1},
	}
	addPage := func(data []byte, uid uint32) {
		f.pages[len(f.state.Queues.Payloads)] = data
		f.state.Queues.Payloads = append(f.state.Queues.Payloads, queue.SavedPayload{
			FD: newPage(t, data, false), Size: int64(len(data)), DigestAlg: 1, Digest: "sha-" + string(data[:4]), Charged: uid != 0, UID: uid})
	}
	addInline := func(data string, uid uint32) {
		f.state.Queues.Payloads = append(f.state.Queues.Payloads, queue.SavedPayload{
			FD: -1, Inline: []byte(data), Size: int64(len(data)), Charged: uid != 0, UID: uid})
	}
	addPage(bytes.Repeat([]byte("page zero "), 1000), 1000) // 0
	addInline("inline one", 1000)                           // 1
	addPage([]byte("page two"), 0)                          // 2
	addInline("", 1001)                                     // 3
	addPage(bytes.Repeat([]byte{0, 1, 2, 3}, 5000), 1001)   // 4
	addInline("inline five", 1002)                          // 5
	f.state.Queues.Queues = []queue.SavedQueue{
		{Name: "jobs", Creator: 1000, NextSeq: 9, Messages: []queue.SavedMessage{
			{Payload: 0, Seq: 3}, {Payload: 1, Seq: 5, Deliveries: 2, Note: "retry"}, {Payload: 3, Seq: 8},
		}},
		{Name: "events", Creator: 1001, Owned: true, Policy: queue.Policy{MaxDeliveries: 5, LeaseMillis: 2500}, NextSeq: 40,
			Groups: []queue.SavedGroup{
				{Name: "audit", Creator: 1001, Views: []queue.SavedMessage{{Payload: 2, Seq: 37}, {Payload: 4, Seq: 39, Deliveries: 1}}},
				{Name: "mail", Creator: 7, Views: []queue.SavedMessage{{Payload: 4, Seq: 39}}},
			}},
		{Name: "events.dlq", Creator: 1001, Owned: true, NextSeq: 1, Messages: []queue.SavedMessage{
			{Payload: 2, Seq: 37, Dead: 1, DiedAfter: 4, Note: "bad input", Group: "mail"},
			{Payload: 5, Seq: 12, Dead: 2, DiedAfter: 5, Group: "audit"},
		}},
		{Name: "idle", Creator: 3, NextSeq: 1},
	}
	f.state.Queues.NextStart = 41
	f.state.Queues.Removed = []queue.SavedRemoved{{Name: "gone", NextSeq: 17, Policy: queue.Policy{LeaseMillis: 100}}}
	return f
}

// descriptors returns what Descriptors returns for s, checking it names
// every descriptor of s once.
func descriptors(t testing.TB, s *State) []int {
	t.Helper()
	fds := s.Descriptors()
	seen := make(map[int]bool)
	for _, fd := range fds {
		if fd < 0 || seen[fd] {
			t.Fatalf("Descriptors %v: %d", fds, fd)
		}
		seen[fd] = true
	}
	if want := 3 + 1 + 3; len(fds) != want {
		t.Fatalf("Descriptors names %d, want %d", len(fds), want)
	}
	return fds
}

// write is Write, failing the test on an error; the state is closed at
// the end of the test.
func write(t testing.TB, s *State) int {
	t.Helper()
	fd, err := Write(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// memfd returns a memfd holding b, as a state.
func memfd(t testing.TB, b []byte) int {
	t.Helper()
	if len(b) == 0 {
		fd, err := page.Create("handoff-test")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	return newPage(t, b, false)
}

// normal returns a copy of s with empty inline payloads nil, as written.
func normal(s *State) *State {
	c := *s
	c.Queues.Payloads = append([]queue.SavedPayload(nil), s.Queues.Payloads...)
	for i := range c.Queues.Payloads {
		if len(c.Queues.Payloads[i].Inline) == 0 {
			c.Queues.Payloads[i].Inline = nil
		}
	}
	return &c
}

// shuffled returns fds in a random order, with extra among them.
func shuffled(fds []int, extra ...int) []int {
	out := append(append([]int(nil), fds...), extra...)
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func TestRoundTrip(t *testing.T) {
	f := newFixture(t)
	stateFD := write(t, f.state)
	size, err := page.Size(stateFD)
	if err != nil {
		t.Fatal(err)
	}
	if err := page.Check(stateFD, size); err != nil {
		t.Fatalf("the state is not a sealed memfd: %v", err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	fds := descriptors(t, f.state)
	for range 20 {
		given := shuffled(fds, p[0])
		s, unused, err := Read(stateFD, given)
		if err != nil {
			t.Fatalf("Read with %v: %v", given, err)
		}
		if !reflect.DeepEqual(unused, []int{p[0]}) {
			t.Fatalf("unused %v, want the pipe %d", unused, p[0])
		}
		// Given the very descriptors written, Read gives each back where
		// it was: the state read is the state written.
		if got, want := normal(s), normal(f.state); !reflect.DeepEqual(got, want) {
			t.Fatalf("read\n%+v\nwritten\n%+v", got, want)
		}
		for i, data := range f.pages {
			if got := contents(t, s.Queues.Payloads[i].FD); !bytes.Equal(got, data) {
				t.Fatalf("payload %d was given a page of %d bytes %q...", i, len(got), got[:min(8, len(got))])
			}
		}
	}

	// Duplicates are matched as well: by identity, not number.
	dups := make(map[int]int) // duplicate: original
	var given []int
	for _, fd := range fds {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(d)
		dups[d] = fd
		given = append(given, d)
	}
	s, unused, err := Read(stateFD, shuffled(given))
	if err != nil || len(unused) != 0 {
		t.Fatalf("Read of duplicates: %v, unused %v", err, unused)
	}
	for _, l := range s.Listeners {
		for _, fd := range []int{l.FD, l.LockFD, l.DirFD} {
			if fd >= 0 {
				if _, ok := dups[fd]; !ok {
					t.Fatalf("listener %s was given %d, not one of the duplicates", l.Path, fd)
				}
			}
		}
	}
	for i, p := range s.Queues.Payloads {
		if p.FD >= 0 {
			if dups[p.FD] != f.state.Queues.Payloads[i].FD {
				t.Fatalf("payload %d was given the duplicate of %d, want that of %d", i, dups[p.FD], f.state.Queues.Payloads[i].FD)
			}
			p.FD = dups[p.FD]
		}
		s.Queues.Payloads[i] = p
	}
	for i := range s.Listeners {
		l := &s.Listeners[i]
		l.FD = dups[l.FD]
		if !l.Managed {
			l.LockFD, l.DirFD = dups[l.LockFD], dups[l.DirFD]
		}
	}
	if got, want := normal(s), normal(f.state); !reflect.DeepEqual(got, want) {
		t.Fatalf("read from duplicates\n%+v\nwritten\n%+v", got, want)
	}

	// The listener read serves.
	for _, l := range s.Listeners {
		if _, err := unix.Getsockname(l.FD); err != nil {
			t.Errorf("listener %s: %v", l.Path, err)
		}
	}
}

func TestEmptyState(t *testing.T) {
	stateFD := write(t, &State{})
	s, unused, err := Read(stateFD, nil)
	if err != nil || len(unused) != 0 {
		t.Fatalf("Read: %v, unused %v", err, unused)
	}
	if !reflect.DeepEqual(s, &State{}) {
		t.Fatalf("read %+v", s)
	}
}

// expectOpen fails unless every one of fds is open.
func expectOpen(t testing.TB, fds []int) {
	t.Helper()
	for _, fd := range fds {
		if !open(t, fd) {
			t.Fatalf("descriptor %d was closed", fd)
		}
	}
}

func TestReadMissingPage(t *testing.T) {
	f := newFixture(t)
	stateFD := write(t, f.state)
	missing := f.state.Queues.Payloads[4].FD
	var given []int
	for _, fd := range descriptors(t, f.state) {
		if fd != missing {
			given = append(given, fd)
		}
	}
	s, unused, err := Read(stateFD, shuffled(given))
	if err == nil || s != nil || unused != nil {
		t.Fatalf("Read without page 4: %v, %v, %v", s, unused, err)
	}
	if !strings.Contains(err.Error(), "page 4") || !strings.Contains(err.Error(), "not passed on") {
		t.Errorf("the error does not name page 4: %v", err)
	}
	expectOpen(t, given)

	// A listener's lock missing.
	given = given[:0]
	for _, fd := range descriptors(t, f.state) {
		if fd != f.state.Listeners[0].LockFD {
			given = append(given, fd)
		}
	}
	if _, _, err := Read(stateFD, given); err == nil || !strings.Contains(err.Error(), "lock of "+f.state.Listeners[0].Path) {
		t.Errorf("Read without the lock: %v", err)
	}
	expectOpen(t, given)

	// A descriptor closed meanwhile.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	unix.Close(p[0])
	unix.Close(p[1])
	if _, _, err := Read(stateFD, append(descriptors(t, f.state), p[0])); err == nil {
		t.Error("Read of a closed descriptor succeeded")
	}
}

func TestReadBadPage(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, p *queue.SavedPayload)
		want error
	}{
		{"not sealed", func(t *testing.T, p *queue.SavedPayload) {
			p.FD = newPage(t, []byte("unsealed"), true)
			p.Size = 8
		}, page.ErrNotSealed},
		{"larger", func(t *testing.T, p *queue.SavedPayload) { p.Size++ }, page.ErrSizeMismatch},
		{"smaller", func(t *testing.T, p *queue.SavedPayload) { p.Size-- }, page.ErrSizeMismatch},
		{"not a memfd", func(t *testing.T, p *queue.SavedPayload) {
			var fds [2]int
			if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
			p.FD = fds[0]
		}, page.ErrNotMemfd},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			tc.edit(t, &f.state.Queues.Payloads[2])
			stateFD := write(t, f.state)
			given := descriptors(t, f.state)
			_, _, err := Read(stateFD, shuffled(given))
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "page 2") {
				t.Fatalf("Read: %v, want an error about page 2 wrapping %v", err, tc.want)
			}
			expectOpen(t, given)
		})
	}
}

// stateBytes returns the bytes of the state stateFD.
func stateBytes(t testing.TB, stateFD int) []byte {
	t.Helper()
	return contents(t, stateFD)
}

func TestReadDamaged(t *testing.T) {
	f := newFixture(t)
	b := stateBytes(t, write(t, f.state))
	given := descriptors(t, f.state)
	// Every byte flipped, the flags (none known) included.
	for i := range b {
		d := bytes.Clone(b)
		d[i] ^= 0x5a
		if _, _, err := Decode(d); !errors.Is(err, ErrFormat) {
			t.Fatalf("byte %d flipped: %v", i, err)
		}
	}
	d := bytes.Clone(b)
	d[headerSize+len(d[headerSize:])/2] ^= 1
	s, unused, err := Read(memfd(t, d), given)
	if !errors.Is(err, ErrFormat) || s != nil || unused != nil {
		t.Fatalf("Read of a flipped bit: %v", err)
	}
	expectOpen(t, given)
}

func TestReadNewerVersion(t *testing.T) {
	f := newFixture(t)
	b := stateBytes(t, write(t, f.state))
	binary.LittleEndian.PutUint32(b[8:], Version+1)
	_, _, err := Read(memfd(t, b), descriptors(t, f.state))
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), fmt.Sprintf("version %d", Version+1)) {
		t.Fatalf("Read of version %d: %v", Version+1, err)
	}
	binary.LittleEndian.PutUint32(b[8:], 0)
	if _, _, err := Decode(b); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "version 0") {
		t.Fatalf("Decode of version 0: %v", err)
	}
}

func TestReadTruncated(t *testing.T) {
	f := newFixture(t)
	b := stateBytes(t, write(t, f.state))
	for n := range len(b) {
		s, _, err := Decode(b[:n])
		if !errors.Is(err, ErrFormat) || s != nil {
			t.Fatalf("truncated to %d bytes of %d: %v", n, len(b), err)
		}
	}
	given := descriptors(t, f.state)
	for _, n := range []int{0, 8, headerSize, headerSize + 4, len(b) - 1} {
		if _, _, err := Read(memfd(t, b[:n]), given); !errors.Is(err, ErrFormat) {
			t.Fatalf("Read truncated to %d bytes: %v", n, err)
		}
	}
	expectOpen(t, given)
}

// frame wraps body in a header and checksum, as Write does.
func frame(body []byte) []byte {
	b := append([]byte(Magic), make([]byte, headerSize-len(Magic))...)
	binary.LittleEndian.PutUint32(b[8:], Version)
	binary.LittleEndian.PutUint64(b[16:], uint64(len(body)))
	b = append(b, body...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)))
}

// TestDecodeHugeCounts gives Decode, in well-formed frames, counts far
// beyond what the bytes left can hold: each is refused before anything
// of its size is allocated.
func TestDecodeHugeCounts(t *testing.T) {
	le := binary.LittleEndian
	u32 := func(b []byte, v uint32) []byte { return le.AppendUint32(b, v) }
	u64 := func(b []byte, v uint64) []byte { return le.AppendUint64(b, v) }
	str := func(b []byte, s string) []byte { return append(u32(b, uint32(len(s))), s...) }
	queueHead := func(b []byte) []byte {
		b = str(b, "q")
		b = u32(b, 0)
		b = append(b, 0)
		b = u32(u32(b, 0), 0)
		return u64(b, 1)
	}
	pad := make([]byte, 64)
	for _, tc := range []struct {
		name string
		body []byte
		want string
	}{
		{"listeners", append(u32(nil, 1<<31), pad...), "listeners"},
		{"payloads", append(u64(u32(nil, 0), 1<<62), pad...), "payloads"},
		{"queues", append(u32(u64(u32(nil, 0), 0), 1<<31), pad...), "queues"},
		{"messages", append(u64(queueHead(u32(u64(u32(nil, 0), 0), 1)), 1<<60), pad...), "messages"},
		{"groups", append(u32(u64(queueHead(u32(u64(u32(nil, 0), 0), 1)), 0), 1<<31), pad...), "groups"},
		{"string", append(u32(u64(u32(nil, 0), 0), 1), append(u32(nil, 1<<31), pad...)...), "string"},
		{"inline", append(u64(append(u64(u32(nil, 0), 1), 0), 1<<40), make([]byte, 30)...), "inline payload"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, _, err := Decode(frame(tc.body))
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode: %v, want an error about %s", err, tc.want)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
				t.Errorf("Decode allocated %d bytes", grew)
			}
		})
	}
}

func TestDecodeRefuses(t *testing.T) {
	le := binary.LittleEndian
	// One page payload named by the identity given.
	pagePayload := func(b []byte, id ID) []byte {
		b = append(b, 1)
		b = le.AppendUint64(b, 4)
		b = append(b, 0)
		b = le.AppendUint32(b, 0)
		b = append(b, 0)
		b = le.AppendUint32(b, 0)
		return le.AppendUint64(le.AppendUint64(b, id.Dev), id.Ino)
	}
	twoPages := le.AppendUint64(le.AppendUint32(nil, 0), 2)
	twoPages = pagePayload(pagePayload(twoPages, ID{1, 2}), ID{1, 2})
	twoPages = le.AppendUint32(twoPages, 0)
	zeroPage := le.AppendUint64(le.AppendUint32(nil, 0), 1)
	zeroPage = le.AppendUint32(pagePayload(zeroPage, ID{}), 0)
	// No listeners, payloads or queues; next start 0, nothing removed.
	empty := le.AppendUint32(le.AppendUint64(le.AppendUint32(le.AppendUint64(le.AppendUint32(nil, 0), 0), 0), 0), 0)
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"one page twice", frame(twoPages), "named twice"},
		{"page of no identity", frame(zeroPage), "named twice or zero"},
		{"bytes after the end", frame(append(bytes.Clone(empty), 0)), "after the end"},
		{"flag of 2", frame(append(append(le.AppendUint32(nil, 1), 2), make([]byte, 40)...)), "neither 0 nor 1"},
		{"no magic", append([]byte("MACHQHNX"), frame(empty)[8:]...), "no magic"},
		{"body longer than the state", func() []byte {
			b := frame(empty)
			le.PutUint64(b[16:], 1<<63)
			return b
		}(), "body of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Decode(tc.b)
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode: %v, want %q", err, tc.want)
			}
		})
	}
	if s, _, err := Decode(frame(empty)); err != nil || !reflect.DeepEqual(s, &State{}) {
		t.Fatalf("Decode of an empty state: %+v, %v", s, err)
	}
}

func FuzzDecode(f *testing.F) {
	fx := newFixture(f)
	b := stateBytes(f, write(f, fx.state))
	f.Add(b)
	f.Add(stateBytes(f, write(f, &State{})))
	f.Add(b[:len(b)/2])
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkDecode(t, b)
		// The same body behind a good checksum, for the parser to see
		// what a mutation of a state's body makes of it.
		if len(b) >= headerSize+4 {
			checkDecode(t, frame(b[headerSize:len(b)-4]))
		} else {
			checkDecode(t, frame(b))
		}
	})
}

// checkDecode decodes b and checks what Decode made of it.
func checkDecode(t *testing.T, b []byte) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s, ids, err := Decode(b)
	runtime.ReadMemStats(&after)
	// What a decoded state holds is bounded by the bytes it came
	// from, a small multiple of them.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64*uint64(len(b))+1<<20 {
		t.Fatalf("Decode of %d bytes allocated %d", len(b), grew)
	}
	if err != nil {
		if !errors.Is(err, ErrFormat) || s != nil {
			t.Fatalf("Decode: %v, state %v", err, s)
		}
		return
	}
	if len(ids.listeners) != len(s.Listeners) || len(ids.pages) != len(s.Queues.Payloads) {
		t.Fatalf("%d listener and %d page identities for %d listeners and %d payloads",
			len(ids.listeners), len(ids.pages), len(s.Listeners), len(s.Queues.Payloads))
	}
	for _, l := range s.Listeners {
		if l.FD != -1 || l.LockFD != -1 || l.DirFD != -1 {
			t.Fatalf("listener decoded with descriptors: %+v", l)
		}
	}
	seen := make(map[ID]bool)
	for i, p := range s.Queues.Payloads {
		if p.FD != -1 || p.Size < 0 {
			t.Fatalf("payload %d: %+v", i, p)
		}
		if id := ids.pages[i]; id != (ID{}) {
			if seen[id] || p.Inline != nil {
				t.Fatalf("page %d: %+v, identity %v", i, p, id)
			}
			seen[id] = true
		} else if int64(len(p.Inline)) != p.Size {
			t.Fatalf("inline payload %d: %d bytes, size %d", i, len(p.Inline), p.Size)
		}
	}
	names := make(map[string]bool)
	check := func(ms []queue.SavedMessage) {
		for _, m := range ms {
			if m.Payload < 0 || m.Payload >= len(s.Queues.Payloads) {
				t.Fatalf("message %d names payload %d of %d", m.Seq, m.Payload, len(s.Queues.Payloads))
			}
		}
	}
	for _, q := range s.Queues.Queues {
		if q.Name == "" || names[q.Name] {
			t.Fatalf("queue name %q", q.Name)
		}
		names[q.Name] = true
		check(q.Messages)
		for _, g := range q.Groups {
			check(g.Views)
		}
	}
}

// TestTwoSocketsInOneDirectory: two sockets checked in in one directory
// bring two descriptors of it; the state names it twice and takes both.
func TestTwoSocketsInOneDirectory(t *testing.T) {
	dir := t.TempDir()
	st := &State{}
	for _, name := range []string{"a.sock", "b.sock"} {
		reg, err := naming.CheckInWith(filepath.Join(dir, name), naming.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(reg.Release)
		h, err := reg.Handover()
		if err != nil {
			t.Fatal(err)
		}
		st.Listeners = append(st.Listeners, Listener{Path: h.Path, FD: dup(t, h.Listener), LockFD: dup(t, h.Lock), DirFD: dup(t, h.Dir), Name: h.Name,
			SockID: ID{h.SockID[0], h.SockID[1]}, LockID: ID{h.LockID[0], h.LockID[1]}})
	}
	fd := write(t, st)
	got, unused, err := Read(fd, st.Descriptors())
	if err != nil {
		t.Fatalf("a state of two sockets in one directory: %v", err)
	}
	if len(unused) != 0 || got.Listeners[0].DirFD == got.Listeners[1].DirFD {
		t.Fatalf("directories taken as %d and %d, %d unused", got.Listeners[0].DirFD, got.Listeners[1].DirFD, len(unused))
	}
}
