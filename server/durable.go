package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/durable"
	"github.com/machq/machq/internal/journal"
	"github.com/machq/machq/internal/queue"
	"github.com/machq/machq/internal/stats"
	"github.com/machq/machq/internal/wire"
)

// Durable named queues (docs/STORAGE.md): with Config.Durable, what
// happens to the messages of a durable queue is a record of the data
// directory's log, appended where it happens (queue.Log, under the
// queue's lock) and durable before the answer that speaks of it is
// written: each connection's outbox carries the number of the last record
// its contents depend on, and the writer waits for it (group commit makes
// one sync serve every connection waiting). Under the opt-in
// lossy-interval policy (DurableConfig.LossySyncInterval) the writer
// waits only for the record to be written to the log, which is synced
// every interval.

// DurableConfig turns durable named queues on.
type DurableConfig struct {
	// Dir is the data directory, locked while the server runs.
	Dir string
	// Queues selects the durable named queues by a path.Match pattern
	// ("*", every one, when empty). Private queues and consumer groups
	// never are.
	Queues string
	// SkipCorrupt lets the server start past damage in the middle of the
	// log, losing the messages in it (the report names them).
	SkipCorrupt bool
	// MinFree is the free space kept in reserve on the data directory's
	// file system (0: durable.DefaultMinFree).
	MinFree int64
	// LossySyncInterval chooses the sync policy. 0, the default
	// (every-store): a store, take or other change of a durable queue is
	// answered only once it is on disk, and nothing answered is lost to
	// a power loss. Positive (lossy-interval): changes are answered once
	// written to the log, which is synced every LossySyncInterval
	// (MinSyncInterval to MaxSyncInterval): a crash of the server loses
	// nothing, but a power loss or a crash of the kernel may lose the
	// stores answered in the last interval, and bring back messages
	// whose take or acknowledgement was answered in it. ParseSync reads
	// machqd's --sync.
	LossySyncInterval time.Duration
}

// The bounds of DurableConfig.LossySyncInterval.
const (
	MinSyncInterval = time.Millisecond
	MaxSyncInterval = time.Minute
)

// ParseSync reads a sync policy as machqd's --sync gives it:
// "every-store" (0, the default) or "lossy-interval=DURATION" (the
// interval, a Go duration such as 100ms, from MinSyncInterval to
// MaxSyncInterval). The error says what is accepted.
func ParseSync(policy string) (time.Duration, error) {
	const use = "use every-store (each store on disk before it is answered; the default) or lossy-interval=DURATION (stores answered before they are on disk, synced every DURATION such as 100ms: a power loss may lose what was answered in the last DURATION)"
	if policy == stats.SyncEveryStore {
		return 0, nil
	}
	v, ok := strings.CutPrefix(policy, stats.SyncLossyInterval)
	if !ok || v != "" && v[0] != '=' {
		return 0, fmt.Errorf("unknown sync policy; %s", use)
	}
	if v = strings.TrimPrefix(v, "="); v == "" {
		return 0, fmt.Errorf("the lossy interval needs its DURATION, as in lossy-interval=100ms")
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration; use one such as 100ms or 1s", v)
	}
	if d <= 0 {
		return 0, errSyncBounds(d)
	}
	if err := checkSyncInterval(d); err != nil {
		return 0, err
	}
	return d, nil
}

// checkSyncInterval refuses a lossy sync interval out of bounds (0 is
// every-store).
func checkSyncInterval(d time.Duration) error {
	if d < 0 || (d > 0 && d < MinSyncInterval) || d > MaxSyncInterval {
		return errSyncBounds(d)
	}
	return nil
}

// errSyncBounds says that d is out of the bounds of a lossy interval.
func errSyncBounds(d time.Duration) error {
	short := func(d time.Duration) string { // 1m, not 1m0s
		s := d.String()
		if strings.HasSuffix(s, "m0s") {
			s = strings.TrimSuffix(s, "0s")
		}
		if strings.HasSuffix(s, "h0m") {
			s = strings.TrimSuffix(s, "0m")
		}
		return s
	}
	return fmt.Errorf("the lossy sync interval %s is out of bounds: give %s to %s", short(d), short(MinSyncInterval), short(MaxSyncInterval))
}

