// Package durable keeps machq's durable queues on disk: every message
// stored in one, every message taken from one, every delivery in ack mode
// and every queue deleted or purged is a record of the write-ahead log
// (internal/journal), durable before the server answers (under the
// opt-in Options.SyncInterval, written before it answers and durable
// within the interval). At start the
// log is replayed into the queues it describes; segments whose messages
// are all gone are deleted, and live messages pinning an old segment are
// copied forward so it can be (compaction). The records are specified in
// docs/STORAGE.md.
package durable

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/journal"
)

// ErrLocked: another server holds the data directory.
var ErrLocked = errors.New("durable: the data directory is in use by another server")

// LockFile is the file of the data directory a server holds an flock on.
const LockFile = "LOCK"

// Options configures a store.
type Options struct {
	// Dir is the data directory: created if missing (mode 0700), locked
	// with flock so that two servers never share it.
	Dir string
	// FS overrides the file system of the journal (tests); Dir is then
	// only locked if set.
	FS journal.FS
	// SegmentSize bounds a segment file (default 64 MiB).
	SegmentSize int64
	// SkipCorrupt lets recovery go past damaged records in the middle of
	// the log, keeping their bytes in a quarantine file; the messages in
	// them are lost. Without it a damaged log refuses to open.
	SkipCorrupt bool
	// MinFree is the free space of Dir's file system kept in reserve:
	// stores that would leave less are refused with ErrNoSpace. 0 means
	// DefaultMinFree; a negative value disables the check.
	MinFree int64
	// SyncInterval is the sync policy (journal.Options.SyncInterval). 0,
	// the default: a record is committed (WaitCommitted returns) only
	// once synced, so nothing acknowledged is lost to a power loss. A
	// positive interval commits records once written to the log and
	// syncs every SyncInterval: a power loss may take what was committed
	// in the last interval (a crash of the process takes nothing).
	// Payload files are synced before their record under either policy,
	// and nothing is deleted before what makes it unneeded is durable.
	SyncInterval time.Duration
	// OnSync, if not nil, is told of each sync of the log
	// (journal.Options.OnSync).
	OnSync func(took time.Duration, records int)
}

// Message is a message of a durable queue, as recovered.
type Message struct {
	ID uint64
	// Deliveries counts the times it was handed to a consumer in ack
	// mode without being settled: more than 0 means it comes back
	// redelivered.
	Deliveries uint32
	Attrs      Attrs
	// Payload is an inline message's bytes; a page message has File
	// instead, the path of its payload file (OpenPayload makes a page of
	// it), and Size.
	Payload []byte
	File    string
	Size    int64
}

// Queue is a durable queue as recovered: its messages in order of
// place (Attrs.Seq, or the id), then id.
type Queue struct {
	Name     string
	Messages []Message
	// LastID is the highest message id the log holds for it, taken or
	// not: new messages get higher ones.
	LastID uint64
	// Meta is the queue's description, as last recorded.
	Meta QueueMeta
	// Groups are the queue's consumer groups, by name, each with its
	// own messages (its views of the queue's: a page shared by several
	// groups has one payload file) and, in Meta, its creator.
	Groups []Queue
}

// Report says what opening the store found.
type Report struct {
	journal.Report
	Queues       int // queues with messages
	EmptyQueues  int // queues without, kept for their owner or settings (QueueMeta.Kept)
	Messages     int
	PayloadBytes int64
	// PayloadFiles counts the messages whose payload is a file;
	// OrphansRemoved the payload files no message refers to (written
	// before a crash took their record, or taken before it took their
	// removal), deleted.
	PayloadFiles   int
	OrphansRemoved int
}

