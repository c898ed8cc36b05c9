package journal

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// FS is the file system a journal writes through: the real one (OSFS),
// or, in tests, one that can lose every byte not yet synced and tear the
// last write, as a power loss would.
type FS interface {
	// Create creates (or truncates) the file name for appending.
	Create(name string) (File, error)
	// Open opens the file name for reading and, for the last segment,
	// appending after recovery.
	Open(name string) (File, error)
	// Remove removes the file name.
	Remove(name string) error
	// List returns the names of the files in the journal's directory,
	// sorted.
	List() ([]string, error)
	// SyncDir makes the directory's entries (created and removed files)
	// durable.
	SyncDir() error
}

// File is an open journal file.
type File interface {
	io.ReaderAt
	// Write writes at the file's write position, which it advances:
	// after Create, 0; after Open, the file's length; after Truncate,
	// the size cut to.
	io.Writer
	// Sync makes what was written durable (fdatasync).
	Sync() error
	// Truncate cuts the file to size bytes; the next Write goes there.
	Truncate(size int64) error
	// Size returns the file's length.
	Size() (int64, error)
	Close() error
}

// Preallocator is a File that can give itself its blocks ahead of the
// writes: its length becomes size, read as zeros past what was written,
// and the write position stays. Overwriting blocks a file already has
// makes a sync flush the data alone, where appending makes it also
// commit the file's new length to the file system's journal: about
// twice as long on ext4. OSFS's files are Preallocators.
type Preallocator interface {
	Preallocate(size int64) error
}

// OSFS is the journal's directory on the real file system.
type OSFS struct{ Dir string }

// Create implements FS.
func (f OSFS) Create(name string) (File, error) {
	fh, err := os.OpenFile(filepath.Join(f.Dir, name), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	return &osFile{File: fh}, nil
}

// Open implements FS.
func (f OSFS) Open(name string) (File, error) {
	fh, err := os.OpenFile(filepath.Join(f.Dir, name), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	st, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, err
	}
	return &osFile{File: fh, off: st.Size()}, nil
}

// Remove implements FS.
func (f OSFS) Remove(name string) error { return os.Remove(filepath.Join(f.Dir, name)) }

// List implements FS.
func (f OSFS) List() ([]string, error) {
	ents, err := os.ReadDir(f.Dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// SyncDir implements FS.
func (f OSFS) SyncDir() error {
	d, err := os.Open(f.Dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// osFile writes at its own position (pwrite), not with O_APPEND: a
// preallocated segment is longer than what was written to it.
type osFile struct {
	*os.File
	off int64 // where the next Write goes
}

func (f *osFile) Write(p []byte) (int, error) {
	n, err := f.File.WriteAt(p, f.off)
	f.off += int64(n)
	return n, err
}

func (f *osFile) Truncate(size int64) error {
	if err := f.File.Truncate(size); err != nil {
		return err
	}
	f.off = size
	return nil
}

func (f *osFile) Size() (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Sync is fdatasync(2): the data and what is needed to read it back.
func (f *osFile) Sync() error { return fdatasync(f.File) }

// Preallocate implements Preallocator with fallocate(2). A file system
// that cannot (EOPNOTSUPP) is left as it is: the journal appends there.
func (f *osFile) Preallocate(size int64) error {
	return preallocate(f.File, size)
}

// MemFS is an in-memory FS for tests that can simulate a power loss:
// Crash keeps of each file only what was synced, plus, for the file
// written last, a torn prefix of what followed, as a disk might. It is
// safe for concurrent use.
type MemFS struct {
	mu    sync.Mutex
	files map[string]*memFile
	// dirSynced are the names whose creation the directory has made
	// durable; a file created and not yet so is lost in a crash.
	dirSynced map[string]bool
	last      *memFile
	syncs     int   // file syncs that succeeded
	fail      error // returned by writes and syncs: a failing disk
	failSync  error // returned by syncs: writes reach the cache, never the disk
}

// PowerOff makes every sync fail with err from now on while writes still
// land in the cache: what is written from here is lost, or torn, by the
// next Crash, as when the power goes while writes are under way.
func (m *MemFS) PowerOff(err error) {
	m.mu.Lock()
	m.failSync = err
	m.mu.Unlock()
}

// SetFail makes every write and sync fail with err from now on, as a
// failing disk; nil heals it.
func (m *MemFS) SetFail(err error) {
	m.mu.Lock()
	m.fail = err
	m.mu.Unlock()
}

type memFile struct {
	fs      *MemFS
	name    string
	data    []byte
	synced  int // bytes durable
	removed bool
}

// NewMemFS returns an empty MemFS.
func NewMemFS() *MemFS {
	return &MemFS{files: make(map[string]*memFile), dirSynced: make(map[string]bool)}
}

// Create implements FS.
func (m *MemFS) Create(name string) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := &memFile{fs: m, name: name}
	m.files[name] = f
	delete(m.dirSynced, name)
	return f, nil
}

// Open implements FS.
func (m *MemFS) Open(name string) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.files[name]
	if f == nil {
		return nil, os.ErrNotExist
	}
	return f, nil
}

// Remove implements FS.
func (m *MemFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.files[name]
	if f == nil {
		return os.ErrNotExist
	}
	f.removed = true
	delete(m.files, name)
	return nil
}

// List implements FS.
func (m *MemFS) List() ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var names []string
	for n := range m.files {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// SyncDir implements FS.
func (m *MemFS) SyncDir() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	if m.failSync != nil {
		return m.failSync
	}
	for n := range m.files {
		m.dirSynced[n] = true
	}
	return nil
}

// Crash simulates a power loss (and the power coming back): files whose creation was not synced are
// gone, the others keep what was synced, and the file written last keeps
// in addition the first torn bytes of what followed (torn may be 0).
func (m *MemFS) Crash(torn int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n, f := range m.files {
		if !m.dirSynced[n] {
			delete(m.files, n)
			continue
		}
		keep := f.synced
		if f == m.last {
			keep = min(len(f.data), f.synced+torn)
		}
		f.data = append([]byte(nil), f.data[:keep]...)
		f.synced = keep
	}
	m.last = nil
	m.failSync = nil // the power is back
}

// Corrupt applies fn to the bytes of the file name, as a damaged disk.
func (m *MemFS) Corrupt(name string, fn func([]byte) []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f := m.files[name]; f != nil {
		f.data = fn(f.data)
		f.synced = len(f.data)
	}
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) Write(p []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.fs.fail != nil {
		return 0, f.fs.fail
	}
	if f.removed {
		return 0, errors.New("memfs: write to a removed file")
	}
	f.data = append(f.data, p...)
	f.fs.last = f
	return len(p), nil
}

func (f *memFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.fs.fail != nil {
		return f.fs.fail
	}
	if f.fs.failSync != nil {
		return f.fs.failSync
	}
	f.synced = len(f.data)
	f.fs.syncs++
	return nil
}

// Syncs returns how many file syncs succeeded.
func (m *MemFS) Syncs() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.syncs
}

func (f *memFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if int(size) < len(f.data) {
		f.data = f.data[:size]
	}
	f.synced = min(f.synced, len(f.data))
	return nil
}

func (f *memFile) Size() (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	return int64(len(f.data)), nil
}

func (f *memFile) Close() error { return nil }
