// Package handoff passes a server's memory-only named queues, and the
// sockets it listens on, to the server that succeeds it on the same host:
// a restart or an upgrade that keeps every stored message without a disk.
//
// What is handed over is a State: one sealed memfd holding its
// description (the format is in docs/RESTART.md), plus descriptors the
// description names by identity (device and inode): listening sockets,
// their lock files and directories, and the pages of stored messages.
// The descriptors travel by whatever carries descriptors between the two
// processes: inherited across execve(2), or parked in systemd's file
// descriptor store and passed back at the next start. Read matches each
// descriptor it is given to what the description names, whatever their
// order, and refuses a state whose descriptors are missing.
package handoff

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/page"
	"github.com/machq/machq/internal/queue"
)

// Version is the version of the state format Write writes. Read accepts
// versions 1 to Version.
const Version = 1

// Magic starts every state.
const Magic = "MACHQHND"

// headerSize is the magic, version, flags and body length.
const headerSize = 8 + 4 + 4 + 8

// ErrFormat reports a state that is not one Read understands: damaged,
// of another program, or of a newer version.
var ErrFormat = errors.New("handoff: not a machq handoff state")

// ID names a file across processes: its device and inode.
type ID struct{ Dev, Ino uint64 }

// IDOf returns the identity of the open file fd.
func IDOf(fd int) (ID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return ID{}, os.NewSyscallError("fstat", err)
	}
	return ID{uint64(st.Dev), st.Ino}, nil
}

// Listener is a listening socket handed over. A socket the service
// manager passed (Managed) is only served; one the server checked in at a
// path comes with the lock that reserves the path and the directory it is
// in, for the successor to remove them when it stops for good.
type Listener struct {
	Managed bool
	Path    string // the path checked in at (or the socket's address)
	FD      int    // the listening socket
	// For a socket not Managed: the lock file and the directory, and
	// the identities of the socket file and the lock file in it, which
	// the successor removes only while they are still those files.
	LockFD, DirFD  int
	Name           string // the socket's file name in the directory
	SockID, LockID ID
}

// State is what a server hands over.
type State struct {
	Listeners []Listener
	Queues    queue.Saved
}

// Descriptors returns every descriptor s names, for passing along with
// its description.
func (s *State) Descriptors() []int {
	var fds []int
	for _, l := range s.Listeners {
		fds = append(fds, l.FD)
		if !l.Managed {
			fds = append(fds, l.LockFD, l.DirFD)
		}
	}
	for _, p := range s.Queues.Payloads {
		if p.FD >= 0 {
			fds = append(fds, p.FD)
		}
	}
	return fds
}

// Write describes s in a new sealed memfd and returns it; the caller owns
// it. The descriptors s names stay the caller's.
func Write(s *State) (int, error) {
	fd, err := page.Create("machq-handoff")
	if err != nil {
		return -1, err
	}
	f := os.NewFile(uintptr(fd), "machq-handoff")
	fail := func(err error) (int, error) {
		f.Close()
		return -1, fmt.Errorf("handoff: write the state: %w", err)
	}
	// The header's length is written last, once known.
	if _, err := f.Seek(headerSize, io.SeekStart); err != nil {
		return fail(err)
	}
	crc := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	bw := bufio.NewWriterSize(io.MultiWriter(f, crc), 1<<20)
	w := &writer{w: bw}
	if err := w.state(s); err != nil {
		return fail(err)
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	if _, err := f.Write(binary.LittleEndian.AppendUint32(nil, crc.Sum32())); err != nil {
		return fail(err)
	}
	hdr := append([]byte(Magic), make([]byte, headerSize-len(Magic))...)
	binary.LittleEndian.PutUint32(hdr[8:], Version)
	binary.LittleEndian.PutUint64(hdr[16:], uint64(w.n))
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return fail(err)
	}
	if err := page.Seal(fd); err != nil {
		return fail(err)
	}
	// The descriptor outlives f: take it back from the *os.File.
	out, err := unix.Dup(fd)
	if err != nil {
		return fail(os.NewSyscallError("dup", err))
	}
	unix.CloseOnExec(out)
	f.Close()
	return out, nil
}

