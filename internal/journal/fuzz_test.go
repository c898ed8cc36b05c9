package journal

import (
	"context"
	"errors"
	"testing"
)

// segmentWith returns a MemFS holding a journal whose one segment's bytes
// after its header are body, and the segment's header salt.
func segmentWith(body []byte) (*MemFS, uint64) {
	fs := NewMemFS()
	j, _, err := Open(Options{FS: fs}, func(Record) error { return nil })
	if err != nil {
		panic(err)
	}
	j.Write(context.Background(), 1, []byte("first"))
	salt := j.segSalt
	j.Close()
	fs.Corrupt(segmentName(1), func(b []byte) []byte { return append(b[:HeaderSize:HeaderSize], body...) })
	return fs, salt
}

// FuzzRecover feeds recovery arbitrary segment bytes: it never panics,
// replays only records that decode (right CRC, numbers in order), and
// either succeeds, cutting or quarantining what does not, or refuses with
// ErrCorrupt.
func FuzzRecover(f *testing.F) {
	valid := func(n int) []byte {
		var b []byte
		for i := range n {
			b = appendRecord(b, 0, uint64(i+1), 1, payload(i))
		}
		return b
	}
	f.Add(valid(3), false)
	f.Add(valid(3)[:40], false)
	f.Add(append(valid(2), make([]byte, 100)...), true)
	flipped := valid(4)
	flipped[30] ^= 1
	f.Add(flipped, true)
	f.Add(flipped, false)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, body []byte, skip bool) {
		fs, salt := segmentWith(nil)
		// Records of the fuzzed bytes are salted with the real salt, so
		// that valid ones can occur.
		var re []byte
		for off := 0; off < len(body); {
			r, n, ok := decodeRecord(body[off:], 0)
			if !ok {
				re = append(re, body[off:]...)
				break
			}
			re = appendRecord(re, salt, r.LSN, r.Type, r.Data)
			off += n
		}
		fs.Corrupt(segmentName(1), func(b []byte) []byte { return append(b, re...) })
		next := uint64(1)
		j, rep, err := Open(Options{FS: fs, SkipCorrupt: skip}, func(r Record) error {
			if r.LSN < next || r.Type == 0 {
				t.Fatalf("replayed record %d of type %d after %d", r.LSN, r.Type, next-1)
			}
			next = r.LSN + 1
			return nil
		})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("recovery failed with %v", err)
			}
			return
		}
		if rep.NextLSN != next && rep.Records > 0 {
			t.Fatalf("next %d after replaying to %d", rep.NextLSN, next-1)
		}
		if _, err := j.Write(context.Background(), 1, []byte("after")); err != nil {
			t.Fatalf("writing after recovery: %v", err)
		}
		j.Close()
	})
}
