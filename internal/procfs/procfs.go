// Package procfs reads what the benchmark and the load test watch of a
// server process on this host: its resident memory and open descriptors.
package procfs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Status returns the resident set size in bytes (VmRSS) and the number of
// open descriptors of process pid.
func Status(pid int) (rss int64, fds int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("procfs: VmRSS of %d: %w", pid, err)
			}
			rss = kb << 10
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, 0, err
	}
	return rss, len(ents), nil
}
