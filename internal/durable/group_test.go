package durable

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// groupOf returns the consumer group called name of q, failing the test
// if q has none of that name.
func groupOf(t *testing.T, q Queue, name string) Queue {
	t.Helper()
	for _, g := range q.Groups {
		if g.Name == name {
			return g
		}
	}
	t.Fatalf("queue %s has no group %s (groups %+v)", q.Name, name, q.Groups)
	return Queue{}
}

// TestGroupsRecover: a queue's consumer groups come back with their own
// messages, takes and deliveries, an empty group comes back as it was,
// and a dropped group or queue takes its groups' messages with it.
func TestGroupsRecover(t *testing.T) {
	dir := t.TempDir()
	s, _, _ := mustOpen(t, Options{Dir: dir})
	for _, g := range []string{"billing", "audit", "idle"} {
		if _, err := s.DescribeGroup("jobs", g, 1000); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.DescribeGroup("gone", "g", 1); err != nil {
		t.Fatal(err)
	}
	// Each message stored once in the queue's terms, once per group as
	// that group's view of it.
	for id := uint64(1); id <= 4; id++ {
		for i, g := range []string{"billing", "audit"} {
			viewID := 10*id + uint64(i)
			must(t, s.write(ctx, Op{Type: TypeStore, Queue: "jobs", Group: g, ID: viewID, Attrs: Attrs{Seq: id, UID: 1000}, Payload: []byte(fmt.Sprint("job ", id))}))
		}
		must(t, s.write(ctx, Op{Type: TypeStore, Queue: "gone", Group: "g", ID: 100 + id, Payload: []byte("x")}))
	}
	must(t, s.write(ctx, Op{Type: TypeTake, Queue: "jobs", Group: "billing", ID: 10}))
	must(t, s.write(ctx, Op{Type: TypeDeliver, Queue: "jobs", Group: "audit", ID: 21}))
	must(t, s.write(ctx, Op{Type: TypePurge, Queue: "jobs", Group: "billing", ID: 30}))
	must(t, s.write(ctx, Op{Type: TypeDrop, Queue: "gone"}))
	must(t, s.Close())

	s, qs, rep := mustOpen(t, Options{Dir: dir})
	if _, ok := qs["gone"]; ok {
		t.Fatalf("a dropped queue's group came back: %+v", qs["gone"])
	}
	jobs, ok := qs["jobs"]
	if !ok || len(jobs.Groups) != 3 {
		t.Fatalf("jobs after recovery: %+v, want its three groups", jobs)
	}
	if got := ids(groupOf(t, jobs, "billing")); fmt.Sprint(got) != "[30 40]" {
		t.Errorf("billing holds %v, want [30 40]", got)
	}
	audit := groupOf(t, jobs, "audit")
	if got := ids(audit); fmt.Sprint(got) != "[11 21 31 41]" {
		t.Errorf("audit holds %v, want [11 21 31 41]", got)
	}
	if m := audit.Messages[1]; m.Deliveries != 1 || string(m.Payload) != "job 2" || m.Attrs.Seq != 2 {
		t.Errorf("audit's view of job 2: %+v", m)
	}
	if g := groupOf(t, jobs, "idle"); len(g.Messages) != 0 || g.Meta.Creator != 1000 {
		t.Errorf("the empty group: %+v, want no messages, created by 1000", g)
	}
	if rep.Messages != 6 {
		t.Errorf("report counts %d messages, want the 6 views", rep.Messages)
	}

	// A group dropped goes with its messages; the others stay.
	must(t, s.write(ctx, Op{Type: TypeDrop, Queue: "jobs", Group: "audit"}))
	must(t, s.Close())
	_, qs, _ = mustOpen(t, Options{Dir: dir})
	jobs = qs["jobs"]
	if len(jobs.Groups) != 2 || jobs.Groups[0].Name != "billing" || jobs.Groups[1].Name != "idle" {
		t.Fatalf("after dropping audit, jobs's groups: %+v", jobs.Groups)
	}
}

// TestGroupsSharePayloadFiles: one page fanned out to several groups is
// one payload file, deleted only when the last view of it is gone.
func TestGroupsSharePayloadFiles(t *testing.T) {
	dir := t.TempDir()
	s, _, _ := mustOpen(t, Options{Dir: dir})
	data := []byte("one page, three groups")
	fd := sealedPage(t, data)
	name, err := s.PreparePayload(fd, int64(len(data)))
	must(t, err)
	file := filepath.Join(dir, PayloadDir, name)
	groups := []string{"a", "b", "c"}
	for i, g := range groups {
		must(t, s.write(ctx, Op{Type: TypeStore, Queue: "q", Group: g, ID: uint64(i + 1), Attrs: Attrs{Seq: 1}, File: name, Size: int64(len(data))}))
	}
	must(t, s.write(ctx, Op{Type: TypeTake, Queue: "q", Group: "a", ID: 1}))
	must(t, s.write(ctx, Op{Type: TypeDrop, Queue: "q", Group: "b"}))
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("the payload file went while group c still holds its view: %v", err)
	}
	must(t, s.Close())

	s, qs, _ := mustOpen(t, Options{Dir: dir})
	c := groupOf(t, qs["q"], "c")
	if len(c.Messages) != 1 || c.Messages[0].File != file {
		t.Fatalf("group c after recovery: %+v, want its view of the page in %s", c.Messages, file)
	}
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("recovery removed a payload file a view refers to: %v", err)
	}
	must(t, s.write(ctx, Op{Type: TypeTake, Queue: "q", Group: "c", ID: 3}))
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("the payload file outlived the last view of it: %v", err)
	}
}

