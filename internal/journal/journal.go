package journal

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Errors of a journal.
var (
	// ErrCorrupt: recovery found a damaged record with valid ones after
	// it; Options.SkipCorrupt quarantines the damage instead.
	ErrCorrupt = errors.New("journal: corrupt record in the middle of the journal")
	// ErrForeign: a segment belongs to another journal (its directory id
	// differs), or the id file is missing while segments exist.
	ErrForeign = errors.New("journal: segment of another journal")
	// ErrFailed: a write or sync failed; the journal acknowledges nothing
	// more (a failed sync is never retried and taken for success).
	ErrFailed = errors.New("journal: write or sync failed; nothing more is acknowledged")
	// ErrClosed: the journal is closed.
	ErrClosed = errors.New("journal: closed")
)

// Options configures a journal.
type Options struct {
	// FS is the directory the journal lives in.
	FS FS
	// SegmentSize bounds a segment file: a new one begins once a write
	// would pass it. Default 64 MiB.
	SegmentSize int64
	// SkipCorrupt lets recovery go past damaged records with valid ones
	// after them: their bytes are kept in a quarantine file and the
	// records in them are lost (the report says which). Without it,
	// Open refuses.
	SkipCorrupt bool
	// SyncInterval chooses the sync policy. 0, the default, syncs every
	// batch before any record of it is committed: a committed record
	// survives a power loss. A positive interval commits a record once
	// it is written to the segment (write(2) returned: it survives the
	// process, not the power), and syncs what was written every
	// SyncInterval, before a segment is closed, and at Close: a power
	// loss may take the records committed in the last SyncInterval (a
	// suffix of them, never one without those before it). Negative is
	// refused.
	SyncInterval time.Duration
	// OnSync, if not nil, is called after each sync of the log made
	// records durable: how long the sync took and how many records it
	// covered. It runs on the journal's writer (or syncer): it must be
	// quick and must not call the Journal.
	OnSync func(took time.Duration, records int)
}

// Report says what recovery found.
type Report struct {
	Segments int
	Records  int
	Bytes    int64 // of the records replayed
	// NextLSN is the number the next record written gets.
	NextLSN uint64
	// TornTail names the segment and offset where a torn last write was
	// cut off ("" if none), and how many bytes went.
	TornTail    string
	TornBytes   int64
	Quarantined []Quarantine
	Took        time.Duration
}

// Quarantine is a damaged range of a segment that recovery went past.
type Quarantine struct {
	Segment    string
	From, To   int64  // byte range in the segment
	File       string // where its bytes were kept
	LostBefore uint64 // the first record number found after it
}

// Journal is an open write-ahead log. Write is safe for concurrent use.
type Journal struct {
	opts  Options
	dirID uint64

	mu      sync.Mutex
	cond    *sync.Cond
	pending []*write // records to write, in order
	// writing: a batch is being written (by the writer or a waiter that
	// leads); waiters: goroutines in wait whose record is not yet written.
	writing bool
	waiters int
	// What the last batch a leader wrote held, and how long writing and
	// syncing it took; arrived, when not nil, is closed at the next
	// Append (gather).
	lastBatch int
	lastSync  time.Duration
	arrived   chan struct{}
	// Records below nextSynced are durable (written and synced), those
	// below nextWritten written; bytesSynced and bytesWritten count the
	// bytes of the records of this run each holds.
	nextSynced   uint64
	nextWritten  uint64
	bytesSynced  int64
	bytesWritten int64
	nextApp      uint64 // the number of the next record appended
	err          error  // sticky: a write or sync failed, or closed
	closeErr     error  // the failure of the last sync at Close
	closed       bool
	done         chan struct{}
	syncDone     chan struct{} // closed when the syncer returns (nil: no syncer)
	// synced is closed, and replaced, whenever nextSynced or nextWritten
	// advances or err is set: WaitDurable's and WaitCommitted's wake-up.
	synced chan struct{}

	// segMu keeps the segment being written from changing while the
	// syncer (SyncInterval) syncs it: the writer holds it to rotate.
	segMu sync.Mutex

	// Owned by the writer goroutine; seg is also read by the syncer,
	// with segMu held.
	seg         File
	lastVersion uint16 // the format version of the last segment recovered
	segName     string
	segSalt     uint64
	segSize     int64
	segAlloc    bool      // seg is preallocated (Preallocator): longer than segSize
	wBytes      int64     // bytes of records written in this run
	segments    []segInfo // every segment, oldest first
	buf         []byte
}