// ErrDurable wraps a failure of the data directory: a failed write or
// sync stops durable stores until the server is restarted.
var ErrDurable = errors.New("durable queues failed")

// durableLog is the server's queue.Log of one durable queue.
type durableLog struct {
	s *Server
}

// newLogID names messages in the log: never twice in one run, and
// started above every id recovered.
func (s *Server) newLogID() uint64 { return s.logIDs.Add(1) }

// openDurable opens the data directory, recovers its queues into the
// registry and logs the report. Called by New.
func (s *Server) openDurable() error {
	d := s.cfg.Durable
	if d.Queues == "" {
		d.Queues = "*"
	}
	if _, err := path.Match(d.Queues, ""); err != nil {
		return fmt.Errorf("machq: durable queue pattern %q: %w", d.Queues, err)
	}
	if err := checkSyncInterval(d.LossySyncInterval); err != nil {
		return fmt.Errorf("machq: %w", err)
	}
	opts := durable.Options{Dir: d.Dir, SkipCorrupt: d.SkipCorrupt, MinFree: d.MinFree, SyncInterval: d.LossySyncInterval}
	if s.obs != nil {
		opts.OnSync = s.obs.Synced
	}
	st, queues, rep, err := durable.Open(opts)
	if errors.Is(err, journal.ErrCorrupt) {
		return fmt.Errorf("machq: data directory %s: %w (machqd --skip-corrupt starts without the damaged records, keeping their bytes in a quarantine file)", d.Dir, err)
	}
	if err != nil {
		return fmt.Errorf("machq: data directory %s: %w", d.Dir, err)
	}
	s.store = st
	s.durablePattern = d.Queues
	log := &durableLog{s: s}
	s.named.SetLog(func(name string) queue.Log {
		if s.selects(name) {
			return log
		}
		return nil
	})
	var last uint64
	for _, dq := range queues {
		for _, q := range append([]durable.Queue{dq}, dq.Groups...) {
			last = max(last, q.LastID)
			for _, m := range q.Messages {
				last = max(last, m.ID)
			}
		}
	}
	s.logIDs.Store(last)
	for _, dq := range queues {
		if err := s.restoreQueue(dq); err != nil {
			st.Close()
			return err
		}
	}
	// Numbers go on above every one the log says was given, in any
	// queue, even by messages long gone.
	s.named.RaiseNextSeq(st.NextSeq())
	s.log.Info("durable queues recovered", "dir", d.Dir, "queues", rep.Queues, "messages", rep.Messages, "bytes", rep.PayloadBytes,
		"payload_files", rep.PayloadFiles, "segments", rep.Segments, "records", rep.Records, "took", rep.Took, "report", rep.String())
	if rep.TornTail != "" {
		s.log.Warn("durable log: torn tail cut (records never acknowledged)", "at", rep.TornTail, "bytes", rep.TornBytes)
	}
	for _, q := range rep.Quarantined {
		s.log.Error("durable log: DAMAGE skipped; the messages in it are lost", "segment", q.Segment, "from", q.From, "to", q.To, "kept_in", q.File, "lost_before_record", q.LostBefore)
	}
	if d.LossySyncInterval > 0 {
		s.log.Warn("durable queues: sync policy lossy-interval: stores are answered before they are on disk; a power loss may lose those answered in the last interval", "dir", d.Dir, "interval", d.LossySyncInterval)
	}
	s.compacted = make(chan struct{})
	go s.compactLoop()
	return nil
}

// compactInterval is how often the log's consumed segments are deleted
// (and the few live messages pinning old ones copied forward).
const compactInterval = 5 * time.Second

// compactLoop keeps the log about as large as what is live, until the
// server closes.
func (s *Server) compactLoop() {
	defer close(s.compacted)
	t := time.NewTicker(compactInterval)
	defer t.Stop()
	// A compaction waits for its records to be durable, up to a lossy
	// sync interval: the server's end does not wait for that.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		rep, err := s.store.Compact(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.durableFailed(err)
			return
		}
		if rep.SegmentsFreed > 0 || rep.Copied > 0 {
			s.log.Info("durable log compacted", "segments_freed", rep.SegmentsFreed, "copied", rep.Copied, "copied_bytes", rep.CopiedBytes)
		}
	}
}

