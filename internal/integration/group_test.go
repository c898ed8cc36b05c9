package integration_test

import (
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/machq/machq"
	"github.com/machq/machq/internal/wire"
	"github.com/machq/machq/internal/wiretest"
)

// memfds counts the sealed memfds the daemon holds open.
func (d *daemon) memfds() int {
	n := 0
	for _, f := range d.fdList() {
		if strings.Contains(f, "-> /memfd:") {
			n++
		}
	}
	return n
}

// TestIntegrationGroupFanOutHoldsThePageOnce: one 64 MiB page stored into
// a queue with 8 consumer groups is one memfd in machqd, whose memory
// does not grow with it; each group's consumer receives that same file
// (one inode, its 64 MiB allocated once), and acknowledging it in every
// group frees it.
func TestIntegrationGroupFanOutHoldsThePageOnce(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	const groups, size = 8, 64 << 20
	for i := range groups {
		r := runCLI(t, nil, "group", "create", "--socket", d.socket, "--queue", "wide", "--group", fmt.Sprint("g", i))
		if r.code != 0 || !strings.Contains(r.stdout, "created group") {
			t.Fatalf("group create: %d %q %q", r.code, r.stdout, r.stderr)
		}
	}
	rssBefore := d.rss()
	c := dial(t, d.socket)
	ctx := ctxT(t)
	p, err := machq.NewPage(size)
	if err != nil {
		t.Fatal(err)
	}
	for i := range p.Bytes() {
		p.Bytes()[i] = byte(i)
	}
	if _, err := c.SendPage(ctx, "wide", p); err != nil {
		t.Fatal(err)
	}
	if n := d.memfds(); n != 1 {
		t.Fatalf("machqd holds %d memfds for one page fanned out to %d groups", n, groups)
	}
	// A raw client, to see the descriptors themselves.
	raw := wiretest.DialHello(t, d.socket)
	var inode uint64
	tokens := make([]uint64, groups)
	for i := range groups {
		raw.Write(wire.AppendRetrieve(nil, uint64(i+1), wire.Retrieve{Queue: []byte("wide"), Group: []byte(fmt.Sprint("g", i)), Ack: true}))
		f := raw.Read()
		if f.Op != wire.OpMessage || len(f.FDs) != 1 {
			t.Fatalf("group %d: %s with %d descriptors", i, f.Op, len(f.FDs))
		}
		m, _, err := wire.ParseMessage(f.Header, f.Body)
		if err != nil {
			t.Fatal(err)
		}
		tokens[i] = m.Token
		var st unix.Stat_t
		if err := unix.Fstat(f.FDs[0], &st); err != nil {
			t.Fatal(err)
		}
		b, err := unix.Mmap(f.FDs[0], 0, size, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		last := b[size-1]
		unix.Munmap(b)
		unix.Close(f.FDs[0])
		if last != byte((size-1)%256) {
			t.Fatalf("group %d: the page's last byte is %d", i, last)
		}
		if i == 0 {
			inode = st.Ino
			if st.Blocks*512 > 2*size {
				t.Fatalf("the page's file holds %d bytes for %d", st.Blocks*512, size)
			}
		} else if st.Ino != inode {
			t.Fatalf("group %d received inode %d, group 0 inode %d: a copy", i, st.Ino, inode)
		}
	}
	if grew := d.rss() - rssBefore; grew > 16<<20 {
		t.Fatalf("machqd's memory grew %d MiB with a 64 MiB page in %d groups; it never maps pages", grew>>20, groups)
	}
	r := runCLI(t, nil, "stat", "--socket", d.socket)
	if !strings.Contains(r.stdout, "group g7") {
		t.Fatalf("stat does not list the groups:\n%s", r.stdout)
	}
	for i, tok := range tokens {
		raw.Write(wire.AppendSettle(nil, wire.OpAck, uint64(100+i), wire.Settle{Token: tok}))
		if f := raw.Read(); f.Op != wire.OpSettled {
			t.Fatalf("ACK in group %d: %s", i, f.Op)
		}
		if i < groups-1 && d.memfds() != 1 {
			t.Fatalf("after %d of %d groups acked, machqd holds %d memfds", i+1, groups, d.memfds())
		}
	}
	waitFor(t, "the page freed once every group acknowledged it", func() bool { return d.memfds() == 0 })
}

// TestIntegrationRetrieveThroughAGroup: machq retrieve --group takes a
// group's messages, each group seeing every message.
func TestIntegrationRetrieveThroughAGroup(t *testing.T) {
	d := startDaemon(t, "", "--log-level", "warn")
	for _, g := range []string{"a", "b"} {
		if r := runCLI(t, nil, "group", "create", "--socket", d.socket, "--queue", "q", "--group", g); r.code != 0 {
			t.Fatalf("group create: %+v", r)
		}
	}
	store(t, d.socket, "q", []byte("one"))
	for _, g := range []string{"a", "b"} {
		if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "q", "--group", g); r.code != 0 || r.stdout != "one" {
			t.Fatalf("retrieve --group %s: %+v", g, r)
		}
	}
	if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "q", "--group", "a"); r.code != 3 {
		t.Fatalf("group a again: %+v, want exit 3 (empty)", r)
	}
	if r := runCLI(t, nil, "retrieve", "--socket", d.socket, "--queue", "q", "--group", "zz"); r.code == 0 || !strings.Contains(r.stderr, "no consumer group zz") {
		t.Fatalf("a group that does not exist: %+v", r)
	}
	if r := runCLI(t, nil, "group", "delete", "--socket", d.socket, "--queue", "q", "--group", "a"); r.code != 0 || !strings.Contains(r.stdout, "deleted group a") {
		t.Fatalf("group delete: %+v", r)
	}
}
