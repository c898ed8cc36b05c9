package queue

import "testing"

// TestRestoreKeepsTheOrderGiven: messages restored in order of sequence
// number come out in that order, equal numbers in the order given, and a
// message restored out of order goes to its place; later stores get
// greater numbers.
func TestRestoreKeepsTheOrderGiven(t *testing.T) {
	q := New("q", nil)
	for i, seq := range []uint64{1, 2, 2, 5, 3} {
		q.Restore(&Message{Seq: seq, LogID: uint64(10 + i), FD: -1})
	}
	var got []uint64
	for m := q.Pop(); m != nil; m = q.Pop() {
		got = append(got, m.LogID)
	}
	want := []uint64{10, 11, 12, 14, 13}
	if len(got) != len(want) {
		t.Fatalf("popped %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("popped %v, want %v", got, want)
		}
	}
	if seq := q.Push(&Message{FD: -1}, nil); seq != 6 {
		t.Fatalf("the next store after restoring up to 5 got seq %d, want 6", seq)
	}
}
