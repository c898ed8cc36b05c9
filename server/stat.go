package server

import (
	"encoding/json"

	"github.com/machq/machq/internal/wire"
)

func (c *conn) handleStat(f wire.Frame) {
	doc, err := statsDoc(c.s.Stats())
	if err != nil {
		c.sendError(f.ID, wire.CodeInternal, err.Error())
		return
	}
	c.mu.Lock()
	c.out = wire.AppendStats(c.out, f.ID, doc)
	c.signal()
	c.mu.Unlock()
}

// statsDoc encodes st as JSON that fits in one frame, listing only as many
// named queues as fit and saying how many were left out.
func statsDoc(st Stats) ([]byte, error) {
	limit := wire.MaxFrameSize - wire.HeaderSize
	all := st.Queues
	for n := len(all); ; n /= 2 {
		st.Queues = all[:n]
		st.QueuesOmitted = len(all) - n
		doc, err := json.Marshal(st)
		if err != nil || len(doc) <= limit {
			return doc, err
		}
	}
}
