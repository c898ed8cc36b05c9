package queue

import (
	"cmp"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/machq/machq/internal/quota"
)

// Handing queues over.
//
// A server that restarts without a disk hands its named queues to its
// successor: Save describes them, every message and every consumer
// group's line, without changing them; the successor rebuilds them with
// Load. A payload shared by the views of several groups is described
// once. Messages pending with consumers are not saved: a server saves
// once its connections have ended, which returns them to their queues.

// SavedQueue is a named queue as Save describes it.
type SavedQueue struct {
	Name    string
	Creator uint32 // the user id that created it, or owns it when Owned
	Owned   bool
	Policy  Policy
	NextSeq uint64 // the sequence number its next message gets
	// Messages are those of its own line, those waiting out a NAK's
	// delay among them, by sequence number.
	Messages []SavedMessage
	Groups   []SavedGroup // by name
}

// SavedGroup is a consumer group of a saved queue.
type SavedGroup struct {
	Name    string
	Creator uint32
	Views   []SavedMessage // its line, delayed ones among them, by sequence number
}

// SavedMessage is one message of a queue's or a group's line. Its
// payload is Payloads[Payload] of the Saved that holds it.
type SavedMessage struct {
	Payload    int
	Seq        uint64
	Deliveries uint32
	Dead       uint8
	DiedAfter  uint32
	Note       string
	Group      string
}

// SavedPayload is the payload of one message, or of the views of one
// message in several groups.
type SavedPayload struct {
	FD        int    // the sealed memfd, or -1 for an inline payload
	Inline    []byte // when FD is -1
	Size      int64
	DigestAlg uint8
	Digest    string
	Charged   bool   // charged to the account of UID
	UID       uint32 // the storer's user id, when Charged
}

// Saved is what Save describes: queues and the payloads they hold, and
// what the registry remembers of queues it removed while idle.
type Saved struct {
	Queues   []SavedQueue
	Payloads []SavedPayload
	// NextStart is the first sequence number of a queue created anew:
	// above every number a removed queue gave, so that none is given
	// twice under one name.
	NextStart uint64
	// Removed are the queues removed while idle that come back as they
	// were on their next use (sequence numbers, settings), oldest first.
	Removed []SavedRemoved
}

// SavedRemoved is a queue removed while idle, remembered.
type SavedRemoved struct {
	Name    string
	NextSeq uint64
	Policy  Policy
}

// Save describes every named queue that keep selects, and what it holds,
// without changing anything: the descriptors and bytes it names stay the
// queues'. Nothing else may change the queues meanwhile (the server has
// stopped serving); a NAK's delay that ends during Save is harmless.
func (r *Registry) Save(keep func(*Queue) bool) Saved {
	r.mu.Lock()
	qs := make([]*Queue, 0, len(r.queues))
	for _, q := range r.queues {
		if keep(q) {
			qs = append(qs, q)
		}
	}
	r.mu.Unlock()
	slices.SortFunc(qs, func(a, b *Queue) int { return cmp.Compare(a.name, b.name) })
	var sv Saved
	ids := make(map[*shared]int) // payloads of views, saved once
	payload := func(m *Message) int {
		if m.shared != nil {
			if i, ok := ids[m.shared]; ok {
				return i
			}
			ids[m.shared] = len(sv.Payloads)
			sh := m.shared
			p := SavedPayload{FD: sh.fd, Inline: sh.inline, Size: sh.size, DigestAlg: sh.alg, Digest: sh.digest}
			if sh.charge != nil {
				p.Charged, p.UID = true, sh.charge.UID()
			}
			sv.Payloads = append(sv.Payloads, p)
			return ids[m.shared]
		}
		p := SavedPayload{FD: m.FD, Inline: m.Inline, Size: m.Size, DigestAlg: m.DigestAlg, Digest: m.Digest}
		if m.Charge != nil {
			p.Charged, p.UID = true, m.Charge.UID()
		}
		sv.Payloads = append(sv.Payloads, p)
		return len(sv.Payloads) - 1
	}
	for _, q := range qs {
		q.mu.Lock()
		s := SavedQueue{Name: q.name, Policy: q.policy, NextSeq: q.nextSeq, Messages: q.savedLine(payload)}
		s.Creator, s.Owned, _ = q.Described()
		for _, g := range q.sortedGroups() {
			g.mu.Lock()
			s.Groups = append(s.Groups, SavedGroup{Name: g.group, Creator: g.creator, Views: g.savedLine(payload)})
			g.mu.Unlock()
		}
		q.mu.Unlock()
		sv.Queues = append(sv.Queues, s)
	}
	r.mu.Lock()
	sv.NextStart = r.nextStart
	for i := range r.goneOrder {
		e := r.goneOrder[(r.goneHead+i)%len(r.goneOrder)]
		if was, ok := r.gone[e.name]; ok && was.n == e.n {
			sv.Removed = append(sv.Removed, SavedRemoved{Name: e.name, NextSeq: was.nextSeq, Policy: was.policy})
		}
	}
	r.mu.Unlock()
	return sv
}