// String renders the report as the server logs it.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d queues, %d messages (%d in payload files), %d payload bytes from %d records in %d segments, in %v",
		r.Queues, r.Messages, r.PayloadFiles, r.PayloadBytes, r.Records, r.Segments, r.Took.Round(time.Millisecond))
	if r.EmptyQueues > 0 {
		fmt.Fprintf(&b, "; %d empty queues kept for their owner or settings", r.EmptyQueues)
	}
	if r.OrphansRemoved > 0 {
		fmt.Fprintf(&b, "; %d unreferenced payload files removed", r.OrphansRemoved)
	}
	if r.TornTail != "" {
		fmt.Fprintf(&b, "; torn tail cut at %s (%d bytes, never acknowledged)", r.TornTail, r.TornBytes)
	}
	for _, q := range r.Quarantined {
		fmt.Fprintf(&b, "; DAMAGE skipped: %s bytes %d-%d kept in %s, records before %d lost",
			q.Segment, q.From, q.To, q.File, q.LostBefore)
	}
	return b.String()
}

// entry is a live message: the record that holds it now, and what a
// copy forward must write again.
type entry struct {
	lsn        uint64
	deliveries uint32
	attrs      Attrs
	payload    []byte
	file       string // payload file of a page message
	size       int64
}

// Store is an open set of durable queues. It is safe for concurrent use.
type Store struct {
	j     *journal.Journal
	lock  *os.File
	size  int64
	sync  time.Duration // Options.SyncInterval
	files string        // the payload directory; "" without a data directory
	space *space        // nil: no free-space check

	// mu orders the records appended with the live set they change: the
	// log's order is the order of these changes.
	mu     sync.Mutex
	queues map[string]map[uint64]*entry
	meta   map[string]*metaEntry
	gone   []goneFile // payload files to delete once their removal is durable, by record number
	// refs counts the live messages referring to each payload file:
	// the views of one page in several consumer groups share it.
	refs map[string]int
	// groups names, by queue, the consumer groups with messages or a
	// description.
	groups map[string]map[string]bool
	// nextSeq is above every sequence number a store of the log gave
	// (TypeStore, TypeSeq); seqRecorded is the last TypeSeq's, at seqLSN.
	nextSeq, seqRecorded, seqLSN uint64
}

// metaEntry is a queue's description and the record holding it.
type metaEntry struct {
	lsn  uint64
	meta QueueMeta
}

// goneFile is a payload file whose message a record numbered lsn removed.
type goneFile struct {
	lsn  uint64
	name string
}