// selects reports whether the named queue is durable: its name matches
// the pattern, or, for a dead-letter queue (NAME.dlq, NAME.dlq.dlq, ...),
// the name of the queue it serves does. A dead letter of a durable queue
// must stay durable: else moving it would lose it in a crash.
func (s *Server) selects(name string) bool {
	base := name
	for {
		b, ok := strings.CutSuffix(base, ".dlq")
		if !ok || b == "" {
			break
		}
		base = b
	}
	ok, _ := path.Match(s.durablePattern, base)
	return ok
}

// restoreQueue puts a recovered queue and its messages back.
func (s *Server) restoreQueue(dq durable.Queue) error {
	q, err := s.named.Acquire([]byte(dq.Name), dq.Meta.Creator, dq.Meta.Owned)
	if err != nil {
		return fmt.Errorf("machq: recovering queue %s: %w (raise --max-queues)", dq.Name, err)
	}
	defer s.named.Release(q)
	held := len(dq.Messages)
	for _, g := range dq.Groups {
		held += len(g.Messages)
	}
	if !q.Logged() && held == 0 {
		// Only its owner, settings or groups were kept, and the pattern
		// no longer selects it: it is a memory-only queue now.
		s.log.Info("a queue the durable queue pattern no longer selects keeps its owner, settings and consumer groups in memory only", "queue", dq.Name)
	} else if !q.Logged() {
		// The pattern no longer selects it: it stays a durable queue
		// until it is empty, rather than lose what it holds.
		return fmt.Errorf("machq: the data directory holds %d messages of queue %s (its consumer groups' included), which the durable queue pattern %q does not select: widen it, or consume them first", held, dq.Name, s.durablePattern)
	}
	q.SetPolicy(queue.Policy{MaxDeliveries: dq.Meta.MaxDeliveries, LeaseMillis: dq.Meta.LeaseMillis})
	for _, dm := range dq.Messages {
		a := dm.Attrs
		m := &queue.Message{
			Seq: a.Seq, LogID: dm.ID, FD: -1, Inline: dm.Payload, Size: int64(len(dm.Payload)),
			DigestAlg: a.DigestAlg, Digest: a.Digest, Deliveries: dm.Deliveries,
			Dead: a.Dead, Note: a.Note, DiedAfter: a.DiedAfter, Group: a.Group,
		}
		if m.Seq == 0 {
			m.Seq = dm.ID
		}
		if dm.File != "" {
			fd, size, err := durable.OpenPayload(dm.File)
			if err != nil {
				return fmt.Errorf("machq: recovering message %d of queue %s: %w", dm.ID, dq.Name, err)
			}
			m.FD, m.Size, m.Inline = fd, size, nil
			m.LogFile = filepath.Base(dm.File)
		}
		acct := s.ledger.Account(a.UID)
		acct.ForceHold(m.Size, m.FD >= 0)
		m.Charge = acct
		q.Restore(m)
	}
	return s.restoreGroups(q, dq)
}

