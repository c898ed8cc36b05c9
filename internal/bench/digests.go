package bench

import (
	"time"

	"github.com/machq/machq"
)

// digests measures each digest machq offers at each size: the cost a
// sender pays once to compute it and a receiver pays once to verify it.
func (e *environment) digests() {
	for _, size := range e.cfg.Sizes {
		if size == 0 {
			continue
		}
		b := payload(size)
		for _, d := range []machq.Digest{machq.DigestSHA256, machq.DigestBLAKE3} {
			var times []time.Duration
			deadline := time.Now().Add(e.cfg.Time / 4)
			for len(times) < 3 || (time.Now().Before(deadline) && len(times) < 1000) {
				start := time.Now()
				d.Sum(b)
				times = append(times, time.Since(start))
			}
			med, _ := percentiles(times)
			e.report.Digests = append(e.report.Digests, DigestCost{Digest: d.String(), Size: size, Median: Duration(med),
				MBps: float64(size) / med.Seconds() / 1e6})
		}
	}
}