// Open locks the data directory, replays its log and returns the store
// with every durable queue it holds.
func Open(opts Options) (*Store, []Queue, Report, error) {
	s := &Store{queues: make(map[string]map[uint64]*entry), meta: make(map[string]*metaEntry), refs: make(map[string]int), groups: make(map[string]map[string]bool), size: opts.SegmentSize, sync: opts.SyncInterval}
	if opts.SyncInterval < 0 {
		return nil, nil, Report{}, fmt.Errorf("durable: negative sync interval %v", opts.SyncInterval)
	}
	if s.size <= 0 {
		s.size = 64 << 20
	}
	if opts.Dir != "" {
		if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
			return nil, nil, Report{}, fmt.Errorf("durable: data directory: %w", err)
		}
		f, err := lockDir(opts.Dir)
		if err != nil {
			return nil, nil, Report{}, err
		}
		s.lock = f
		s.files = filepath.Join(opts.Dir, PayloadDir)
		if opts.MinFree >= 0 {
			s.space = &space{dir: opts.Dir, minFree: cmp.Or(opts.MinFree, DefaultMinFree), statfs: freeBytes}
		}
		if err := os.MkdirAll(s.files, 0o700); err != nil {
			s.unlock()
			return nil, nil, Report{}, fmt.Errorf("durable: payload directory: %w", err)
		}
	}
	fs := opts.FS
	if fs == nil {
		fs = journal.OSFS{Dir: opts.Dir}
	}
	last := map[string]uint64{}
	j, jrep, err := journal.Open(journal.Options{FS: fs, SegmentSize: s.size, SkipCorrupt: opts.SkipCorrupt, SyncInterval: opts.SyncInterval, OnSync: opts.OnSync},
		func(r journal.Record) error {
			op, err := Decode(r.Type, r.Data)
			if err != nil {
				return fmt.Errorf("record %d: %w", r.LSN, err)
			}
			s.apply(op, r.LSN, true, nil)
			if op.Type == TypeStore || op.Type == TypeTake || op.Type == TypeDeliver {
				k := key(op.Queue, op.Group)
				last[k] = max(last[k], op.ID)
			}
			return nil
		})
	rep := Report{Report: jrep}
	if err != nil {
		s.unlock()
		return nil, nil, rep, fmt.Errorf("durable: recovering %s: %w", opts.Dir, err)
	}
	s.j = j
	queues := make([]Queue, 0, len(s.queues))
	var groups []Queue // of every queue, Name the group's key
	for name, live := range s.queues {
		q := Queue{Name: name, LastID: last[name], Messages: make([]Message, 0, len(live))}
		if m := s.meta[name]; m != nil {
			q.Meta = m.meta
		}
		// Sort small keys, not the messages: a map gives them in no
		// order, and moving whole messages would cost more than the sort.
		type key struct {
			place, id uint64
			e         *entry
		}
		keys := make([]key, 0, len(live))
		for id, e := range live {
			keys = append(keys, key{cmp.Or(e.attrs.Seq, id), id, e})
		}
		slices.SortFunc(keys, func(a, b key) int {
			return cmp.Or(cmp.Compare(a.place, b.place), cmp.Compare(a.id, b.id))
		})
		for _, k := range keys {
			e := k.e
			m := Message{ID: k.id, Deliveries: e.deliveries, Attrs: e.attrs, Payload: e.payload}
			rep.PayloadBytes += int64(len(e.payload))
			if e.file != "" {
				m.File, m.Size = filepath.Join(s.files, e.file), e.size
				rep.PayloadBytes += e.size
				rep.PayloadFiles++
			}
			q.Messages = append(q.Messages, m)
		}
		rep.Messages += len(q.Messages)
		if _, group := splitKey(name); group != "" {
			groups = append(groups, q)
			continue
		}
		queues = append(queues, q)
	}
	rep.Queues = len(queues)
	// Empty queues whose description is kept: owned, or configured. A
	// description not to keep, of a queue whose first store did not
	// reach the log, is forgotten.
	for name, m := range s.meta {
		if _, ok := s.queues[name]; ok {
			continue
		}
		if _, group := splitKey(name); group != "" {
			// A group lasts until dropped, with or without messages.
			groups = append(groups, Queue{Name: name, Meta: m.meta, LastID: last[name]})
			continue
		}
		if !m.meta.Kept() && !s.hasGroups(name) {
			delete(s.meta, name)
			continue
		}
		queues = append(queues, Queue{Name: name, Meta: m.meta, LastID: last[name]})
		rep.EmptyQueues++
	}
	queues = attachGroups(queues, groups)
	slices.SortFunc(queues, func(a, b Queue) int { return strings.Compare(a.Name, b.Name) })
	if rep.OrphansRemoved, err = s.removeOrphans(); err != nil {
		s.Close()
		return nil, nil, rep, err
	}
	return s, queues, rep, nil
}

// removeOrphans deletes the payload files no live message refers to.
func (s *Store) removeOrphans() (int, error) {
	if s.files == "" {
		return 0, nil
	}
	names, err := os.ReadDir(s.files)
	if err != nil {
		return 0, fmt.Errorf("durable: payload directory: %w", err)
	}
	used := map[string]bool{}
	for _, live := range s.queues {
		for _, e := range live {
			if e.file != "" {
				used[e.file] = true
			}
		}
	}
	n := 0
	for _, d := range names {
		if used[d.Name()] {
			continue
		}
		if err := os.Remove(filepath.Join(s.files, d.Name())); err != nil {
			return n, fmt.Errorf("durable: removing an unreferenced payload: %w", err)
		}
		n++
	}
	return n, nil
}

// lockDir takes the data directory's lock, or says who has it.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("durable: data directory lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is locked (stop that server, or give this one another --data-dir)", ErrLocked, dir)
		}
		return nil, fmt.Errorf("durable: locking %s: %w", path, err)
	}
	return f, nil
}