type segInfo struct {
	name  string
	first uint64
}

// write is one record waiting to be made durable.
type write struct {
	typ  uint8
	data []byte
	lsn  uint64
}

// Open recovers the journal in opts.FS, calling replay for every record in
// order, and returns it ready to write, with the report of what it found.
// A torn tail is cut off; corruption with valid records after it fails
// with ErrCorrupt unless opts.SkipCorrupt.
func Open(opts Options, replay func(Record) error) (*Journal, Report, error) {
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = 64 << 20
	}
	if opts.SyncInterval < 0 {
		return nil, Report{}, fmt.Errorf("journal: negative sync interval %v", opts.SyncInterval)
	}
	j := &Journal{opts: opts, done: make(chan struct{}), synced: make(chan struct{})}
	j.cond = sync.NewCond(&j.mu)
	start := time.Now()
	rep, err := j.recover(replay)
	rep.Took = time.Since(start)
	if err != nil {
		if j.seg != nil {
			j.seg.Close()
		}
		return nil, rep, err
	}
	j.nextSynced = rep.NextLSN
	j.nextWritten = rep.NextLSN
	j.nextApp = rep.NextLSN
	go j.writer()
	if opts.SyncInterval > 0 {
		j.syncDone = make(chan struct{})
		go j.syncer()
	}
	return j, rep, nil
}

// random64 returns a random number, for ids and salts.
func random64() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}

// recover reads the id and every segment.
func (j *Journal) recover(replay func(Record) error) (Report, error) {
	var rep Report
	names, err := j.opts.FS.List()
	if err != nil {
		return rep, err
	}
	var segs []segInfo
	hasID := false
	for _, n := range names {
		if n == IDFile {
			hasID = true
		}
		if first, ok := parseSegmentName(n); ok {
			segs = append(segs, segInfo{name: n, first: first})
		}
	}
	if err := j.loadID(hasID, len(segs) > 0); err != nil {
		return rep, err
	}
	next := uint64(1)
	if len(segs) > 0 {
		next = segs[0].first
	}
	for i, s := range segs {
		last := i == len(segs)-1
		n, err := j.recoverSegment(s, last, &next, &rep, replay)
		if err != nil {
			return rep, err
		}
		if last {
			j.segName, j.segSize = s.name, n
		}
	}
	j.segments = segs
	rep.Segments = len(segs)
	rep.NextLSN = next
	if len(segs) == 0 {
		return rep, nil
	}
	f, err := j.opts.FS.Open(j.segName)
	if err != nil {
		return rep, err
	}
	if j.lastVersion < FormatVersion {
		// Written by an older version: records of this one go to a
		// segment of this version, which older readers refuse whole,
		// rather than after records they would read.
		if j.segSize > HeaderSize {
			f.Close()
			return rep, nil // the next write starts a new segment
		}
		if err := f.Truncate(0); err != nil {
			f.Close()
			return rep, err
		}
		if err := j.rewriteHeader(f, segs[len(segs)-1]); err != nil {
			f.Close()
			return rep, err
		}
	}
	// Writes go on after the valid records: cut a torn or preallocated
	// rest, then preallocate again.
	if size, err := f.Size(); err != nil || size != j.segSize {
		if err == nil {
			err = f.Truncate(j.segSize)
		}
		if err != nil {
			f.Close()
			return rep, err
		}
	}
	alloc, err := j.preallocate(f, j.segSize)
	if err != nil {
		f.Close()
		return rep, err
	}
	j.seg, j.segAlloc = f, alloc
	return rep, nil
}

