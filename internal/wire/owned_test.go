package wire_test

import (
	"testing"

	"github.com/machq/machq/internal/wire"
)

// TestOwnedFlag checks that STORE and RETRIEVE carry FlagOwned in the
// header, beside INLINE, and that ParseStore reads it back.
func TestOwnedFlag(t *testing.T) {
	for _, owned := range []bool{false, true} {
		b := wire.AppendStore(nil, 1, wire.Store{Size: 2, Queue: []byte("q"), Owned: owned}, []byte("hi"), false)
		h, err := wire.ParseHeader(b)
		if err != nil {
			t.Fatal(err)
		}
		if got := h.Flags&wire.FlagOwned != 0; got != owned || h.Flags&wire.FlagInline == 0 {
			t.Fatalf("STORE owned=%v: flags %#x", owned, h.Flags)
		}
		st, payload, err := wire.ParseStore(h, b[wire.HeaderSize:])
		if err != nil || st.Owned != owned || string(payload) != "hi" {
			t.Fatalf("ParseStore owned=%v: %+v %q %v", owned, st, payload, err)
		}
		b = wire.AppendRetrieve(nil, 2, wire.Retrieve{Queue: []byte("q"), Owned: owned})
		if h, _ := wire.ParseHeader(b); (h.Flags&wire.FlagOwned != 0) != owned {
			t.Fatalf("RETRIEVE owned=%v: flags %#x", owned, h.Flags)
		}
	}
}
