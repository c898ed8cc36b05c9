package mqueue

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrTooLarge is returned, wrapped with the limit that applies, when
// POSIX message queues cannot carry a payload of the size asked for.
var ErrTooLarge = errors.New("mqueue: payload too large for a POSIX message queue")

const (
	// hardMsgsizeMax is HARD_MSGSIZEMAX, the kernel's cap on mq_msgsize
	// even for a process with CAP_SYS_RESOURCE.
	hardMsgsizeMax = 16 << 20
	// hardMsgMax is HARD_MSGMAX, the same for mq_maxmsg.
	hardMsgMax = 65536
	// msgOverhead bounds what the kernel charges to RLIMIT_MSGQUEUE for
	// each message slot besides its mq_msgsize bytes (a struct msg_msg
	// and a priority tree node).
	msgOverhead = 128
	// Defaults of fs.mqueue.msgsize_max and fs.mqueue.msg_max, used if
	// /proc cannot be read.
	defaultMsgsizeMax = 8192
	defaultMsgMax     = 10
)

// limits is what this process may create.
type limits struct {
	maxSize    int    // largest payload, -1 if queues are unavailable
	why        string // what caps maxSize
	msgMax     int    // largest mq_maxmsg
	rlimit     uint64 // RLIMIT_MSGQUEUE after raising it
	privileged bool   // CAP_SYS_RESOURCE lifts the sysctl caps
	err        error  // why queues are unavailable
}

var (
	limitsOnce sync.Once
	lim        limits
)

// MaxSize returns the largest payload this process can send through a
// pair of POSIX message queues, after raising RLIMIT_MSGQUEUE as far as it
// may, and a description of the limit that sets it, such as
// "fs.mqueue.msgsize_max 8 KiB ...". It returns -1 if this system has no
// POSIX message queues. The limits are worked out once, the first time
// MaxSize or Dial is called.
func MaxSize() (int, string) {
	l := getLimits()
	return l.maxSize, l.why
}

func getLimits() *limits {
	limitsOnce.Do(func() { lim = probeLimits() })
	return &lim
}

func probeLimits() limits {
	rlimit := raiseRlimit()
	msgsizeMax := readSysctl("msgsize_max", defaultMsgsizeMax)
	msgMax := readSysctl("msg_max", defaultMsgMax)
	privileged, err := probePrivilege(msgsizeMax, msgMax)
	if err != nil {
		return limits{maxSize: -1, err: err, why: fmt.Sprintf("POSIX message queues are unavailable: %v", err)}
	}
	return computeLimits(rlimit, msgsizeMax, msgMax, privileged)
}

// computeLimits works out the limits from RLIMIT_MSGQUEUE, the
// fs.mqueue.msgsize_max and msg_max sysctls, and whether the process has
// CAP_SYS_RESOURCE.
func computeLimits(rlimit uint64, msgsizeMax, msgMax int, privileged bool) limits {
	l := limits{rlimit: rlimit, msgMax: msgMax, privileged: privileged}
	if l.privileged {
		l.maxSize, l.msgMax = hardMsgsizeMax, hardMsgMax
		l.why = "HARD_MSGSIZEMAX 16 MiB, the kernel's cap even with CAP_SYS_RESOURCE"
	} else {
		l.maxSize = msgsizeMax
		l.why = fmt.Sprintf("fs.mqueue.msgsize_max %s, the cap without CAP_SYS_RESOURCE (HARD_MSGSIZEMAX 16 MiB with it)", fmtSize(msgsizeMax))
	}
	if l.rlimit != unix.RLIM_INFINITY {
		// Both queues of a pair, one message slot each.
		if fit := int(min(l.rlimit/2, 1<<40)) - msgOverhead; fit < l.maxSize {
			l.maxSize = max(fit, 0)
			l.why = fmt.Sprintf("RLIMIT_MSGQUEUE %s, shared by the request and response queues", fmtSize(int(min(l.rlimit, 1<<40))))
		}
	}
	return l
}

// queueDepth returns the mq_maxmsg to create a pair of queues of msgsize
// bytes with for a pipeline of depth: depth, within the sysctl or hard
// cap and within what RLIMIT_MSGQUEUE holds for two queues, and at
// least 1.
func (l *limits) queueDepth(msgsize, depth int) int {
	n := min(max(depth, 1), l.msgMax)
	if l.rlimit != unix.RLIM_INFINITY {
		fit := int(min(l.rlimit/2, 1<<40)) / (msgsize + msgOverhead)
		n = max(min(n, fit), 1)
	}
	return n
}

// raiseRlimit lifts RLIMIT_MSGQUEUE to unlimited if the process may, or
// else its soft limit to its hard one, and returns the soft limit.
func raiseRlimit() uint64 {
	inf := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
	if unix.Setrlimit(unix.RLIMIT_MSGQUEUE, &inf) != nil {
		var r unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_MSGQUEUE, &r) == nil && r.Cur < r.Max {
			r.Cur = r.Max
			unix.Setrlimit(unix.RLIMIT_MSGQUEUE, &r)
		}
	}
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MSGQUEUE, &r); err != nil {
		return 0
	}
	return uint64(r.Cur)
}

// readSysctl reads /proc/sys/fs/mqueue/name.
func readSysctl(name string, def int) int {
	b, err := os.ReadFile("/proc/sys/fs/mqueue/" + name)
	if err != nil {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n <= 0 {
		return def
	}
	return n
}

// probePrivilege reports whether the kernel lets this process exceed the
// fs.mqueue sysctl caps (CAP_SYS_RESOURCE in the initial user namespace),
// by creating a small queue just over one of them. It returns an error
// only if POSIX message queues are unavailable altogether.
func probePrivilege(msgsizeMax, msgMax int) (bool, error) {
	var a mqAttr
	switch {
	case msgMax < hardMsgMax:
		a = mqAttr{Maxmsg: msgMax + 1, Msgsize: 1}
	case msgsizeMax < hardMsgsizeMax:
		a = mqAttr{Maxmsg: 1, Msgsize: msgsizeMax + 1}
	default:
		// The sysctls are at the hard caps: privilege changes nothing.
		return false, nil
	}
	for range 3 {
		name := baseName(seq.Add(1)) + "-probe"
		fd, err := mqOpen(name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, &a)
		switch err {
		case nil:
			mqUnlink(name)
			unix.Close(fd)
			return true, nil
		case unix.EEXIST:
			continue
		case unix.ENOSYS:
			return false, err
		}
		// EINVAL means the caps apply; anything else (a full
		// RLIMIT_MSGQUEUE, fs.mqueue.queues_max reached) proves
		// nothing, so assume the caps apply.
		return false, nil
	}
	return false, nil
}

// fmtSize formats n bytes as "8 KiB", "16 MiB" or "1000 bytes".
func fmtSize(n int) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