// loadID reads the journal's directory id, or makes one for a new
// journal.
func (j *Journal) loadID(hasID, hasSegments bool) error {
	fs := j.opts.FS
	if !hasID {
		if hasSegments {
			return fmt.Errorf("%w: segments exist but the id file %s is missing", ErrForeign, IDFile)
		}
		j.dirID = random64()
		f, err := fs.Create(IDFile)
		if err != nil {
			return err
		}
		defer f.Close()
		b := make([]byte, 16)
		copy(b, Magic)
		binary.LittleEndian.PutUint64(b[8:], j.dirID)
		if _, err := f.Write(b); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		return fs.SyncDir()
	}
	f, err := fs.Open(IDFile)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 16)
	if _, err := f.ReadAt(b, 0); err != nil || string(b[:8]) != Magic {
		return fmt.Errorf("%w: the id file %s is damaged", ErrForeign, IDFile)
	}
	j.dirID = binary.LittleEndian.Uint64(b[8:])
	return nil
}

// recoverSegment replays the records of one segment and returns the
// length of its valid part. next is the number the next record must have.
func (j *Journal) recoverSegment(s segInfo, last bool, next *uint64, rep *Report, replay func(Record) error) (int64, error) {
	f, err := j.opts.FS.Open(s.name)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return 0, err
	}
	data := make([]byte, size)
	if _, err := f.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	h, err := decodeHeader(data)
	switch {
	case err != nil && last && int64(len(data)) < HeaderSize:
		// A segment whose header never became durable: created, then
		// the power went. Nothing in it was acknowledged.
		if err := f.Truncate(0); err != nil {
			return 0, err
		}
		rep.TornTail, rep.TornBytes = fmt.Sprintf("%s at 0", s.name), int64(len(data))
		return HeaderSize, j.rewriteHeader(f, s)
	case err != nil:
		return 0, fmt.Errorf("segment %s: %w", s.name, err)
	case h.dirID != j.dirID:
		return 0, fmt.Errorf("%w: segment %s has directory id %016x, this journal's is %016x", ErrForeign, s.name, h.dirID, j.dirID)
	case h.first != s.first || h.first != *next:
		return 0, fmt.Errorf("%w: segment %s begins at record %d; %d was expected", ErrCorrupt, s.name, h.first, *next)
	}
	if last {
		j.segSalt, j.lastVersion = h.salt, h.version
	}
	off := HeaderSize
	for off < len(data) {
		r, n, ok := decodeRecord(data[off:], h.salt)
		if ok && r.LSN == *next {
			if err := replay(r); err != nil {
				return 0, err
			}
			rep.Records++
			rep.Bytes += int64(len(r.Data))
			*next = r.LSN + 1
			off += n
			continue
		}
		if allZero(data[off:]) {
			// The preallocated rest of the segment (Preallocator),
			// never written: the end of its records, not damage.
			return int64(off), nil
		}
		// Damaged, or torn. Is there a valid record after it?
		at, found := findRecord(data, off+1, h.salt, *next)
		if !found && last {
			if err := f.Truncate(int64(off)); err != nil {
				return 0, err
			}
			rep.TornTail = fmt.Sprintf("%s at %d", s.name, off)
			rep.TornBytes = int64(len(data) - off)
			return int64(off), nil
		}
		end := at
		if !found {
			end = len(data)
		}
		if !j.opts.SkipCorrupt {
			return 0, fmt.Errorf("%w: segment %s, bytes %d to %d are not records; the records in them, from %d on, would be lost: start with the flag that skips corruption to go on without them", ErrCorrupt, s.name, off, end, *next)
		}
		q, err := j.quarantine(s.name, data[off:end], int64(off), int64(end))
		if err != nil {
			return 0, err
		}
		if found {
			r, _, _ := decodeRecord(data[at:], h.salt)
			q.LostBefore = r.LSN
			*next = r.LSN
		}
		rep.Quarantined = append(rep.Quarantined, q)
		off = end
	}
	return int64(off), nil
}

