package durable

import (
	"bytes"
	"testing"
)

// FuzzDecode feeds arbitrary record data of every type to Decode: it
// never panics, and what it accepts encodes back to the same bytes.
func FuzzDecode(f *testing.F) {
	for _, op := range []Op{
		{Type: TypeStore, Queue: "jobs", ID: 7, Deliveries: 2, Payload: []byte("hello")},
		{Type: TypeStore, Queue: "q", ID: 1},
		{Type: TypeStore, Queue: "big", ID: 9, File: "00ff00ff00ff00ff.page", Size: 64 << 20},
		{Type: TypeStore, Queue: "jobs.dlq", ID: 3, Deliveries: 1, Payload: []byte("x"),
			Attrs: Attrs{Seq: 77, UID: 1000, DigestAlg: 1, Digest: "0123456789abcdef0123456789abcdef", Dead: 1, DiedAfter: 4, Note: "no", Group: "g"}},
		{Type: TypeTake, Queue: "jobs", ID: 7},
		{Type: TypeDeliver, Queue: "jobs", ID: 7},
		{Type: TypeDrop, Queue: "jobs"},
		{Type: TypePurge, Queue: "jobs", ID: 100},
		{Type: TypeQueue, Queue: "jobs", Meta: QueueMeta{Creator: 1000, Owned: true, MaxDeliveries: 5, LeaseMillis: 30000}},
		{Type: TypeSeq, ID: 123456},
		{Type: TypeStore, Queue: "jobs", Group: "billing", ID: 8, Attrs: Attrs{Seq: 7}, Payload: []byte("view")},
		{Type: TypeTake, Queue: "jobs", Group: "billing", ID: 8},
		{Type: TypeDrop, Queue: "jobs", Group: "billing"},
		{Type: TypeQueue, Queue: "jobs", Group: "billing", Meta: QueueMeta{Creator: 1000}},
	} {
		f.Add(RecordType(op), encode(nil, op))
	}
	f.Add(TypeGroup, []byte{1, 'g', TypeGroup, 1, 'g', TypeTake})
	f.Add(TypeGroup, []byte{1, 'g', TypeSeq, 0, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add(uint8(0), []byte{})
	f.Add(uint8(1), []byte{0})
	f.Add(uint8(4), []byte{5, 'a'})
	f.Fuzz(func(t *testing.T, typ uint8, data []byte) {
		op, err := Decode(typ, data)
		if err != nil {
			return
		}
		again := encode(nil, op)
		if !bytes.Equal(again, data) {
			t.Fatalf("decoded %+v from %x, which encodes as %x", op, data, again)
		}
		if len(again) > encodedSize(op) {
			t.Fatalf("%+v encodes in %d bytes, more than the %d encodedSize reserves", op, len(again), encodedSize(op))
		}
	})
}