func (s *Store) unlock() {
	if s.lock != nil {
		s.lock.Close()
		s.lock = nil
	}
}

// apply changes the live set as op says, adding to gone the payload files
// of the messages it removes. In replay the payload is copied out of the
// journal's buffer.
func (s *Store) apply(op Op, lsn uint64, replay bool, gone *[]string) {
	k := key(op.Queue, op.Group)
	if op.Group != "" && (op.Type == TypeStore || op.Type == TypeQueue) {
		gs := s.groups[op.Queue]
		if gs == nil {
			gs = make(map[string]bool)
			s.groups[op.Queue] = gs
		}
		gs[op.Group] = true
	}
	// drop releases e's payload file: once no live message refers to
	// it, it is deleted when the record removing the last is durable.
	drop := func(e *entry) {
		if e.file != "" && s.unref(e.file) && gone != nil {
			*gone = append(*gone, e.file)
		}
	}
	switch op.Type {
	case TypeStore:
		s.nextSeq = max(s.nextSeq, op.Attrs.Seq+1)
		live := s.queues[k]
		if live == nil {
			live = make(map[uint64]*entry)
			s.queues[k] = live
		}
		p, a := op.Payload, op.Attrs
		if replay {
			p = append([]byte(nil), p...)
		}
		old := live[op.ID]
		if op.File != "" && (old == nil || old.file != op.File) {
			if s.refs[op.File] == 0 {
				s.revive(op.File)
			}
			s.refs[op.File]++
		}
		if old != nil && old.file != op.File {
			drop(old)
		}
		live[op.ID] = &entry{lsn: lsn, deliveries: op.Deliveries, attrs: a, payload: p, file: op.File, size: op.Size}
	case TypeTake:
		if live := s.queues[k]; live != nil {
			if e := live[op.ID]; e != nil {
				drop(e)
			}
			delete(live, op.ID)
			if len(live) == 0 {
				s.emptied(k)
			}
		}
	case TypeDeliver:
		if e := s.queues[k][op.ID]; e != nil {
			e.deliveries++
		}
	case TypeDrop:
		// Dropping a queue drops its groups with it.
		keys := []string{k}
		if op.Group == "" {
			keys = append(keys, s.groupKeys(op.Queue)...)
		}
		for _, k := range keys {
			for _, e := range s.queues[k] {
				drop(e)
			}
			s.forget(k)
		}
	case TypePurge:
		if live := s.queues[k]; live != nil {
			for id, e := range live {
				if id < op.ID {
					drop(e)
					delete(live, id)
				}
			}
			if len(live) == 0 {
				s.emptied(k)
			}
		}
	case TypeSeq:
		s.nextSeq = max(s.nextSeq, op.ID)
		s.seqLSN, s.seqRecorded = lsn, max(s.seqRecorded, op.ID)
	case TypeQueue:
		// Recorded before a queue's first store, too: an empty queue's
		// description goes only with a take or purge that empties it, or
		// a drop. A group's says it exists, until it is dropped.
		s.meta[k] = &metaEntry{lsn: lsn, meta: op.Meta}
	}
}

// revive keeps the payload file name, which a record removed the last
// message of, from deletion: a record since refers to it again.
func (s *Store) revive(name string) {
	s.gone = slices.DeleteFunc(s.gone, func(g goneFile) bool { return g.name == name })
}

// unref drops a reference to the payload file name and reports whether
// it was the last.
func (s *Store) unref(name string) bool {
	if s.refs[name]--; s.refs[name] > 0 {
		return false
	}
	delete(s.refs, name)
	return true
}

// key names a queue, or a consumer group of one, in the store's maps: a
// queue by its name, a group by the queue's name, a NUL (which no queue
// name holds) and the group's.
func key(queue, group string) string {
	if group == "" {
		return queue
	}
	return queue + "\x00" + group
}

