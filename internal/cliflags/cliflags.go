// Package cliflags prints a flag set's flags as machq's commands document
// them: --name, as the README writes them, rather than package flag's
// -name.
package cliflags

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// PrintDefaults writes every flag of fs to w, in order of name: the flag
// as "--name VALUE", then its usage on the next line, then its default
// unless that is the zero value.
func PrintDefaults(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if name != "" {
			line += " " + name
		}
		usage = strings.ReplaceAll(usage, "\n", "\n    \t")
		fmt.Fprintf(w, "%s\n    \t%s", line, usage)
		if def := DefaultText(f); def != "" {
			fmt.Fprintf(w, " (default %s)", def)
		}
		fmt.Fprintln(w)
	})
}

// DefaultText is f's default as --help shows it, or "" for a zero value.
func DefaultText(f *flag.Flag) string {
	switch f.DefValue {
	case "", "0", "0s", "false":
		return ""
	}
	if g, ok := f.Value.(flag.Getter); ok {
		if _, isString := g.Get().(string); isString {
			return fmt.Sprintf("%q", f.DefValue)
		}
	}
	return f.DefValue
}
