// Package quota accounts for what a server holds on behalf of its
// clients, in all and per user id: stored messages, their payload bytes,
// the pages among them (each an open descriptor), retrieves waiting for a
// message, and the descriptors of the process itself.
//
// A message is charged once, when the server accepts it, to the user who
// stored it, and discharged once, when the server lets go of it: when its
// response has been written to the consumer's socket, or when it is freed.
// Where it is in between (a queue, a connection's unsent responses, a
// write under way) does not matter, so nothing the server holds escapes
// the limits.
//
// Every check adds first and takes back what it added when a limit would
// be passed, with atomic counters: a limit is never passed, even by
// concurrent requests, and the hot path takes no lock.
package quota

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// Limits bounds one set of counters. A value <= 0 means no limit.
type Limits struct {
	Messages int64 // messages held
	Bytes    int64 // payload bytes held
	Pages    int64 // messages held as pages
	Waiting  int64 // retrieves waiting for a message
}

// Config configures a Ledger.
type Config struct {
	Total  Limits // what all users together may make the server hold
	PerUID Limits // what one user id may
	// Descriptors is how many descriptors pages and connections may
	// use together; <= 0 means no limit. The server keeps the rest of
	// its descriptor limit as headroom for everything else.
	Descriptors int64
	// DescriptorsPerUID is how many of them one user id's pages and
	// connections may use; <= 0 means no limit.
	DescriptorsPerUID int64
	// ConnectionDescriptors is what one connection takes from
	// Descriptors: its socket and the most descriptors it may have in
	// flight, received but not yet stored or closed. Zero means 1.
	ConnectionDescriptors int64
}

// Kind names a limit a request would pass.
type Kind uint8

// The limits a charge can be refused for.
const (
	TotalMessages Kind = iota + 1
	TotalBytes
	TotalPages
	TotalWaiting
	UIDMessages
	UIDBytes
	UIDPages
	UIDWaiting
	Descriptors
	UIDDescriptors
)

// Exceeded reports a charge refused because it would pass a limit.
type Exceeded struct {
	Kind Kind
	UID  uint32 // the user charged, for the per-uid kinds
	Have int64  // what is held already
	Max  int64  // the limit
	Want int64  // what the refused charge asked for
}

func (e *Exceeded) Error() string {
	return fmt.Sprintf("quota: limit %d passed: %d held, %d more asked for", e.Max, e.Have, e.Want)
}

// PerUID reports whether the limit passed is one user's.
func (e *Exceeded) PerUID() bool {
	return e.Kind >= UIDMessages && e.Kind <= UIDWaiting || e.Kind == UIDDescriptors
}

// counters is one set of held amounts.
type counters struct {
	messages    atomic.Int64
	bytes       atomic.Int64
	pages       atomic.Int64
	waiting     atomic.Int64
	connections atomic.Int64
	fds         atomic.Int64 // descriptors of pages and connections
}

// Usage is a snapshot of counters.
type Usage struct {
	Messages    int64 `json:"messages"`
	Bytes       int64 `json:"bytes"`
	Pages       int64 `json:"pages"`
	Waiting     int64 `json:"waiting"`
	Connections int64 `json:"connections"`
	Descriptors int64 `json:"descriptors"`
}

func (c *counters) usage() Usage {
	return Usage{
		Messages:    c.messages.Load(),
		Bytes:       c.bytes.Load(),
		Pages:       c.pages.Load(),
		Waiting:     c.waiting.Load(),
		Connections: c.connections.Load(),
		Descriptors: c.fds.Load(),
	}
}

// Ledger holds the counters of a server. It is safe for concurrent use.
type Ledger struct {
	cfg   Config
	total counters
	fds   atomic.Int64 // descriptors taken by pages and connections

	mu       sync.Mutex
	accounts map[uint32]*Account
}

// New returns a Ledger with nothing held.
func New(cfg Config) *Ledger {
	if cfg.ConnectionDescriptors <= 0 {
		cfg.ConnectionDescriptors = 1
	}
	return &Ledger{cfg: cfg, accounts: make(map[uint32]*Account)}
}