// splitKey is the inverse of key.
func splitKey(k string) (queue, group string) {
	queue, group, _ = strings.Cut(k, "\x00")
	return queue, group
}

// groupKeys returns the keys of queue's consumer groups that have
// messages or a description; s.mu is held (or the store is being
// opened).
func (s *Store) groupKeys(queue string) []string {
	var keys []string
	for g := range s.groups[queue] {
		keys = append(keys, key(queue, g))
	}
	return keys
}

// hasGroups reports whether queue has consumer groups.
func (s *Store) hasGroups(queue string) bool {
	return len(s.groups[queue]) > 0
}

// attachGroups gives each queue of queues its groups, by name; a queue
// with groups and nothing else recorded is added.
func attachGroups(queues, groups []Queue) []Queue {
	if len(groups) == 0 {
		return queues
	}
	at := make(map[string]int, len(queues))
	for i, q := range queues {
		at[q.Name] = i
	}
	for _, g := range groups {
		qn, gn := splitKey(g.Name)
		g.Name = gn
		i, ok := at[qn]
		if !ok {
			i = len(queues)
			at[qn] = i
			queues = append(queues, Queue{Name: qn})
		}
		queues[i].Groups = append(queues[i].Groups, g)
	}
	for i := range queues {
		slices.SortFunc(queues[i].Groups, func(a, b Queue) int { return strings.Compare(a.Name, b.Name) })
	}
	return queues
}

// forget drops a deleted or disowned queue, or a deleted group.
func (s *Store) forget(k string) {
	delete(s.queues, k)
	delete(s.meta, k)
	if queue, group := splitKey(k); group != "" {
		delete(s.groups[queue], group)
		if len(s.groups[queue]) == 0 {
			delete(s.groups, queue)
		}
	}
}

// emptied drops the messages of a queue or group that has none left,
// and a queue's description unless it is one to keep (Kept) or the
// queue has groups; a group's stays until the group is dropped.
func (s *Store) emptied(k string) {
	delete(s.queues, k)
	queue, group := splitKey(k)
	if group != "" {
		if s.meta[k] == nil {
			s.forget(k) // a group whose creation no record says
		}
		return
	}
	if s.hasGroups(queue) {
		return
	}
	if m := s.meta[k]; m == nil || !m.meta.Kept() {
		delete(s.meta, k)
	}
}

// appendLocked appends op's record and applies it, noting the payload
// files it makes unreferenced for deletion once it is durable; s.mu is
// held.
func (s *Store) appendLocked(op Op) (journal.Pending, error) {
	return s.appendWaitedLocked(op, false)
}

// appendWaitedLocked is appendLocked; waited says the caller is about to
// wait for the record (journal.AppendWaited).
func (s *Store) appendWaitedLocked(op Op, waited bool) (journal.Pending, error) {
	if (op.Queue == "") != (op.Type == TypeSeq) || len(op.Queue) > maxName {
		return journal.Pending{}, fmt.Errorf("durable: queue name of %d bytes", len(op.Queue))
	}
	if len(op.Group) > maxName || strings.IndexByte(op.Group, 0) >= 0 || op.Group != "" && op.Type == TypeSeq {
		return journal.Pending{}, fmt.Errorf("durable: bad group name %q", op.Group)
	}
	// The journal keeps the slice until it is written: a new one, of
	// the record's size, so the payload is copied once here.
	rec := encode(make([]byte, 0, encodedSize(op)), op)
	var p journal.Pending
	var err error
	if waited {
		p, err = s.j.AppendWaited(RecordType(op), rec)
	} else {
		p, err = s.j.Append(RecordType(op), rec)
	}
	if err != nil {
		return p, err
	}
	var gone []string
	s.apply(op, p.LSN(), false, &gone)
	for _, name := range gone {
		s.gone = append(s.gone, goneFile{p.LSN(), name})
	}
	return p, nil
}

// Append appends ops' records in order and applies them, without
// waiting: it returns the number of the last, for WaitCommitted. An
// answer that speaks of these records must wait for it.
func (s *Store) Append(ops ...Op) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appendOpsLocked(false, ops...)
}