// restoreGroups puts the recovered consumer groups of q back, each with
// its views: the views of one message in several groups (one place in
// the queue) share one payload, one page, as they did before.
func (s *Server) restoreGroups(q *queue.Queue, dq durable.Queue) error {
	payloads := make(map[uint64]*queue.Payload) // by place in the queue
	for _, dg := range dq.Groups {
		g, err := s.named.RestoreGroup(q, dg.Name, dg.Meta.Creator)
		if err != nil {
			return fmt.Errorf("machq: recovering consumer group %s of queue %s: %w", dg.Name, dq.Name, err)
		}
		for _, dm := range dg.Messages {
			a := dm.Attrs
			seq := cmp.Or(a.Seq, dm.ID)
			p := payloads[seq]
			acct := s.ledger.Account(a.UID)
			if p == nil {
				m := &queue.Message{Seq: seq, FD: -1, Inline: dm.Payload, Size: int64(len(dm.Payload)), DigestAlg: a.DigestAlg, Digest: a.Digest}
				if dm.File != "" {
					fd, size, err := durable.OpenPayload(dm.File)
					if err != nil {
						return fmt.Errorf("machq: recovering message %d of group %s of queue %s: %w", dm.ID, dg.Name, dq.Name, err)
					}
					m.FD, m.Size, m.Inline = fd, size, nil
					m.LogFile = filepath.Base(dm.File)
				}
				acct.ForceHold(m.Size, m.FD >= 0)
				m.Charge = acct
				p = q.SharePayload(m)
				payloads[seq] = p
			} else {
				acct.ForceHoldMessages(1) // every view beyond the first
			}
			v := p.View()
			v.LogID, v.Deliveries = dm.ID, dm.Deliveries
			v.Dead, v.Note, v.DiedAfter, v.Group = a.Dead, a.Note, a.DiedAfter, a.Group
			g.Restore(v)
		}
	}
	return nil
}

// Stored implements queue.Log.
func (l *durableLog) Stored(q *queue.Queue, m *queue.Message) {
	s := l.s
	m.LogID = s.newLogID()
	uid := uint32(0)
	if m.Charge != nil {
		uid = m.Charge.UID()
	}
	op := durable.Op{Group: q.GroupName(), ID: m.LogID, Deliveries: m.Deliveries, Attrs: durable.Attrs{
		Seq: m.Seq, UID: uid, DigestAlg: m.DigestAlg, Digest: m.Digest,
		Dead: m.Dead, DiedAfter: m.DiedAfter, Note: m.Note, Group: m.Group,
	}}
	switch {
	case m.FD < 0:
		op.Payload = m.Inline
	case m.PayloadFile != "":
		op.File, op.Size = m.PayloadFile, m.Size
		m.LogFile, m.PayloadFile = m.PayloadFile, ""
	case m.LogFile != "":
		// A view of a page in another group, or a page moving between
		// durable queues: its payload file is the one logged already,
		// which the store counts the references to.
		op.File, op.Size = m.LogFile, m.Size
	default:
		// A page that reached this queue without a payload file (a dead
		// letter or a kicked one of a queue whose file is gone): copy it
		// now. This blocks the queue for the copy; it is rare.
		name, err := s.store.PreparePayload(m.FD, m.Size)
		if err != nil {
			s.storedFailed(q, m, err)
			return
		}
		op.File, op.Size = name, m.Size
		m.LogFile = name
	}
	if op.Group != "" {
		// A group's view: its queue's description is recorded with the
		// queue's own stores.
		op.Type, op.Queue = durable.TypeStore, q.Name()
		if _, err := s.store.AppendWaited(op); err != nil {
			s.storedFailed(q, m, err)
		}
		return
	}
	// Whatever stored it, a client's STORE or a move, answers on a
	// durable server wait for every record appended (durableMark), so
	// the waiting connection writes this one.
	if _, err := s.store.AppendStore(q.Name(), metaOf(q), op); err != nil {
		s.storedFailed(q, m, err)
	}
}

// storedFailed handles a message that entered a durable queue without its
// record: it is in memory only. The counter tells a mover not to log the
// message gone from where it came (it would then be in neither queue
// after a crash); a full disk is logged, anything else stops durable
// stores.
func (s *Server) storedFailed(q *queue.Queue, m *queue.Message, err error) {
	m.LogID = 0
	s.storeFailures.Add(1)
	if errors.Is(err, durable.ErrNoSpace) {
		s.log.Warn("a message entered a durable queue in memory only: the data directory is full", "queue", q.Name(), "seq", m.Seq, "err", err)
		return
	}
	s.durableFailed(err)
}

// moved logs the message named was gone from the durable queue from,
// once it has entered the queue to, unless to is not durable or a record
// of some arrival failed meanwhile (failures, read before the move, changed): then the
// message stays recorded in from too, and comes back there after a
// crash rather than be lost.
func (s *Server) moved(from, to *queue.Queue, was, failures uint64) {
	if s.store == nil || was == 0 {
		return
	}
	if !to.Logged() || s.storeFailures.Load() != failures {
		s.log.Warn("a moved message stays recorded in its old queue: its arrival was not recorded", "queue", from.Name())
		return
	}
	s.logTake(from, was)
}