// findRecord looks for a valid record at or after from whose number is at
// least next: the first valid one after damage.
func findRecord(data []byte, from int, salt, next uint64) (int, bool) {
	for at := from; at+RecordHeaderSize <= len(data); at++ {
		// A record's number (8 bytes from 8) is not 0, nor its type
		// (at 16): where those 9 bytes are all zero no record starts,
		// so zeros, a preallocated segment's rest, are skipped at once
		// to the first place whose number or type could hold the next
		// nonzero byte.
		if data[at+16] == 0 && allZero(data[at+8:at+16]) {
			nz := firstNonZero(data[at+8:])
			if nz < 0 {
				return 0, false
			}
			at = max(at, at+8+nz-17) // the loop's at++ makes it the first such place
			continue
		}
		if r, _, ok := decodeRecord(data[at:], salt); ok && r.LSN >= next {
			return at, true
		}
	}
	return 0, false
}

// allZero reports whether b holds only zero bytes.
func allZero(b []byte) bool { return firstNonZero(b) < 0 }

// firstNonZero returns the index of b's first byte that is not zero, -1
// if there is none. It reads eight bytes at a time.
func firstNonZero(b []byte) int {
	i := 0
	for ; i+8 <= len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:]) != 0 {
			break
		}
	}
	for ; i < len(b); i++ {
		if b[i] != 0 {
			return i
		}
	}
	return -1
}

// quarantine keeps damaged bytes of a segment in a file of their own.
func (j *Journal) quarantine(seg string, b []byte, from, to int64) (Quarantine, error) {
	name := fmt.Sprintf("quarantine-%s-%d.bin", seg, from)
	f, err := j.opts.FS.Create(name)
	if err != nil {
		return Quarantine{}, err
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return Quarantine{}, err
	}
	if err := f.Sync(); err != nil {
		return Quarantine{}, err
	}
	return Quarantine{Segment: seg, From: from, To: to, File: name}, j.opts.FS.SyncDir()
}

// rewriteHeader writes a fresh header into an emptied last segment.
func (j *Journal) rewriteHeader(f File, s segInfo) error {
	j.segSalt = random64()
	if _, err := f.Write(segmentHeader{dirID: j.dirID, salt: j.segSalt, first: s.first}.encode()); err != nil {
		return err
	}
	return f.Sync()
}

// Write appends a record of type typ (not 0) holding data and returns its
// number once it is committed: durable, or, under Options.SyncInterval,
// written. Records of concurrent calls share syncs. If ctx ends first,
// Write returns ctx's error; the record may still be committed.
func (j *Journal) Write(ctx context.Context, typ uint8, data []byte) (uint64, error) {
	w, err := j.AppendWaited(typ, data)
	if err != nil {
		return 0, err
	}
	return w.Wait(ctx)
}

// Pending is a record appended and perhaps not yet committed.
type Pending struct {
	w *write
	j *Journal
}

// LSN returns the number the record gets once written: records are
// numbered in the order appended.
func (p Pending) LSN() uint64 { return p.w.lsn }

// Wait waits until the record is committed (durable, or under
// Options.SyncInterval written) and returns its number, or the error
// that stopped the journal. If nobody is writing it, Wait writes it,
// with every record pending (WaitCommitted).
func (p Pending) Wait(ctx context.Context) (uint64, error) {
	if err := p.j.WaitCommitted(ctx, p.w.lsn); err != nil {
		return 0, err
	}
	return p.w.lsn, nil
}

// Append queues a record for the writer and returns at once; Wait on the
// result for its commit. Records are written in the order appended.
func (j *Journal) Append(typ uint8, data []byte) (Pending, error) {
	return j.append(typ, data, false)
}

// AppendWaited is Append of a record its caller is about to wait for
// (Pending.Wait, WaitCommitted or WaitDurable): the writer goroutine is
// not woken for it, since the waiter writes it, with whatever else is
// pending, as it leads a batch. Where the writer was woken, it would
// race the caller to write the record alone, and the caller would wait
// for the writer across CPUs. A record nobody waits for after all is
// written with the next batch anyone leads or the writer writes, or at
// Close.
func (j *Journal) AppendWaited(typ uint8, data []byte) (Pending, error) {
	return j.append(typ, data, true)
}