// AppendWaited is Append of records the caller is about to wait for
// (WaitCommitted or WaitDurable), as an answer that speaks of them does:
// the caller's wait writes them (journal.AppendWaited).
func (s *Store) AppendWaited(ops ...Op) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appendOpsLocked(true, ops...)
}

// appendOpsLocked is Append (or, waited, AppendWaited) with s.mu held.
func (s *Store) appendOpsLocked(waited bool, ops ...Op) (uint64, error) {
	var last uint64
	for _, op := range ops {
		if op.Type == TypeStore {
			if err := op.Attrs.check(); err != nil {
				return last, err
			}
		}
		p, err := s.appendWaitedLocked(op, waited)
		if err != nil {
			return last, err
		}
		last = p.LSN()
	}
	return last, nil
}

// NextSeq returns a number above every sequence number the log's stores
// have given, in any queue, including stores long since taken and
// compacted away: a server starting on the log numbers from there on.
func (s *Store) NextSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nextSeq
}

// Describe records queue's description, unless it is the one recorded
// last, and returns the record's number (0 if none was needed). An
// empty queue's description is kept only if QueueMeta.Kept.
func (s *Store) Describe(queue string, meta QueueMeta) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.meta[queue]
	if e != nil && e.meta == meta {
		return 0, nil
	}
	if _, live := s.queues[queue]; !live && !meta.Kept() && !s.hasGroups(queue) {
		if e == nil {
			return 0, nil // nothing recorded, nothing to keep
		}
		// An empty queue back to the defaults: forget it.
		p, err := s.appendLocked(Op{Type: TypeDrop, Queue: queue})
		if err != nil {
			return 0, err
		}
		return p.LSN(), nil
	}
	p, err := s.appendLocked(Op{Type: TypeQueue, Queue: queue, Meta: meta})
	if err != nil {
		return 0, err
	}
	return p.LSN(), nil
}