// Purged implements queue.Log: every message stored so far is gone.
func (l *durableLog) Purged(q *queue.Queue) {
	s := l.s
	if _, err := s.store.Append(durable.Op{Type: durable.TypePurge, Queue: q.Name(), Group: q.GroupName(), ID: s.logIDs.Load() + 1}); err != nil {
		s.durableFailed(err)
	}
}

// Dropped implements queue.Log.
func (l *durableLog) Dropped(q *queue.Queue) {
	if _, err := l.s.store.Append(durable.Op{Type: durable.TypeDrop, Queue: q.Name(), Group: q.GroupName()}); err != nil {
		l.s.durableFailed(err)
	}
}

// GroupCreated implements queue.Log.
func (l *durableLog) GroupCreated(g *queue.Queue) {
	creator, _, _ := g.Described()
	if _, err := l.s.store.DescribeGroup(g.Name(), g.GroupName(), creator); err != nil {
		l.s.durableFailed(err)
	}
}

// Left implements queue.Log: the message is gone from q's own line (it
// is in q's groups now, each view recorded there).
func (l *durableLog) Left(q *queue.Queue, logID uint64) {
	if _, err := l.s.store.Append(durable.Op{Type: durable.TypeTake, Queue: q.Name(), ID: logID}); err != nil {
		l.s.durableFailed(err)
	}
}

// metaOf describes q for the log; q's lock is held (in a queue.Log
// method).
func metaOf(q *queue.Queue) durable.QueueMeta {
	return metaFrom(q.Described())
}

// metaFrom is what the log keeps of a queue described so.
func metaFrom(creator uint32, owned bool, p queue.Policy) durable.QueueMeta {
	return durable.QueueMeta{Creator: creator, Owned: owned, MaxDeliveries: p.MaxDeliveries, LeaseMillis: p.LeaseMillis}
}

// logMeta records the description of the durable queue q now, unless
// the log has it already: CONFIG changed it, or an owned queue was just
// created, whose owner must survive a restart even before its first
// message.
func (s *Server) logMeta(q *queue.Queue) {
	if s.store == nil || !q.Logged() {
		return
	}
	q.Describe(func(creator uint32, owned bool, p queue.Policy) {
		if _, err := s.store.Describe(q.Name(), metaFrom(creator, owned, p)); err != nil {
			s.durableFailed(err)
		}
	})
}

// logTake records m, of the durable queue q, gone, returning the record's
// number (0 if q is not durable).
func (s *Server) logTake(q *queue.Queue, logID uint64) uint64 {
	if s.store == nil || logID == 0 || !q.Logged() {
		return 0
	}
	// The answer handing the message over waits for this record
	// (durableMark), and so writes it.
	lsn, err := s.store.AppendWaited(durable.Op{Type: durable.TypeTake, Queue: q.Name(), Group: q.GroupName(), ID: logID})
	if err != nil {
		s.durableFailed(err)
		return failedLSN
	}
	return lsn
}

// logDeliver records m, of the durable queue q, delivered in ack mode.
func (s *Server) logDeliver(q *queue.Queue, m *queue.Message) {
	if s.store == nil || m.LogID == 0 || !q.Logged() {
		return
	}
	if _, err := s.store.Append(durable.Op{Type: durable.TypeDeliver, Queue: q.Name(), Group: q.GroupName(), ID: m.LogID}); err != nil {
		s.durableFailed(err)
	}
}

// waitDurable waits until record lsn of the log may be answered: durable,
// or under the lossy-interval policy written.
func (s *Server) waitDurable(lsn uint64) error {
	if lsn == failedLSN {
		return fmt.Errorf("%w: a record could not be appended", ErrDurable)
	}
	if err := s.store.WaitCommitted(context.Background(), lsn); err != nil {
		s.durableFailed(err)
		return fmt.Errorf("%w: %w", ErrDurable, err)
	}
	return nil
}

