package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/machq/machq/internal/cliflags"
)

// usageError is bad usage of a command: it is reported as one line and
// exits with status 2. hint adds where to read the command's flags.
type usageError struct {
	cmd  string // "send", ...; "" for machq itself
	msg  string
	hint bool
}

func (e *usageError) Error() string { return e.msg }

// Is makes every usageError match errUsage.
func (e *usageError) Is(target error) bool { return target == errUsage }

// errUsage matches every usage error.
var errUsage = errors.New("bad usage")

// usagef returns a usageError of cmd.
func usagef(cmd, format string, a ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, a...)}
}

// printUsageError prints err, a usageError, as one line and returns
// exitUsage.
func printUsageError(stderr io.Writer, err *usageError) int {
	prefix, help := "machq", "machq help"
	if err.cmd != "" {
		prefix, help = "machq "+err.cmd, "machq "+err.cmd+" --help"
	}
	if err.hint {
		fmt.Fprintf(stderr, "%s: %s (see '%s')\n", prefix, err.msg, help)
	} else {
		fmt.Fprintf(stderr, "%s: %s\n", prefix, err.msg)
	}
	return exitUsage
}

// command describes one subcommand for its flag parsing and --help.
type command struct {
	name    string // as typed after machq
	summary string // what --help says before the flags
	fs      *flag.FlagSet
}

func newCommand(name, summary string) *command {
	fs := flag.NewFlagSet("machq "+name, flag.ContinueOnError)
	// Nothing is printed by package flag: parse reports errors itself.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	c := &command{name: name, summary: summary, fs: fs}
	if collected != nil {
		*collected = append(*collected, c)
	}
	return c
}

// parse parses args. It returns a non-negative exit status when the
// command must stop there: after --help (the usage on stdout, status 0)
// or a usage error (one line on stderr, status 2).
func (c *command) parse(args []string, stdout, stderr io.Writer) int {
	err := parseFlags(c.fs, args)
	if errors.Is(err, flag.ErrHelp) {
		c.printUsage(stdout)
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		ue.cmd = c.name
		return printUsageError(stderr, ue)
	}
	return -1
}

// parseFlags parses args into fs as package flag does (-flag or --flag,
// with the value after = or in the next argument; a boolean flag takes a
// value only after =; "--" ends the flags), but every problem is a
// usageError of one line. -h and --help return flag.ErrHelp.
func parseFlags(fs *flag.FlagSet, args []string) error {
	for len(args) > 0 {
		a := args[0]
		if len(a) < 2 || a[0] != '-' {
			break
		}
		args = args[1:]
		if a == "--" {
			break
		}
		name := a[1:]
		if name[0] == '-' {
			name = name[1:]
		}
		if name == "" || name[0] == '-' || name[0] == '=' {
			return &usageError{msg: fmt.Sprintf("bad flag syntax %q; write --flag value or --flag=value", a), hint: true}
		}
		value, hasValue := "", false
		if i := strings.IndexByte(name, '='); i >= 0 {
			name, value, hasValue = name[:i], name[i+1:], true
		}
		f := fs.Lookup(name)
		if f == nil {
			if name == "h" || name == "help" {
				return flag.ErrHelp
			}
			return &usageError{msg: "unknown flag --" + name, hint: true}
		}
		if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
			if !hasValue {
				value = "true"
			}
		} else if !hasValue {
			if len(args) == 0 {
				return &usageError{msg: fmt.Sprintf("--%s needs a value (--%s %s)", name, name, valueName(f)), hint: true}
			}
			value, args = args[0], args[1:]
		}
		if err := fs.Set(name, value); err != nil {
			return &usageError{msg: badValue(f, value, err)}
		}
	}
	if len(args) > 0 {
		return &usageError{msg: fmt.Sprintf("unexpected argument %q; flags take the form --flag value", args[0]), hint: true}
	}
	return nil
}

// valueName is what f's usage calls its value, or "value".
func valueName(f *flag.Flag) string {
	name, _ := flag.UnquoteUsage(f)
	if name == "" {
		name = "value"
	}
	return name
}

// badValue says why value is no good for f, by the type f holds.
func badValue(f *flag.Flag, value string, err error) string {
	var v any
	if g, ok := f.Value.(flag.Getter); ok {
		v = g.Get()
	}
	outOfRange := strings.Contains(err.Error(), "out of range")
	switch v.(type) {
	case time.Duration:
		return fmt.Sprintf("--%s %q: not a duration; use a Go duration such as 500ms, 30s or 2m", f.Name, value)
	case bool:
		return fmt.Sprintf("--%s=%q: use --%s, --%s=true or --%s=false", f.Name, value, f.Name, f.Name, f.Name)
	case int, int64:
		if outOfRange {
			return fmt.Sprintf("--%s %q: too large", f.Name, value)
		}
		return fmt.Sprintf("--%s %q: not a whole number", f.Name, value)
	case uint, uint64:
		if outOfRange {
			return fmt.Sprintf("--%s %q: too large", f.Name, value)
		}
		return fmt.Sprintf("--%s %q: not a whole number of 0 or more", f.Name, value)
	case float64:
		return fmt.Sprintf("--%s %q: not a number", f.Name, value)
	}
	return fmt.Sprintf("--%s %q: %v", f.Name, value, err)
}

// printUsage writes the command's usage: what it does and its flags.
func (c *command) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: machq %s [flags]\n\n%s\n\nFlags:\n", c.name, c.summary)
	cliflags.PrintDefaults(w, c.fs)
}

// uidList is a flag.Value collecting user ids, given as repeated flags
// or separated by commas.
type uidList []uint32

func (l *uidList) String() string {
	if l == nil {
		return ""
	}
	s := make([]string, len(*l))
	for i, u := range *l {
		s[i] = strconv.FormatUint(uint64(u), 10)
	}
	return strings.Join(s, ",")
}

func (l *uidList) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		u, err := strconv.ParseUint(strings.TrimSpace(f), 10, 32)
		if err != nil {
			return fmt.Errorf("%q is not a numeric user id", f)
		}
		*l = append(*l, uint32(u))
	}
	return nil
}