func (j *Journal) append(typ uint8, data []byte, waited bool) (Pending, error) {
	if typ == 0 {
		return Pending{}, errors.New("journal: record type 0 is reserved")
	}
	if len(data) > MaxRecord {
		return Pending{}, fmt.Errorf("journal: record of %d bytes exceeds %d", len(data), MaxRecord)
	}
	w := &write{typ: typ, data: data}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err != nil {
		return Pending{}, j.err
	}
	if j.closed {
		// Close writes and syncs what was appended before it, and only
		// that: a record appended during its last sync would be
		// written by nobody, or by a waiter after that sync.
		return Pending{}, ErrClosed
	}
	w.lsn = j.nextApp
	j.nextApp++
	j.pending = append(j.pending, w)
	if j.arrived != nil {
		close(j.arrived) // a leader gathers a batch
		j.arrived = nil
	}
	// The writer writes what nobody waits for: not while a batch is
	// written (endBatch wakes it if need be), nor while a waiter is
	// about to lead one, which takes every record pending.
	if !waited && !j.writing && j.waiters == 0 {
		j.cond.Signal()
	}
	return Pending{w, j}, nil
}

// Err returns the error that stopped the journal, if one did.
func (j *Journal) Err() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.err
}

// Close writes what was appended, then closes the journal.
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	j.cond.Signal()
	j.mu.Unlock()
	<-j.done
	if j.syncDone != nil {
		<-j.syncDone
	}
	if j.seg != nil {
		// A journal that failed touches its files no more.
		if err := j.Err(); err == nil || errors.Is(err, ErrClosed) {
			if err := j.finishSegment(); err != nil && j.closeErr == nil {
				j.closeErr = err
			}
		}
		if err := j.seg.Close(); err != nil && j.closeErr == nil {
			return err
		}
	}
	return j.closeErr
}

// Group commit. Records are written, and synced, in batches: every
// record appended while a batch is being written goes into the next one.
// Whoever waits for a record that nobody is writing yet writes the batch
// itself (it leads): a store that waits for its own record costs no
// hand-off between goroutines, as in a single-threaded server. Records
// nobody waits for (the writer goroutine sees no waiter) are written by
// the writer goroutine. One batch is written at a time (writing).

// writer writes the records appended that no waiter is about to write,
// until the journal is closed or stopped. Under SyncInterval batches are
// only written; the syncer syncs.
func (j *Journal) writer() {
	defer close(j.done)
	for {
		j.mu.Lock()
		for j.err == nil && (j.writing || !j.closed && (len(j.pending) == 0 || j.waiters > 0)) {
			j.cond.Wait()
		}
		if j.err != nil {
			// A write or sync failed: nothing more is written.
			j.mu.Unlock()
			j.stop()
			return
		}
		if len(j.pending) == 0 { // closed, nothing left to write
			j.mu.Unlock()
			// What was written is synced before the journal closes.
			err := j.syncWritten()
			j.mu.Lock()
			if err != nil {
				j.closeErr = j.err
			} else if j.err == nil {
				j.err = ErrClosed
			}
			j.wake()
			j.mu.Unlock()
			return
		}
		batch := j.takeBatch()
		j.mu.Unlock()
		j.endBatch(j.writeBatch(batch))
	}
}

// gather lets the writers of the last batch append again before a
// leader takes the next: when the last batch held several records and
// fewer are pending now, their writers are most likely on their way
// (answered by the last sync, their next record follows), and a batch
// that waits a little for them saves each of them a whole sync. It waits
// until as many records are pending as the last batch held, for at most
// as long as the last batch's write and sync took (what each of them
// would otherwise wait in addition), and not at all when one writer is
// alone. j.mu is held, and the caller is the one writing.
func (j *Journal) gather() {
	if j.lastBatch < 2 || len(j.pending) >= j.lastBatch || j.closed {
		return
	}
	deadline := time.Now().Add(min(j.lastSync, maxGather))
	for len(j.pending) < j.lastBatch && !j.closed && j.err == nil {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		ch := make(chan struct{})
		j.arrived = ch
		j.mu.Unlock()
		t := time.NewTimer(left)
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
		j.mu.Lock()
		j.arrived = nil
	}
}