// failedLSN is an outbox watermark no record reaches: the outbox waiting
// on it fails, and the connection closes rather than answer as if a
// record had been written.
const failedLSN = ^uint64(0)

// durableFailed logs a failure of the data directory, once.
func (s *Server) durableFailed(err error) {
	if s.durableBroken.CompareAndSwap(false, true) {
		s.log.Error("DURABLE QUEUES FAILED: stores to durable queues are refused until the server is restarted", "dir", s.cfg.Durable.Dir, "err", err)
	}
}

// durableRefusal says why a store of size bytes (a page, or inline) to
// the durable queue q cannot be accepted now, or nil. A page's room is
// made when its file is prepared (preparePage), not counted twice.
func (s *Server) durableRefusal(q *queue.Queue, size int64, page bool) error {
	if s.store == nil || !q.Logged() {
		return nil
	}
	if err := s.store.Err(); err != nil {
		s.durableFailed(err)
		return fmt.Errorf("%w: the data directory %s failed (%v); the server must be restarted to store durably again", ErrDurable, s.cfg.Durable.Dir, err)
	}
	if s.durableBroken.Load() {
		return fmt.Errorf("%w: the data directory %s failed; the server must be restarted to store durably again", ErrDurable, s.cfg.Durable.Dir)
	}
	if page {
		return nil // preparePage makes room for its file, once
	}
	return s.store.Room(size)
}

// durableCode is the error code of a durable store refused: LIMIT for a
// full data directory (the store can be retried once space is freed),
// INTERNAL for a failed one.
func durableCode(err error) wire.Code {
	if errors.Is(err, durable.ErrNoSpace) {
		return wire.CodeLimit
	}
	return wire.CodeInternal
}

// preparePage copies the page of m, bound for the durable queue q, into
// its payload file before the store, so that the record appended under
// the queue's lock only names it.
func (s *Server) preparePage(q *queue.Queue, m *queue.Message) error {
	if s.store == nil || m.FD < 0 || !q.Logged() {
		return nil
	}
	name, err := s.store.PreparePayload(m.FD, m.Size)
	if err != nil {
		return err
	}
	m.PayloadFile = name
	return nil
}

// discardPage deletes the payload file prepared for m if its store was
// refused.
func (s *Server) discardPage(m *queue.Message) {
	if m.PayloadFile != "" && s.store != nil {
		s.store.DiscardPayload(m.PayloadFile)
		m.PayloadFile = ""
	}
}

// durableStats describes the data directory for STATS; nil without one.
func (s *Server) durableStats() *stats.Durable {
	if s.store == nil {
		return nil
	}
	d := &stats.Durable{Dir: s.cfg.Durable.Dir, Queues: s.durablePattern, Sync: stats.SyncEveryStore,
		Segments: s.store.Segments(), Records: s.store.LastAppended()}
	if iv := s.store.SyncInterval(); iv > 0 {
		records, bytes := s.store.Unsynced()
		d.Sync = stats.SyncLossyInterval
		d.SyncIntervalMillis = int64((iv + time.Millisecond - 1) / time.Millisecond)
		d.Unsynced = &stats.Unsynced{Records: records, Bytes: bytes}
	}
	if err := s.store.Err(); err != nil && !errors.Is(err, journal.ErrClosed) {
		d.Failed = err.Error()
	} else if s.durableBroken.Load() {
		d.Failed = "a write to the data directory failed"
	}
	return d
}

// closeDurable closes the data directory at the end of Shutdown or Close.
func (s *Server) closeDurable() {
	if s.store == nil {
		return
	}
	<-s.compacted // s.done is closed: the loop ends
	if err := s.store.Close(); err != nil && !errors.Is(err, unix.EBADF) {
		s.log.Warn("closing the data directory", "err", err)
	}
}

var _ queue.Log = (*durableLog)(nil)

// logState is the part of Server the durable queues use.
type logState struct {
	store          *durable.Store
	durablePattern string
	logIDs         atomic.Uint64
	durableBroken  atomic.Bool
	storeFailures  atomic.Uint64 // arrivals in durable queues not recorded
	compacted      chan struct{} // closed when compactLoop returns
}