// Read decodes the state in the memfd stateFD and gives each descriptor
// it names one of fds, matched by identity. It returns the descriptors of
// fds the state does not name, for the caller to close. On an error
// nothing is taken: every one of fds stays the caller's.
func Read(stateFD int, fds []int) (*State, []int, error) {
	s, ids, err := decodeFD(stateFD)
	if err != nil {
		return nil, nil, err
	}
	// Several descriptors may be of one file (two sockets checked in in
	// one directory each bring it): each is taken once.
	byID := make(map[ID][]int, len(fds))
	for _, fd := range fds {
		id, err := IDOf(fd)
		if err != nil {
			return nil, nil, fmt.Errorf("handoff: descriptor %d: %w", fd, err)
		}
		byID[id] = append(byID[id], fd)
	}
	taken := make(map[int]bool)
	take := func(id ID, what string) (int, error) {
		for _, fd := range byID[id] {
			if !taken[fd] {
				taken[fd] = true
				return fd, nil
			}
		}
		return -1, fmt.Errorf("handoff: the descriptor of %s (inode %d) was not passed on", what, id.Ino)
	}
	for i := range s.Listeners {
		l := &s.Listeners[i]
		if l.FD, err = take(ids.listeners[i][0], "listening socket "+l.Path); err != nil {
			return nil, nil, err
		}
		if !l.Managed {
			if l.LockFD, err = take(ids.listeners[i][1], "the lock of "+l.Path); err != nil {
				return nil, nil, err
			}
			if l.DirFD, err = take(ids.listeners[i][2], "the directory of "+l.Path); err != nil {
				return nil, nil, err
			}
		}
	}
	for i, id := range ids.pages {
		if id == (ID{}) {
			continue
		}
		if s.Queues.Payloads[i].FD, err = take(id, fmt.Sprintf("page %d", i)); err != nil {
			return nil, nil, err
		}
	}
	// A page must be what a stored page is: sealed, of its size.
	for i, p := range s.Queues.Payloads {
		if p.FD >= 0 {
			if err := page.Check(p.FD, p.Size); err != nil {
				return nil, nil, fmt.Errorf("handoff: page %d: %w", i, err)
			}
		}
	}
	var unused []int
	for _, fd := range fds {
		if !taken[fd] {
			unused = append(unused, fd)
		}
	}
	return s, unused, nil
}

// Discard closes every one of fds that the state in the memfd stateFD
// names (its sockets, their locks and directories, its pages): what a
// successor that cannot take the state over must let go of, so that the
// lock it holds does not keep it from checking in afresh. It returns how
// many it closed; if the state cannot be decoded at all, none.
func Discard(stateFD int, fds []int) int {
	_, ids, err := decodeFD(stateFD)
	if err != nil {
		return 0
	}
	named := make(map[ID]bool)
	for _, l := range ids.listeners {
		for _, id := range l {
			if id != (ID{}) {
				named[id] = true
			}
		}
	}
	for _, id := range ids.pages {
		if id != (ID{}) {
			named[id] = true
		}
	}
	n := 0
	for _, fd := range fds {
		if id, err := IDOf(fd); err == nil && named[id] {
			unix.Close(fd)
			n++
		}
	}
	return n
}

// decodeFD decodes the state in the memfd stateFD.
func decodeFD(stateFD int) (*State, idTable, error) {
	size, err := page.Size(stateFD)
	if err != nil {
		return nil, idTable{}, err
	}
	b, err := page.MapReadOnly(stateFD, size, true)
	if err != nil {
		return nil, idTable{}, err
	}
	defer page.Unmap(b)
	return Decode(b)
}

// idTable is what Decode read of the descriptors: per listener its
// socket, lock and directory, per payload its page (zero if inline).
type idTable struct {
	listeners [][3]ID
	pages     []ID
}

// Decode parses a state's bytes. Descriptors are left at -1; the table
// names them.
func Decode(b []byte) (*State, idTable, error) {
	var ids idTable
	if len(b) < headerSize+4 || string(b[:8]) != Magic {
		return nil, ids, fmt.Errorf("%w: no magic number", ErrFormat)
	}
	v := binary.LittleEndian.Uint32(b[8:])
	if v < 1 || v > Version {
		return nil, ids, fmt.Errorf("%w: version %d, this machqd reads 1 to %d: start the newer machqd", ErrFormat, v, Version)
	}
	if f := binary.LittleEndian.Uint32(b[12:]); f != 0 {
		return nil, ids, fmt.Errorf("%w: flags %#x, none of which this machqd knows", ErrFormat, f)
	}
	n := binary.LittleEndian.Uint64(b[16:])
	if n > uint64(len(b)-headerSize-4) {
		return nil, ids, fmt.Errorf("%w: body of %d bytes in %d", ErrFormat, n, len(b))
	}
	body := b[headerSize : headerSize+int(n)]
	if crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)) != binary.LittleEndian.Uint32(b[headerSize+int(n):]) {
		return nil, ids, fmt.Errorf("%w: checksum mismatch", ErrFormat)
	}
	r := &reader{b: body}
	s := r.state(&ids)
	if r.err == nil && len(r.b) > 0 {
		r.fail("%d bytes after the end", len(r.b))
	}
	if r.err != nil {
		return nil, ids, fmt.Errorf("%w: %w", ErrFormat, r.err)
	}
	return s, ids, nil
}