// Account returns the account of user id uid, creating it on first use.
// Accounts are kept for the life of the Ledger: there is one per user id
// that ever connected, which only the system's users bound.
func (l *Ledger) Account(uid uint32) *Account {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.accounts[uid]
	if a == nil {
		a = &Account{uid: uid, l: l}
		l.accounts[uid] = a
	}
	return a
}

// Total returns what all users hold.
func (l *Ledger) Total() Usage {
	u := l.total.usage()
	u.Descriptors = l.fds.Load()
	return u
}

// DescriptorsUsed returns the descriptors taken by pages and connections,
// and the most they may take (<= 0: no limit).
func (l *Ledger) DescriptorsUsed() (used, budget int64) {
	return l.fds.Load(), l.cfg.Descriptors
}

// UserUsage is one user's usage.
type UserUsage struct {
	UID uint32 `json:"uid"`
	Usage
}

// Users returns the usage of every user who holds anything or is
// connected, in no particular order.
func (l *Ledger) Users() []UserUsage {
	l.mu.Lock()
	accts := make([]*Account, 0, len(l.accounts))
	for _, a := range l.accounts {
		accts = append(accts, a)
	}
	l.mu.Unlock()
	out := make([]UserUsage, 0, len(accts))
	for _, a := range accts {
		u := a.c.usage()
		if u != (Usage{}) {
			out = append(out, UserUsage{UID: a.uid, Usage: u})
		}
	}
	return out
}

// take adds n to c and reports whether c stays within max; if not, it
// takes n back.
func take(c *atomic.Int64, n, max int64) (have int64, ok bool) {
	v := c.Add(n)
	if max > 0 && v > max {
		c.Add(-n)
		return v - n, false
	}
	return v - n, true
}

// Account is one user id's share of a Ledger.
type Account struct {
	uid uint32
	l   *Ledger
	c   counters
}

// UID returns the user id the account belongs to.
func (a *Account) UID() uint32 { return a.uid }

// Usage returns what the user holds.
func (a *Account) Usage() Usage { return a.c.usage() }

// Hold charges one message of size payload bytes to the user and to the
// totals, and a descriptor when it is a page. It charges nothing and
// returns an *Exceeded when that would pass a limit.
func (a *Account) Hold(size int64, page bool) error {
	l := a.l
	var pages int64
	if page {
		pages = 1
	}
	type step struct {
		c    *atomic.Int64
		n    int64
		max  int64
		kind Kind
	}
	steps := [...]step{
		{&l.total.messages, 1, l.cfg.Total.Messages, TotalMessages},
		{&l.total.bytes, size, l.cfg.Total.Bytes, TotalBytes},
		{&l.total.pages, pages, l.cfg.Total.Pages, TotalPages},
		{&a.c.messages, 1, l.cfg.PerUID.Messages, UIDMessages},
		{&a.c.bytes, size, l.cfg.PerUID.Bytes, UIDBytes},
		{&a.c.pages, pages, l.cfg.PerUID.Pages, UIDPages},
		{&a.c.fds, pages, l.cfg.DescriptorsPerUID, UIDDescriptors},
		{&l.fds, pages, l.cfg.Descriptors, Descriptors},
	}
	for i, s := range steps {
		if s.n == 0 {
			continue
		}
		if have, ok := take(s.c, s.n, s.max); !ok {
			for _, u := range steps[:i] {
				u.c.Add(-u.n)
			}
			return &Exceeded{Kind: s.kind, UID: a.uid, Have: have, Max: s.max, Want: s.n}
		}
	}
	return nil
}

// ForceHold is Hold whatever the limits: for messages recovered from a
// durable queue's log, which were accepted within the limits once and
// are never dropped for them (a server restarted with lower limits holds
// them past the limits until they are consumed).
func (a *Account) ForceHold(size int64, page bool) {
	l := a.l
	l.total.messages.Add(1)
	l.total.bytes.Add(size)
	a.c.messages.Add(1)
	a.c.bytes.Add(size)
	if page {
		l.total.pages.Add(1)
		a.c.pages.Add(1)
		a.c.fds.Add(1)
		l.fds.Add(1)
	}
}