// DescribeGroup records that queue has the consumer group called group,
// created by creator, and returns the record's number. The group lasts,
// with or without messages, until a Drop of it (Op.Group) or of its
// queue.
func (s *Store) DescribeGroup(queue, group string, creator uint32) (uint64, error) {
	if group == "" {
		return 0, errors.New("durable: a consumer group needs a name")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.appendLocked(Op{Type: TypeQueue, Queue: queue, Group: group, Meta: QueueMeta{Creator: creator}})
	if err != nil {
		return 0, err
	}
	return p.LSN(), nil
}

// AppendStore is AppendWaited of a message stored in queue, described
// by meta (the store's answer waits for it): a description differing
// from the one recorded (or none) is recorded first.
func (s *Store) AppendStore(queue string, meta QueueMeta, m Op) (uint64, error) {
	// One critical section: a take emptying the queue meanwhile would
	// otherwise forget the description this store relies on.
	s.mu.Lock()
	defer s.mu.Unlock()
	m.Type, m.Queue = TypeStore, queue
	if e := s.meta[queue]; e == nil || e.meta != meta {
		return s.appendOpsLocked(true, Op{Type: TypeQueue, Queue: queue, Meta: meta}, m)
	}
	return s.appendOpsLocked(true, m)
}

// WaitDurable waits until record lsn, and every one before it, is
// durable (synced), then deletes the payload files of messages those
// records removed.
func (s *Store) WaitDurable(ctx context.Context, lsn uint64) error {
	if err := s.j.WaitDurable(ctx, lsn); err != nil {
		// The files stay: if the records never reach the disk, their
		// messages come back at the next start, with their payloads.
		return err
	}
	s.collect(lsn)
	return nil
}

// WaitCommitted waits until record lsn, and every one before it, is
// committed as the sync policy says (Options.SyncInterval): an answer
// that speaks of them may then be sent. Without an interval it is
// WaitDurable. Under one, it deletes only the payload files whose
// removal is already durable; the others wait for a later sync.
func (s *Store) WaitCommitted(ctx context.Context, lsn uint64) error {
	if s.sync == 0 {
		return s.WaitDurable(ctx, lsn)
	}
	if err := s.j.WaitCommitted(ctx, lsn); err != nil {
		return err
	}
	s.collect(s.j.LastDurable())
	return nil
}

// collect deletes the payload files of the messages that records up to
// lsn removed, which must be durable: a file whose removal a power loss
// could take back would be needed again.
func (s *Store) collect(lsn uint64) {
	s.mu.Lock()
	// Records are appended, and their files noted, in order under s.mu.
	n := 0
	for n < len(s.gone) && s.gone[n].lsn <= lsn {
		n++
	}
	if n == 0 {
		s.mu.Unlock()
		return
	}
	names := make([]string, n)
	for i, g := range s.gone[:n] {
		names[i] = g.name
	}
	s.gone = slices.Delete(s.gone, 0, n)
	s.mu.Unlock()
	for _, name := range names {
		// A file left by a failed removal is an orphan the next start
		// removes.
		os.Remove(filepath.Join(s.files, name))
	}
}

// SyncInterval returns the sync policy: 0 when every record is synced
// before it is committed, else the interval between syncs.
func (s *Store) SyncInterval() time.Duration { return s.sync }

// Unsynced returns the records committed and not yet synced, and their
// bytes: under a sync interval, what a power loss now could take of what
// was acknowledged (0 without one, but for a batch being synced).
func (s *Store) Unsynced() (records uint64, bytes int64) { return s.j.Unsynced() }

// Room reports ErrNoSpace, saying what to do, when storing a message of
// size payload bytes would leave the data directory's file system below
// its reserve. Append does not check: a server calls Room before it
// accepts a store. PreparePayload checks itself.
func (s *Store) Room(size int64) error {
	return s.space.room(size + 64)
}

// Segments returns the number of the log's segment files.
func (s *Store) Segments() int { return len(s.j.Segments()) }

// LastAppended returns the number of the last record appended: waiting
// for it covers everything appended so far.
func (s *Store) LastAppended() uint64 { return s.j.LastAppended() }

// check refuses attributes the record cannot hold.
func (a Attrs) check() error {
	if len(a.Digest) > 255 || len(a.Note) > 65535 || len(a.Group) > 255 {
		return fmt.Errorf("durable: attributes too long: digest %d, note %d, group %d bytes", len(a.Digest), len(a.Note), len(a.Group))
	}
	return nil
}

// PreparePayload copies the sealed page fd of size bytes, by the kernel,
// into a new payload file of the data directory and makes it durable,
// name and all, returning its name for the Store record (Op.File) that
// must follow. The caller keeps fd.
func (s *Store) PreparePayload(fd int, size int64) (string, error) {
	if s.files == "" {
		return "", errors.New("durable: page messages need a data directory")
	}
	if err := s.space.room(size); err != nil {
		return "", err
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	name := hex.EncodeToString(b[:]) + ".page"
	if err := writePayload(filepath.Join(s.files, name), fd, size); err != nil {
		return "", err
	}
	if err := syncDir(s.files); err != nil {
		os.Remove(filepath.Join(s.files, name))
		return "", err
	}
	return name, nil
}

// DiscardPayload deletes a payload file PreparePayload made whose record
// was never appended (its store was refused).
func (s *Store) DiscardPayload(name string) {
	if validFile(name) {
		os.Remove(filepath.Join(s.files, name))
	}
}

// Err returns the error that stopped the log, if one did: then nothing
// more is durable and the store must be reopened.
func (s *Store) Err() error { return s.j.Err() }

// CompactReport says what a compaction did.
type CompactReport struct {
	Copied        int   // live messages written again at the head of the log
	CopiedBytes   int64 // their payload bytes
	SegmentsFreed int
}

// Compact frees the log's space: segments whose messages are all gone are
// deleted, and while the oldest segment holds little that is live (at
// most a quarter of a segment's size), its live messages are copied
// forward so it can go too (if the copies fit in the free-space
// reserve). It returns once everything appended before it is durable
// and the segments are deleted.
func (s *Store) Compact(ctx context.Context) (CompactReport, error) {
	segs := s.j.Segments()
	var rep CompactReport
	if len(segs) < 2 {
		return rep, nil
	}
	s.mu.Lock()
	// Live messages in closed segments, oldest segment first, and how
	// many bytes each segment still holds live.
	head := segs[len(segs)-1]
	type ref struct {
		queue string
		id    uint64
	}
	var old []ref
	liveBytes := make([]int64, len(segs))
	for q, live := range s.queues {
		for id, e := range live {
			if e.lsn < head {
				old = append(old, ref{q, id})
				i, _ := slices.BinarySearch(segs, e.lsn+1)
				liveBytes[i-1] += int64(len(e.payload)+len(e.file)) + 64
			}
		}
	}
	// Copy forward the messages of the oldest segments while each holds
	// little that is live; stop at the first worth keeping.
	var upTo uint64 // copy messages whose record is below this
	for i := 0; i+1 < len(segs); i++ {
		if liveBytes[i] > s.size/4 {
			break
		}
		upTo = segs[i+1]
	}
	// The copies must fit in the reserve: a write failing for want of
	// space would stop the log.
	var need int64
	for _, r := range old {
		if e := s.queues[r.queue][r.id]; e.lsn < upTo {
			need += int64(len(e.payload)+len(e.file)) + 64
		}
	}
	if need > 0 && s.space.room(need) != nil {
		upTo = 0
	}
	for k, m := range s.meta {
		if m.lsn < upTo {
			q, g := splitKey(k)
			if _, err := s.appendLocked(Op{Type: TypeQueue, Queue: q, Group: g, Meta: m.meta}); err != nil {
				s.mu.Unlock()
				return rep, err
			}
		}
	}
	for _, r := range old {
		e := s.queues[r.queue][r.id]
		if e.lsn >= upTo {
			continue
		}
		q, g := splitKey(r.queue)
		if _, err := s.appendLocked(Op{Type: TypeStore, Queue: q, Group: g, ID: r.id, Deliveries: e.deliveries, Attrs: e.attrs, Payload: e.payload, File: e.file, Size: e.size}); err != nil {
			s.mu.Unlock()
			return rep, err
		}
		rep.Copied++
		rep.CopiedBytes += int64(len(e.payload))
	}
	// The stores that gave the highest sequence numbers may be in the
	// segments about to go: say how high they went first (and copy that
	// forward like the rest), so that a restart never gives a number
	// twice.
	if s.nextSeq > 0 && (s.nextSeq > s.seqRecorded || s.seqLSN < upTo) {
		if _, err := s.appendLocked(Op{Type: TypeSeq, ID: s.nextSeq}); err != nil {
			s.mu.Unlock()
			return rep, err
		}
	}
	oldest := uint64(math.MaxUint64) // nothing live: all but the head may go
	for _, live := range s.queues {
		for _, e := range live {
			oldest = min(oldest, e.lsn)
		}
	}
	for _, m := range s.meta {
		oldest = min(oldest, m.lsn)
	}
	if s.seqLSN > 0 {
		oldest = min(oldest, s.seqLSN)
	}
	// Segments may go only once every record that emptied them (and the
	// copies) is durable: a take still in the writer's hands must not
	// outlive the store it removes.
	// Under a sync interval that is up to an interval away.
	through := s.j.LastAppended()
	s.mu.Unlock()
	if err := s.WaitDurable(ctx, through); err != nil {
		return rep, err
	}
	n, err := s.j.Release(oldest)
	rep.SegmentsFreed = n
	return rep, err
}

// Close writes and syncs what was appended, closes the log, deletes the
// payload files it no longer needs and releases the data directory.
func (s *Store) Close() error {
	err := s.j.Close()
	if err == nil && errors.Is(s.j.Err(), journal.ErrClosed) {
		s.collect(math.MaxUint64) // every record is durable
	}
	s.unlock()
	return err
}