// writer encodes, counting what it wrote.
type writer struct {
	w   *bufio.Writer
	n   int64
	err error
	buf [8]byte
}

func (w *writer) put(b []byte) {
	if w.err == nil {
		_, w.err = w.w.Write(b)
		w.n += int64(len(b))
	}
}
func (w *writer) u8(v uint8)   { w.put([]byte{v}) }
func (w *writer) u32(v uint32) { binary.LittleEndian.PutUint32(w.buf[:], v); w.put(w.buf[:4]) }
func (w *writer) u64(v uint64) { binary.LittleEndian.PutUint64(w.buf[:], v); w.put(w.buf[:8]) }
func (w *writer) str(s string) { w.u32(uint32(len(s))); w.put([]byte(s)) }
func (w *writer) bool(v bool) {
	if v {
		w.u8(1)
	} else {
		w.u8(0)
	}
}
func (w *writer) id(fd int) {
	id, err := IDOf(fd)
	if err != nil && w.err == nil {
		w.err = err
	}
	w.u64(id.Dev)
	w.u64(id.Ino)
}
func (w *writer) fileID(id ID) { w.u64(id.Dev); w.u64(id.Ino) }

func (w *writer) state(s *State) error {
	w.u32(uint32(len(s.Listeners)))
	for _, l := range s.Listeners {
		w.bool(l.Managed)
		w.str(l.Path)
		w.id(l.FD)
		if !l.Managed {
			w.id(l.LockFD)
			w.id(l.DirFD)
			w.str(l.Name)
			w.fileID(l.SockID)
			w.fileID(l.LockID)
		}
	}
	w.u64(uint64(len(s.Queues.Payloads)))
	for _, p := range s.Queues.Payloads {
		w.bool(p.FD >= 0)
		w.u64(uint64(p.Size))
		w.u8(p.DigestAlg)
		w.str(p.Digest)
		w.bool(p.Charged)
		w.u32(p.UID)
		if p.FD >= 0 {
			w.id(p.FD)
		} else {
			w.put(p.Inline)
		}
	}
	w.u32(uint32(len(s.Queues.Queues)))
	for _, q := range s.Queues.Queues {
		w.str(q.Name)
		w.u32(q.Creator)
		w.bool(q.Owned)
		w.u32(q.Policy.MaxDeliveries)
		w.u32(q.Policy.LeaseMillis)
		w.u64(q.NextSeq)
		w.messages(q.Messages)
		w.u32(uint32(len(q.Groups)))
		for _, g := range q.Groups {
			w.str(g.Name)
			w.u32(g.Creator)
			w.messages(g.Views)
		}
	}
	w.u64(s.Queues.NextStart)
	w.u32(uint32(len(s.Queues.Removed)))
	for _, r := range s.Queues.Removed {
		w.str(r.Name)
		w.u64(r.NextSeq)
		w.u32(r.Policy.MaxDeliveries)
		w.u32(r.Policy.LeaseMillis)
	}
	return w.err
}

func (w *writer) messages(ms []queue.SavedMessage) {
	w.u64(uint64(len(ms)))
	for _, m := range ms {
		w.u64(uint64(m.Payload))
		w.u64(m.Seq)
		w.u32(m.Deliveries)
		w.u8(m.Dead)
		w.u32(m.DiedAfter)
		w.str(m.Note)
		w.str(m.Group)
	}
}

// reader decodes; the first error sticks and every later read returns
// zero values.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
	r.b = nil
}

func (r *reader) take(n uint64, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail("%s: %d bytes wanted, %d left", what, n, len(r.b))
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}
func (r *reader) u8() uint8 {
	if b := r.take(1, "byte"); b != nil {
		return b[0]
	}
	return 0
}
func (r *reader) u32() uint32 {
	if b := r.take(4, "uint32"); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}