// maxGather bounds gather's wait, whatever a sync took.
const maxGather = time.Millisecond

// takeBatch takes every record pending for writing; j.mu is held.
func (j *Journal) takeBatch() []*write {
	batch := j.pending
	j.pending = nil
	j.writing = true
	return batch
}

// endBatch ends the writing of a batch, which failed with err or not: it
// wakes the waiters, who see their records committed or the failure and
// one of whom may lead the next batch, and the writer if records wait
// that no waiter will write.
func (j *Journal) endBatch(err error) {
	j.mu.Lock()
	j.writing = false
	if err != nil {
		if j.err == nil {
			j.err = fmt.Errorf("%w: %w", ErrFailed, err)
		}
		// Nothing appended after a failure is written: waiters see
		// the failure (wait), and so does every Append after it.
		j.pending = nil
	}
	j.wake()
	// The writer has work only if records wait that no waiter will
	// lead (or the journal stopped or closes).
	if j.err != nil || j.closed || len(j.pending) > 0 && j.waiters == 0 {
		j.cond.Signal()
	}
	j.mu.Unlock()
}

// stop drops every record appended (their waiters see the error that
// stopped the journal) until it is closed: nothing more is written or
// acknowledged.
func (j *Journal) stop() {
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		j.pending = nil
		if j.closed {
			return
		}
		j.cond.Wait()
	}
}

// writeBatch numbers, writes and (without SyncInterval) syncs a batch,
// starting new segments as the segment size requires, then commits it.
func (j *Journal) writeBatch(batch []*write) error {
	lsn := batch[0].lsn
	always := j.opts.SyncInterval == 0
	for len(batch) > 0 {
		if j.seg == nil || j.segSize >= j.opts.SegmentSize {
			if err := j.rotate(lsn); err != nil {
				return err
			}
		}
		j.buf = j.buf[:0]
		n := 0
		for n < len(batch) && (n == 0 || j.segSize+int64(len(j.buf)) < j.opts.SegmentSize) {
			w := batch[n]
			j.buf = appendRecord(j.buf, j.segSalt, lsn, w.typ, w.data)
			lsn++
			n++
		}
		if _, err := j.seg.Write(j.buf); err != nil {
			return err
		}
		j.segSize += int64(len(j.buf))
		j.wBytes += int64(len(j.buf))
		if always {
			start := time.Now()
			if err := j.seg.Sync(); err != nil {
				return err
			}
			if j.opts.OnSync != nil {
				j.opts.OnSync(time.Since(start), n)
			}
		}
		batch = batch[n:]
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err != nil {
		// The syncer failed meanwhile: what was written since its last
		// sync may be lost, so none of it is committed.
		return j.err
	}
	j.nextWritten, j.bytesWritten = lsn, j.wBytes
	if always {
		j.nextSynced, j.bytesSynced = lsn, j.wBytes
	}
	return nil // endBatch wakes the waiters
}

// syncer syncs what was written every SyncInterval until the writer
// returns (it syncs one last time itself), or a sync fails.
func (j *Journal) syncer() {
	defer close(j.syncDone)
	t := time.NewTicker(j.opts.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-j.done:
			return
		case <-t.C:
		}
		if j.syncWritten() != nil {
			return
		}
	}
}

// syncWritten makes every record written so far durable (under
// SyncInterval; without it they already are). A failure stops the
// journal, as a failed write does.
func (j *Journal) syncWritten() error {
	if j.opts.SyncInterval == 0 {
		return nil
	}
	j.segMu.Lock()
	defer j.segMu.Unlock()
	j.mu.Lock()
	lsn, bytes, stopped := j.nextWritten, j.bytesWritten, j.err != nil
	todo := lsn > j.nextSynced
	j.mu.Unlock()
	if stopped || !todo || j.seg == nil {
		return nil
	}
	// Records below lsn are in j.seg, or in segments synced before they
	// were closed: rotate holds segMu.
	start := time.Now()
	err := j.seg.Sync()
	took := time.Since(start)
	j.mu.Lock()
	defer j.mu.Unlock()
	if err != nil {
		if j.err == nil {
			j.err = fmt.Errorf("%w: %w", ErrFailed, err)
		}
		j.wake()
		j.cond.Signal() // the writer stops
		return err
	}
	if j.opts.OnSync != nil {
		j.opts.OnSync(took, int(lsn-j.nextSynced))
	}
	j.nextSynced, j.bytesSynced = max(j.nextSynced, lsn), max(j.bytesSynced, bytes)
	j.wake()
	return nil
}