// Unhold discharges what Hold charged for a message of size bytes.
func (a *Account) Unhold(size int64, page bool) {
	l := a.l
	l.total.messages.Add(-1)
	l.total.bytes.Add(-size)
	a.c.messages.Add(-1)
	a.c.bytes.Add(-size)
	if page {
		l.total.pages.Add(-1)
		a.c.pages.Add(-1)
		a.c.fds.Add(-1)
		l.fds.Add(-1)
	}
}

// HoldMessages charges n more messages, of no bytes, to the user and to
// the totals (the views of a message fanned out to consumer groups), or
// returns an *Exceeded and charges nothing.
func (a *Account) HoldMessages(n int64) error {
	l := a.l
	if have, ok := take(&l.total.messages, n, l.cfg.Total.Messages); !ok {
		return &Exceeded{Kind: TotalMessages, UID: a.uid, Have: have, Max: l.cfg.Total.Messages, Want: n}
	}
	if have, ok := take(&a.c.messages, n, l.cfg.PerUID.Messages); !ok {
		l.total.messages.Add(-n)
		return &Exceeded{Kind: UIDMessages, UID: a.uid, Have: have, Max: l.cfg.PerUID.Messages, Want: n}
	}
	return nil
}

// ForceHoldMessages is HoldMessages whatever the limits: for views made
// of messages stored already.
func (a *Account) ForceHoldMessages(n int64) {
	a.l.total.messages.Add(n)
	a.c.messages.Add(n)
}

// UnholdMessages discharges what HoldMessages charged.
func (a *Account) UnholdMessages(n int64) {
	a.l.total.messages.Add(-n)
	a.c.messages.Add(-n)
}

// Wait charges one waiting retrieve, or returns an *Exceeded.
func (a *Account) Wait() error {
	l := a.l
	if have, ok := take(&l.total.waiting, 1, l.cfg.Total.Waiting); !ok {
		return &Exceeded{Kind: TotalWaiting, UID: a.uid, Have: have, Max: l.cfg.Total.Waiting, Want: 1}
	}
	if have, ok := take(&a.c.waiting, 1, l.cfg.PerUID.Waiting); !ok {
		l.total.waiting.Add(-1)
		return &Exceeded{Kind: UIDWaiting, UID: a.uid, Have: have, Max: l.cfg.PerUID.Waiting, Want: 1}
	}
	return nil
}

// Unwait discharges n waiting retrieves.
func (a *Account) Unwait(n int) {
	a.l.total.waiting.Add(-int64(n))
	a.c.waiting.Add(-int64(n))
}

// Connect charges a connection's descriptors, or returns an *Exceeded of
// kind UIDDescriptors or Descriptors. Connection counts themselves are
// the server's to limit; the account only shows them.
func (a *Account) Connect() error {
	l := a.l
	n := l.cfg.ConnectionDescriptors
	if have, ok := take(&a.c.fds, n, l.cfg.DescriptorsPerUID); !ok {
		return &Exceeded{Kind: UIDDescriptors, UID: a.uid, Have: have, Max: l.cfg.DescriptorsPerUID, Want: n}
	}
	if have, ok := take(&l.fds, n, l.cfg.Descriptors); !ok {
		a.c.fds.Add(-n)
		return &Exceeded{Kind: Descriptors, UID: a.uid, Have: have, Max: l.cfg.Descriptors, Want: n}
	}
	a.c.connections.Add(1)
	return nil
}

// Disconnect discharges what Connect charged.
func (a *Account) Disconnect() {
	a.l.fds.Add(-a.l.cfg.ConnectionDescriptors)
	a.c.fds.Add(-a.l.cfg.ConnectionDescriptors)
	a.c.connections.Add(-1)
}

// Connections returns the user's connections.
func (a *Account) Connections() int64 { return a.c.connections.Load() }