func (r *reader) u64() uint64 {
	if b := r.take(8, "uint64"); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}
func (r *reader) str() string { return string(r.take(uint64(r.u32()), "string")) }
func (r *reader) bool() bool {
	switch v := r.u8(); v {
	case 0:
		return false
	case 1:
		return true
	default:
		r.fail("flag %d is neither 0 nor 1", v)
		return false
	}
}
func (r *reader) id() ID { return ID{r.u64(), r.u64()} }

// count reads a count of elements of at least min bytes each, refusing
// one the bytes left cannot hold.
func (r *reader) count(n uint64, min int, what string) int {
	if r.err == nil && n > uint64(len(r.b)/min) {
		r.fail("%d %s in %d bytes", n, what, len(r.b))
		return 0
	}
	return int(n)
}

func (r *reader) state(ids *idTable) *State {
	s := &State{}
	nl := r.count(uint64(r.u32()), 1+4+16, "listeners")
	for range nl {
		l := Listener{Managed: r.bool(), Path: r.str(), FD: -1, LockFD: -1, DirFD: -1}
		var t [3]ID
		t[0] = r.id()
		if !l.Managed {
			t[1], t[2] = r.id(), r.id()
			l.Name = r.str()
			l.SockID, l.LockID = r.id(), r.id()
		}
		s.Listeners = append(s.Listeners, l)
		ids.listeners = append(ids.listeners, t)
	}
	np := r.count(r.u64(), 1+8+1+4+1+4, "payloads")
	if np > 0 {
		s.Queues.Payloads = make([]queue.SavedPayload, 0, np)
		ids.pages = make([]ID, 0, np)
	}
	seen := make(map[ID]bool)
	for range np {
		isPage := r.bool()
		size := r.u64()
		p := queue.SavedPayload{FD: -1, Size: int64(size), DigestAlg: r.u8(), Digest: r.str(), Charged: r.bool(), UID: r.u32()}
		if int64(size) < 0 {
			r.fail("payload of %d bytes", size)
		}
		var id ID
		if isPage {
			id = r.id()
			if r.err == nil && (id == ID{} || seen[id]) {
				r.fail("page inode %d named twice or zero", id.Ino)
			}
			seen[id] = true
		} else {
			p.Inline = append([]byte{}, r.take(size, "inline payload")...)
		}
		s.Queues.Payloads = append(s.Queues.Payloads, p)
		ids.pages = append(ids.pages, id)
	}
	nq := r.count(uint64(r.u32()), 4+4+1+4+4+8+8+4, "queues")
	names := make(map[string]bool)
	for range nq {
		q := queue.SavedQueue{Name: r.str(), Creator: r.u32(), Owned: r.bool()}
		q.Policy.MaxDeliveries, q.Policy.LeaseMillis = r.u32(), r.u32()
		q.NextSeq = r.u64()
		if r.err == nil && (q.Name == "" || names[q.Name]) {
			r.fail("queue name %q empty or repeated", q.Name)
		}
		names[q.Name] = true
		q.Messages = r.messages(np)
		ng := r.count(uint64(r.u32()), 4+4+8, "groups")
		for range ng {
			g := queue.SavedGroup{Name: r.str(), Creator: r.u32()}
			g.Views = r.messages(np)
			q.Groups = append(q.Groups, g)
		}
		s.Queues.Queues = append(s.Queues.Queues, q)
	}
	s.Queues.NextStart = r.u64()
	nr := r.count(uint64(r.u32()), 4+8+4+4, "removed queues")
	for range nr {
		rq := queue.SavedRemoved{Name: r.str(), NextSeq: r.u64()}
		rq.Policy.MaxDeliveries, rq.Policy.LeaseMillis = r.u32(), r.u32()
		s.Queues.Removed = append(s.Queues.Removed, rq)
	}
	return s
}

func (r *reader) messages(payloads int) []queue.SavedMessage {
	n := r.count(r.u64(), 8+8+4+1+4+4+4, "messages")
	if n == 0 {
		return nil
	}
	ms := make([]queue.SavedMessage, 0, n)
	for range n {
		p := r.u64()
		if r.err == nil && p >= uint64(payloads) {
			r.fail("message names payload %d of %d", p, payloads)
		}
		ms = append(ms, queue.SavedMessage{Payload: int(p), Seq: r.u64(), Deliveries: r.u32(), Dead: r.u8(), DiedAfter: r.u32(), Note: r.str(), Group: r.str()})
	}
	return ms
}