// wake tells WaitDurable callers that something changed; j.mu is held.
func (j *Journal) wake() {
	close(j.synced)
	j.synced = make(chan struct{})
}

// WaitDurable waits until the record numbered lsn, and so every record
// before it, is durable (synced), or the journal stopped (its error).
// What may be deleted once records are durable (segments they consume,
// files they make unreferenced) waits for this; under SyncInterval it
// may take the interval.
func (j *Journal) WaitDurable(ctx context.Context, lsn uint64) error {
	return j.wait(ctx, lsn, false)
}

// WaitCommitted waits until the record numbered lsn, and so every record
// before it, is committed as the sync policy says, or the journal
// stopped (its error): durable without Options.SyncInterval (it is then
// WaitDurable), written under it. A server uses it to hold back answers
// that speak of records until the policy lets it acknowledge them. Once
// a write or sync failed, records written and not synced are no longer
// committed: waiting for them returns the failure.
func (j *Journal) WaitCommitted(ctx context.Context, lsn uint64) error {
	return j.wait(ctx, lsn, true)
}

// wait is WaitDurable, or with written WaitCommitted.
func (j *Journal) wait(ctx context.Context, lsn uint64, written bool) error {
	for {
		j.mu.Lock()
		switch {
		case j.nextSynced > lsn:
			j.mu.Unlock()
			return nil
		case j.err != nil:
			err := j.err
			j.mu.Unlock()
			return err
		case written && j.nextWritten > lsn:
			j.mu.Unlock()
			return nil
		case lsn >= j.nextApp:
			j.mu.Unlock()
			return fmt.Errorf("journal: record %d was never appended", lsn)
		case !j.writing && len(j.pending) > 0 && j.pending[0].lsn <= lsn && ctx.Err() == nil:
			// The record waits to be written and nobody is writing:
			// write it, and everything pending with it, here.
			j.writing = true
			j.gather()
			if j.err != nil || len(j.pending) == 0 {
				// The journal stopped meanwhile (stop answered
				// what was pending): nothing to write.
				j.writing = false
				j.wake()
				j.cond.Signal()
				j.mu.Unlock()
				continue
			}
			batch := j.takeBatch()
			j.mu.Unlock()
			start := time.Now()
			err := j.writeBatch(batch)
			j.lastSync = time.Since(start)
			j.lastBatch = len(batch)
			j.endBatch(err)
			continue
		}
		ch := j.synced
		// Only a waiter whose record is still to be written may lead
		// and write what is pending; one waiting for the sync of a
		// record written already (under SyncInterval) must not keep
		// the writer from records nobody waits for.
		mayLead := lsn >= j.nextWritten
		if mayLead {
			j.waiters++
		}
		j.mu.Unlock()
		var err error
		select {
		case <-ch:
		case <-ctx.Done():
			err = ctx.Err()
		}
		j.mu.Lock()
		if mayLead {
			j.waiters--
			if j.waiters == 0 {
				j.cond.Signal() // records nobody waits for are the writer's
			}
		}
		j.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// LastDurable returns the number of the last record known durable (0 if
// none): every record up to it survives a power loss.
func (j *Journal) LastDurable() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.nextSynced - 1
}

// Unsynced returns the records written and not yet synced, and their
// bytes: under SyncInterval, what a power loss now could take of what
// was committed. Without it, records are committed only once synced, and
// this is what a batch in flight has written before its sync.
func (j *Journal) Unsynced() (records uint64, bytes int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.nextWritten - j.nextSynced, j.bytesWritten - j.bytesSynced
}

// LastAppended returns the number of the last record appended (0 if
// none): waiting for it to be durable covers every record appended so
// far.
func (j *Journal) LastAppended() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.nextApp - 1
}