// savedLine describes q's line and its delayed messages, by sequence
// number. q.mu is held.
func (q *Queue) savedLine(payload func(*Message) int) []SavedMessage {
	ms := make([]*Message, 0, q.n+len(q.delayed))
	for i := range q.n {
		ms = append(ms, q.items[(q.head+i)%len(q.items)])
	}
	for m := range q.delayed {
		ms = append(ms, m)
	}
	slices.SortStableFunc(ms, func(a, b *Message) int { return cmp.Compare(a.Seq, b.Seq) })
	out := make([]SavedMessage, len(ms))
	for i, m := range ms {
		out[i] = SavedMessage{Payload: payload(m), Seq: m.Seq, Deliveries: m.Deliveries, Dead: m.Dead, DiedAfter: m.DiedAfter, Note: m.Note, Group: m.Group}
	}
	return out
}

// Load rebuilds saved queues in r, which must not hold them yet: each
// queue with its owner, settings, next sequence number, line and consumer
// groups, each payload charged to the account of its storer (account
// returns it; never refused) and shared by its views as before. The
// registry takes the payloads' descriptors: on an error, those of the
// queues not loaded are closed, and the queues loaded stay.
func (r *Registry) Load(sv Saved, account func(uid uint32) *quota.Account) error {
	shares := make([]*shared, len(sv.Payloads))
	used := make([]bool, len(sv.Payloads))
	// A payload named more than once was shared by views: those of
	// consumer groups, and dead letters of groups, which are views in
	// their dead-letter queue's own line (one there while other groups
	// still hold theirs, or two groups' dead letters of one message).
	// Save describes a payload that is not a view's once per message.
	refs := make([]int, len(sv.Payloads))
	count := func(ms []SavedMessage) {
		for _, sm := range ms {
			if sm.Payload >= 0 && sm.Payload < len(refs) {
				refs[sm.Payload]++
			}
		}
	}
	for _, s := range sv.Queues {
		count(s.Messages)
		for _, g := range s.Groups {
			count(g.Views)
		}
	}
	message := func(q *Queue, sm SavedMessage) (*Message, error) {
		if sm.Payload < 0 || sm.Payload >= len(sv.Payloads) {
			return nil, fmt.Errorf("message %d names payload %d of %d", sm.Seq, sm.Payload, len(sv.Payloads))
		}
		p := sv.Payloads[sm.Payload]
		m := &Message{FD: p.FD, Inline: p.Inline, Size: p.Size, DigestAlg: p.DigestAlg, Digest: p.Digest}
		if p.FD < 0 && int64(len(p.Inline)) != p.Size {
			return nil, fmt.Errorf("message %d has %d inline bytes for a size of %d", sm.Seq, len(p.Inline), p.Size)
		}
		first := !used[sm.Payload]
		used[sm.Payload] = true
		if p.Charged {
			acct := account(p.UID)
			if first {
				acct.ForceHold(p.Size, p.FD >= 0)
			} else {
				acct.ForceHoldMessages(1) // a view beyond the first
			}
			m.Charge = acct
		}
		if q.group != "" || refs[sm.Payload] > 1 {
			sh := shares[sm.Payload]
			if sh == nil {
				m.Seq = sm.Seq
				counted := q // counted by a named queue, a group's parent
				if q.parent != nil {
					counted = q.parent
				}
				sh = counted.share(m)
				shares[sm.Payload] = sh
			}
			m = sh.view()
		}
		m.Seq, m.Deliveries, m.Dead, m.DiedAfter, m.Note, m.Group = sm.Seq, sm.Deliveries, sm.Dead, sm.DiedAfter, sm.Note, sm.Group
		return m, nil
	}
	r.mu.Lock()
	r.nextStart = max(r.nextStart, sv.NextStart)
	for _, was := range sv.Removed {
		if _, live := r.queues[was.Name]; !live && was.Name != "" {
			r.remember(was.Name, removed{nextSeq: was.NextSeq, policy: was.Policy})
		}
	}
	r.mu.Unlock()
	var err error
	for _, s := range sv.Queues {
		if err = r.load(s, message); err != nil {
			err = fmt.Errorf("queue %s: %w", s.Name, err)
			for j, p := range sv.Payloads {
				if !used[j] && p.FD >= 0 {
					unix.Close(p.FD)
				}
			}
			break
		}
	}
	return err
}

// load rebuilds one saved queue.
func (r *Registry) load(s SavedQueue, message func(*Queue, SavedMessage) (*Message, error)) error {
	existed := r.Lookup([]byte(s.Name))
	if existed != nil {
		r.Release(existed)
	}
	q, err := r.Acquire([]byte(s.Name), s.Creator, s.Owned)
	if err != nil {
		return err
	}
	defer r.Release(q)
	if existed == nil {
		// Its numbers go on exactly where they were, not from the
		// registry's start for new queues.
		q.mu.Lock()
		q.nextSeq = 1
		q.mu.Unlock()
	}
	q.SetPolicy(s.Policy)
	for _, sm := range s.Messages {
		m, err := message(q, sm)
		if err != nil {
			return err
		}
		q.Restore(m)
	}
	for _, sg := range s.Groups {
		if _, err := r.AddGroup(q, sg.Name, sg.Creator, false); err != nil {
			return fmt.Errorf("group %s: %w", sg.Name, err)
		}
		g := q.Group(sg.Name)
		for _, sm := range sg.Views {
			v, err := message(g, sm)
			if err != nil {
				return fmt.Errorf("group %s: %w", sg.Name, err)
			}
			g.Restore(v)
		}
	}
	q.mu.Lock()
	q.nextSeq = max(q.nextSeq, s.NextSeq)
	q.mu.Unlock()
	return nil
}