// TestGroupsOutliveCompaction: compaction copies groups' live views and
// descriptions forward like a queue's.
func TestGroupsOutliveCompaction(t *testing.T) {
	dir := t.TempDir()
	const seg = 16 << 10
	s, _, _ := mustOpen(t, Options{Dir: dir, SegmentSize: seg})
	if _, err := s.DescribeGroup("q", "g", 7); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DescribeGroup("q", "empty", 8); err != nil {
		t.Fatal(err)
	}
	must(t, s.write(ctx, Op{Type: TypeStore, Queue: "q", Group: "g", ID: 1, Attrs: Attrs{Seq: 1}, Payload: []byte("long-lived view")}))
	must(t, s.Deliver("q", 1)) // of the queue's own id 1: there is none
	must(t, s.write(ctx, Op{Type: TypeDeliver, Queue: "q", Group: "g", ID: 1}))
	payload := make([]byte, 200)
	for id := uint64(2); id < 2000; id++ {
		must(t, s.write(ctx, Op{Type: TypeStore, Queue: "q", Group: "g", ID: id, Payload: payload}))
		must(t, s.write(ctx, Op{Type: TypeTake, Queue: "q", Group: "g", ID: id}))
		if id%100 == 0 {
			if _, err := s.Compact(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := len(s.j.Segments()); n > 4 {
		t.Errorf("the log holds %d segments for one live view", n)
	}
	must(t, s.Close())
	_, qs, _ := mustOpen(t, Options{Dir: dir, SegmentSize: seg})
	q := qs["q"]
	g := groupOf(t, q, "g")
	if len(g.Messages) != 1 || string(g.Messages[0].Payload) != "long-lived view" || g.Messages[0].Deliveries != 1 || g.Meta.Creator != 7 {
		t.Fatalf("group g after compaction: %+v", g)
	}
	if e := groupOf(t, q, "empty"); e.Meta.Creator != 8 || len(e.Messages) != 0 {
		t.Fatalf("the empty group after compaction: %+v", e)
	}
}

// TestGroupRecordsDecode: a group's records decode to what was encoded,
// and a group record wrapping another group record, a sequence record or
// an unknown type is refused.
func TestGroupRecordsDecode(t *testing.T) {
	op := Op{Type: TypeStore, Queue: "jobs", Group: "billing", ID: 8, Deliveries: 2, Attrs: Attrs{Seq: 7, UID: 3}, Payload: []byte("view")}
	if RecordType(op) != TypeGroup {
		t.Fatalf("a group's store is written as type %d, want TypeGroup", RecordType(op))
	}
	data := encode(nil, op)
	if len(data) > encodedSize(op) {
		t.Errorf("encoded in %d bytes, more than the %d encodedSize reserves", len(data), encodedSize(op))
	}
	got, err := Decode(TypeGroup, data)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(op) {
		t.Fatalf("decoded %+v, %v; want %+v", got, err, op)
	}
	for _, bad := range [][]byte{
		{1, 'g', TypeGroup, 1, 'g', TypeTake, 1, 'q', 0, 0, 0, 0, 0, 0, 0, 0},
		{1, 'g', TypeSeq, 0, 1, 0, 0, 0, 0, 0, 0, 0},
		{1, 'g', 99},
		{0, TypeTake},
		{5, 'g'},
	} {
		if _, err := Decode(TypeGroup, bad); !errors.Is(err, ErrBadRecord) {
			t.Errorf("group record %x: %v, want ErrBadRecord", bad, err)
		}
	}
}
