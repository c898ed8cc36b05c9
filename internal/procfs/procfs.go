// Package procfs reads what the benchmark, the load test and the tests
// watch of a server process on this host: its resident memory, now and at
// its peak, and its open descriptors.
package procfs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// PeakRSS returns the most resident memory in bytes (VmHWM) process pid
// has had since it started or since the last ResetPeak.
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("procfs: VmHWM of %d: %w", pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("procfs: no VmHWM in /proc/%d/status", pid)
}

// ResetPeak resets process pid's peak resident memory to its current
// resident memory (proc(5): writing 5 to clear_refs), so that PeakRSS
// then shows what a piece of work cost at its height, even if the memory
// was released before it could be sampled.
func ResetPeak(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

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
