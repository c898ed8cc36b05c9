package server

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Access says which local users may connect. The server's own user and
// root are always admitted; AllowUIDs and AllowGIDs admit others, checked
// with the peer's credentials (SO_PEERCRED) when it connects. Anyone else
// receives a DENIED error and is disconnected.
//
// The kernel checks the socket file's mode first: with an allow list,
// ListenAndServe makes the socket writable by everyone (0666) so that the
// server decides; the directory holding it must let those users through
// (at least mode 0711).
type Access struct {
	AllowUIDs []uint32
	// AllowGIDs admits a peer whose primary group, or one of whose
	// supplementary groups (read from /proc/PID/status), is listed.
	AllowGIDs []uint32
}

// open reports whether anyone beyond the server's user and root is
// admitted.
func (a *Access) open() bool { return len(a.AllowUIDs) > 0 || len(a.AllowGIDs) > 0 }

// admits reports whether a peer with cred may connect, and if not, why.
func (a *Access) admits(cred *unix.Ucred) (bool, string) {
	if cred == nil {
		return false, "its credentials could not be read"
	}
	if cred.Uid == 0 || int(cred.Uid) == os.Geteuid() || slices.Contains(a.AllowUIDs, cred.Uid) {
		return true, ""
	}
	if len(a.AllowGIDs) > 0 {
		if slices.Contains(a.AllowGIDs, cred.Gid) {
			return true, ""
		}
		for _, g := range supplementaryGroups(cred.Pid) {
			if slices.Contains(a.AllowGIDs, g) {
				return true, ""
			}
		}
	}
	return false, fmt.Sprintf("uid %d (gid %d) is not allowed to use this server; ask its operator to start machqd with --allow-uid %d or --allow-gid with one of your groups", cred.Uid, cred.Gid, cred.Uid)
}

// supplementaryGroups returns the supplementary groups of process pid, or
// none if they cannot be read (the process may have exited).
func supplementaryGroups(pid int32) []uint32 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return nil
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Groups:"); ok {
			var gs []uint32
			for _, f := range strings.Fields(v) {
				if g, err := strconv.ParseUint(f, 10, 32); err == nil {
					gs = append(gs, uint32(g))
				}
			}
			return gs
		}
	}
	return nil
}