// rotate begins a new segment whose first record is first. Under
// SyncInterval the segment it closes is synced first: a segment after one
// with a torn tail would be refused as damage in the middle.
func (j *Journal) rotate(first uint64) error {
	j.segMu.Lock()
	defer j.segMu.Unlock()
	if j.seg != nil && j.opts.SyncInterval > 0 {
		start := time.Now()
		if err := j.seg.Sync(); err != nil {
			return err
		}
		took := time.Since(start)
		j.mu.Lock()
		if j.opts.OnSync != nil && first > j.nextSynced {
			j.opts.OnSync(took, int(first-j.nextSynced))
		}
		j.nextWritten, j.bytesWritten = first, j.wBytes
		j.nextSynced, j.bytesSynced = first, j.wBytes
		j.wake()
		j.mu.Unlock()
	}
	if err := j.finishSegment(); err != nil {
		return err
	}
	name := segmentName(first)
	f, err := j.opts.FS.Create(name)
	if err != nil {
		return err
	}
	salt := random64()
	if _, err := f.Write(segmentHeader{dirID: j.dirID, salt: salt, first: first}.encode()); err != nil {
		f.Close()
		return err
	}
	alloc, err := j.preallocate(f, HeaderSize)
	if err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := j.opts.FS.SyncDir(); err != nil {
		f.Close()
		return err
	}
	if j.seg != nil {
		j.seg.Close()
	}
	j.seg, j.segName, j.segSalt, j.segSize, j.segAlloc = f, name, salt, HeaderSize, alloc
	j.mu.Lock()
	j.segments = append(j.segments, segInfo{name: name, first: first})
	j.mu.Unlock()
	return nil
}

// preallocate gives the segment f, written up to written bytes, its
// blocks up to the segment size, where the file system can: each sync
// then flushes the records alone (see Preallocator). It reports whether
// f is now longer than what was written.
func (j *Journal) preallocate(f File, written int64) (bool, error) {
	p, ok := f.(Preallocator)
	if !ok {
		return false, nil
	}
	if err := p.Preallocate(j.opts.SegmentSize); err != nil {
		return false, err
	}
	size, err := f.Size()
	return err == nil && size > written, err
}

// finishSegment cuts the preallocated rest off the segment being
// written, and makes that durable, before another begins or the journal
// closes: only the last segment may end in unwritten zeros (which
// recovery reads as its end), and a reader from before preallocation
// reads the others as they always were.
func (j *Journal) finishSegment() error {
	if j.seg == nil || !j.segAlloc {
		return nil
	}
	if err := j.seg.Truncate(j.segSize); err != nil {
		return err
	}
	j.segAlloc = false
	return j.seg.Sync()
}

// Release deletes the segments all of whose records are numbered below
// before (their records are consumed): recovery then starts from the
// oldest segment kept. The segment being written is never deleted. The
// records that consumed them must be durable first (WaitDurable; under
// SyncInterval, committed is not enough).
func (j *Journal) Release(before uint64) (int, error) {
	j.mu.Lock()
	var gone []segInfo
	for len(j.segments) > 1 && j.segments[1].first <= before {
		gone = append(gone, j.segments[0])
		j.segments = j.segments[1:]
	}
	j.mu.Unlock()
	// Oldest first, each removal made durable before the next: a crash
	// leaves the journal without a prefix of its segments, never with a
	// gap between two it kept.
	for i, s := range gone {
		if err := j.opts.FS.Remove(s.name); err != nil && !errors.Is(err, os.ErrNotExist) {
			return i, err
		}
		if err := j.opts.FS.SyncDir(); err != nil {
			return i, err
		}
	}
	return len(gone), nil
}

// Segments returns the number of the first record of every segment,
// oldest first: the last is the segment being written.
func (j *Journal) Segments() []uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	firsts := make([]uint64, len(j.segments))
	for i, s := range j.segments {
		firsts[i] = s.first
	}
	return firsts
}
